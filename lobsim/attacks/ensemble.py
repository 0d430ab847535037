"""The capital attack ensemble (AutoAttack style): cheap first, then the gradient attack with restarts, then the
gradient-free search; per snippet the cheapest verified success and which member found it.

Members, in order (all share one workspace per chunk, so the touch operator is built once):

1. ``greedy`` (:mod:`lobsim.attacks.greedy`): one gradient and a budget bisection along the best placements;
2. ``gradient`` (:class:`lobsim.attacks.capital.GradientMember`, budget rule) with ``restarts`` starts;
3. ``search`` (:mod:`lobsim.attacks.search`): gradient-free random search, model outputs only.

``scope="all"`` (default) runs every member on every eligible snippet and keeps the cheapest verified success,
so the reported capital is never above any member's (the tests check it); ``scope="survivors"`` gives each member
only the snippets no earlier member fooled within the budget (faster; the answer to "is it fooled at the budget",
not to "at what capital"). Members that need gradients are skipped for models with ``differentiable = False``.

Gradient masking: a snippet is flagged (``AttackRecord.masking``) when the gradient-free member fooled it and no
gradient member did. ``masking_report(records)`` summarises it per model; a non-zero count means the gradient
members' capital is not to be trusted on that model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lobsim.attacks.records import AttackRecord
from lobsim.snippets import SnippetBatch

MEMBERS = ("greedy", "gradient", "search")


@dataclass
class EnsembleAttack:
    """``attack(model, batch, seed) -> list[AttackRecord]`` (see the module docstring).

    budget: capital limit in dollars; every success costs at most this (run once at the largest budget of a
        curve: a snippet is fooled at budget c iff its record's capital is <= c).
    members: which members run, in order (names from ``MEMBERS``).
    max_iter, restarts, step_rule: the gradient member (``step_rule="thesis"`` swaps in the thesis' rule).
    search_iter: proposals of the gradient-free member.
    """

    budget: float = 100_000.0
    members: Sequence[str] = field(default_factory=lambda: list(MEMBERS))
    max_iter: int = 100
    restarts: int = 2
    step_rule: str = "budget"
    search_iter: int = 400
    scope: str = "all"
    minimize: bool = True
    step_shares: float = 0.1
    fill_model: str = "touch"
    batch_size: int = 64
    device: str = "cpu"
    model_name: str = ""
    objective: Any = "untargeted"

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"EnsembleAttack: budget must be positive, got {self.budget}")
        bad = [m for m in self.members if m not in MEMBERS]
        if bad or not self.members:
            raise ValueError(f"EnsembleAttack: members must be a non-empty subset of {MEMBERS}, got "
                             f"{list(self.members)}")
        if self.scope not in ("all", "survivors"):
            raise ValueError(f"EnsembleAttack: scope must be 'all' or 'survivors', got {self.scope!r}")
        if self.max_iter < 1 or self.restarts < 1 or self.search_iter < 1:
            raise ValueError(f"EnsembleAttack: max_iter, restarts and search_iter must be >= 1, got {self.max_iter}, "
                             f"{self.restarts}, {self.search_iter}")
        from lobsim.attacks.capital import STEP_RULES

        if self.step_rule not in STEP_RULES:
            raise ValueError(f"EnsembleAttack: step_rule must be one of {STEP_RULES}, got {self.step_rule!r}")

    def build_members(self) -> list[Any]:
        from lobsim.attacks.capital import CapitalAttack
        from lobsim.attacks.greedy import GreedyMember
        from lobsim.attacks.search import SearchMember

        out: list[Any] = []
        for name in self.members:
            if name == "greedy":
                out.append(GreedyMember(budget=self.budget, minimize=self.minimize))
            elif name == "gradient":
                out.append(CapitalAttack(budget=self.budget, step_rule=self.step_rule, max_iter=self.max_iter,
                                         restarts=self.restarts, step_shares=self.step_shares,
                                         minimize=self.minimize).member())
            else:
                out.append(SearchMember(budget=self.budget, max_iter=self.search_iter, minimize=self.minimize))
        return out

    def __call__(self, model: Any, batch: SnippetBatch, seed: int = 0, progress: bool = False
                 ) -> list[AttackRecord]:
        from lobsim.attacks.objectives import make_objective
        from lobsim.attacks.runner import run_members

        return run_members(model, batch, self.build_members(), budget=self.budget,
                           objective=make_objective(self.objective), seed=seed, batch_size=self.batch_size,
                           device=self.device, fill_model=self.fill_model, scope=self.scope,
                           model_name=self.model_name, progress=progress, label="attack ensemble")


def masking_report(records: Sequence[AttackRecord]) -> dict[str, Any]:
    """Per run: how many attacked snippets only the gradient-free member fooled (possible gradient masking)."""
    attacked = [r for r in records if r.attacked]
    flagged = [r.index for r in attacked if r.masking]
    cheaper = 0
    for r in attacked:
        mc = r.member_capital or {}
        grad = [v for k, v in mc.items() if k != "search" and v is not None]
        if mc.get("search") is not None and grad and mc["search"] < 0.9 * min(grad):
            cheaper += 1
    return {"attacked": len(attacked), "masking": len(flagged), "masking_rate": len(flagged) / max(len(attacked), 1),
            "flag": bool(flagged), "search_cheaper_by_10pct": cheaper, "snippets": flagged[:50]}


ATTACKS = ("ensemble", "gradient", "search")


def make_capital_attack(attack: str = "ensemble", *, budget: float, max_iter: int = 100, restarts: int = 2,
                        step_rule: str = "budget", search_iter: int = 400, step_shares: float = 0.1,
                        minimize: bool = True, batch_size: int = 64, device: str = "cpu", model_name: str = "",
                        objective: Any = "untargeted") -> Any:
    """The capital attack a run asks for: ``ensemble`` (default), ``gradient`` (the gradient member alone; with
    ``step_rule="thesis"`` and ``minimize=False`` exactly the thesis' attack) or ``search`` (gradient-free alone)."""
    from lobsim.attacks.capital import CapitalAttack
    from lobsim.attacks.search import SearchAttack

    if attack == "ensemble":
        return EnsembleAttack(budget=budget, max_iter=max_iter, restarts=restarts, step_rule=step_rule,
                              search_iter=search_iter, step_shares=step_shares, minimize=minimize,
                              batch_size=batch_size, device=device, model_name=model_name, objective=objective)
    if attack == "gradient":
        return CapitalAttack(budget=budget, max_iter=max_iter, restarts=restarts, step_rule=step_rule,
                             step_shares=step_shares, minimize=minimize, batch_size=batch_size, device=device,
                             model_name=model_name, objective=objective)
    if attack == "search":
        return SearchAttack(budget=budget, max_iter=search_iter, minimize=minimize, batch_size=batch_size,
                            device=device, model_name=model_name, objective=objective)
    raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
