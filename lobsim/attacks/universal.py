"""Universal targeted attack (thesis section 3.5): one level-relative order pattern for every snippet.

The pattern ``u`` (W, 2, L) holds shares placed at time offset t from the snippet start, on side s, j levels from
the best price. It is optimised with Adam on training snippets of a surrogate model,

    min_u  mean_i CE(f(SWA(x_i + p(orders(u, x_i)))), y_target) + gamma * mean_i R_i(u)

where ``orders(u, x_i)`` maps the pattern onto snippet i's levels (``lobsim.propagation.universal_orders``),
p is the touch propagation, and R_i is the relative size (percent) of the propagated pattern on snippet i's
book (spec 2.10). ``u >= 0`` is kept by clamping after every step. The deployed pattern is integer:
``round(u) = floor(u + r)`` with r = 0.5; during optimisation the forward pass already uses the rounded
pattern and the gradient passes straight through the rounding (straight-through estimator), so the loss that
is optimised is the loss of the integer pattern that is deployed.

Deployment: the integer pattern is mapped onto each test snippet's own prices and exactly propagated; the fool
rate is the share of test snippets the victim classifies correctly, whose label is not the target, that the
pattern moves into the target class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lobsim.attacks.capital import SwaClassifier, book_tensors, evaluate_orders, gradient_mode, logits_of
from lobsim.attacks.records import CLASS_NAMES
from lobsim.snippets import SnippetBatch


def fool_counts(clean_pred: np.ndarray, adv_pred: np.ndarray, labels: np.ndarray, target: int) -> tuple[int, int]:
    """(fooled, eligible): eligible = correctly classified with label != target; fooled = eligible now -> target."""
    clean_pred, adv_pred, labels = (np.asarray(x) for x in (clean_pred, adv_pred, labels))
    eligible = (clean_pred == labels) & (labels != target)
    fooled = eligible & (adv_pred == target)
    return int(fooled.sum()), int(eligible.sum())


@dataclass
class UniversalResult:
    """The integer pattern (W, 2, L) int64, its real-valued twin, and the optimisation history."""

    pattern: np.ndarray
    continuous: np.ndarray
    target: int
    gamma: float
    history: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class UniversalAttack:
    """Targeted universal pattern; ``fit(surrogate, batches, seed)`` optimises it on training snippets.

    target: class to push every input into (0 down, 1 flat, 2 up).
    gamma: weight of the relative-size penalty (R in percent of the clean visible size).
    steps, lr: Adam steps (one training batch per step, cycling through ``batches``) and step size in shares.
    r: rounding offset of the deployed pattern, floor(u + r).
    straight_through: optimise the loss of the rounded pattern (gradient passed through the rounding).
    """

    target: int = 0
    gamma: float = 0.0
    steps: int = 300
    lr: float = 0.05
    r: float = 0.5
    straight_through: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.target not in (0, 1, 2):
            raise ValueError(f"UniversalAttack: target must be 0, 1 or 2, got {self.target}")
        if self.gamma < 0:
            raise ValueError(f"UniversalAttack: gamma must be >= 0, got {self.gamma}")

    def fit(self, surrogate: SwaClassifier, batches: Sequence[SnippetBatch], seed: int = 0, progress: bool = False
            ) -> UniversalResult:
        from lobsim.propagation import TouchPropagator, universal_orders

        if not batches:
            raise ValueError("UniversalAttack.fit: no training batches")
        W, L = batches[0].window, batches[0].levels
        dev = self.device
        prepared = []
        for b in batches:
            if (b.window, b.levels) != (W, L):
                raise ValueError("UniversalAttack.fit: all batches need the same window and levels")
            P, S, M = book_tensors(b, dev)
            prepared.append((b, TouchPropagator(b, device=dev), P, S, M, S.sum(dim=(1, 2, 3))))
        gen = torch.Generator().manual_seed(int(seed))
        u = (1e-3 * torch.rand((W, 2, L), generator=gen, dtype=torch.float32)).to(dev).requires_grad_(True)
        opt = torch.optim.Adam([u], lr=self.lr)
        hist: dict[str, list[float]] = {"loss": [], "ce": [], "size": []}
        it = range(self.steps)
        if progress:
            from tqdm import tqdm

            desc = f"universal pattern (target {CLASS_NAMES[self.target]}, size penalty {self.gamma:g})"
            it = tqdm(it, desc=desc, unit="step")
        for step in it:
            b, op, P, S, M, total = prepared[step % len(prepared)]
            q = torch.floor(u + self.r)
            pat = u + (q - u).detach() if self.straight_through else u
            with gradient_mode(surrogate):
                delta = op(universal_orders(pat, b))
                logits = logits_of(surrogate, P, S + delta, M)
                y = torch.full((logits.shape[0],), self.target, dtype=torch.long, device=dev)
                ce = F.cross_entropy(logits, y)
                size = (100.0 * delta.sum(dim=(1, 2, 3)) / total).mean()
                loss = ce + self.gamma * size
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                u.clamp_(min=0.0)
            hist["loss"].append(float(loss.detach()))
            hist["ce"].append(float(ce.detach()))
            hist["size"].append(float(size.detach()))
        cont = u.detach().cpu().numpy().astype(np.float64)
        pattern = np.floor(cont + self.r).astype(np.int64)
        return UniversalResult(pattern=pattern, continuous=cont, target=self.target, gamma=self.gamma, history=hist)


def evaluate_universal(pattern: np.ndarray, victim: SwaClassifier, batch: SnippetBatch, target: int,
                       fill_model: str = "touch", device: str = "cpu") -> dict[str, float]:
    """Deploy an integer pattern on every snippet of ``batch`` (exact propagation) and score ``victim``.

    Returns fooled/eligible counts, the fool rate, the mean relative size (percent) and capital (dollars) of the
    deployed orders over the eligible snippets, and the victim's clean and perturbed accuracy.
    """
    from lobsim.metrics import capital, relative_size
    from lobsim.propagation import universal_orders

    pattern = np.asarray(pattern)
    if pattern.shape != (batch.window, 2, batch.levels):
        raise ValueError(f"evaluate_universal: pattern {pattern.shape} does not fit snippets "
                         f"({batch.window}, 2, {batch.levels})")
    if np.any(pattern < 0) or not np.issubdtype(pattern.dtype, np.integer):
        raise ValueError("evaluate_universal: the deployed pattern must be non-negative integers")
    orders = np.asarray(universal_orders(pattern.astype(np.int64), batch), dtype=np.int64)
    clean, _ = evaluate_orders(victim, batch, None, device=device)
    adv, delta = evaluate_orders(victim, batch, orders, fill_model, device)
    fooled, eligible = fool_counts(clean, adv, batch.labels, target)
    el = (clean == batch.labels) & (batch.labels != target)
    size = relative_size(delta, batch.sizes, batch.mask)
    cap = capital(orders, batch.prices)
    return {
        "fooled": fooled,
        "eligible": eligible,
        "fool_rate": fooled / eligible if eligible else float("nan"),
        "size_mean": float(size[el].mean()) if el.any() else float("nan"),
        "capital_mean": float(cap[el].mean()) if el.any() else float("nan"),
        "clean_accuracy": float(np.mean(clean == batch.labels)),
        "adv_accuracy": float(np.mean(adv == batch.labels)),
        "target_share_clean": float(np.mean(clean == target)),
        "target_share_adv": float(np.mean(adv == target)),
    }


def transfer_matrix(patterns: Mapping[str, np.ndarray], victims: Mapping[str, SwaClassifier], batch: SnippetBatch,
                    target: int, fill_model: str = "touch", device: str = "cpu") -> dict[str, dict[str, dict]]:
    """Table 3.3: ``result[surrogate][victim]`` = :func:`evaluate_universal` of that surrogate's pattern."""
    return {s: {v: evaluate_universal(p, m, batch, target, fill_model, device) for v, m in victims.items()}
            for s, p in patterns.items()}
