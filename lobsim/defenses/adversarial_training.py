"""Adversarial and certified training of valuation models against resting orders, with a budget in dollars.

Defense kinds (``DefenseConfig.kind``):

- ``fast``: single-step capital attack in order space with a random start (:mod:`lobsim.defenses.order_attack`,
  alpha = 1.25 of the budget, as fast adversarial training does for images), with the catastrophic-overfitting
  guard: every ``guard_every`` steps a few-step attack (``guard_steps``) measures the accuracy of a fixed set of
  training snippets; when it drops by more than ``guard_drop`` since the previous check, the previous check's
  weights are restored and training stops (recorded in ``train_log.json``).
- ``pgd``: the few-step attack (``steps``, default 5) at every training step (slower, no guard needed).
- ``universal``: one pattern of dollars per target class, level-relative like the thesis' universal attack, updated
  by one Adam step per training step to push the batch into its target class (each snippet gets the pattern of a
  random other class), while the model learns to resist the current patterns (universal adversarial training).
- ``certified``: interval-bound training (IBP) of Linear / MLP models: the cross-entropy of the worst-case logits
  the interval bound of :mod:`lobsim.defenses.certify` allows at the budget.

Loss: ``(1 - mix) * CE(clean) + mix * CE(adversarial)`` (mix = 0.5, as in the original FGSM training). The budget
(and, for certified training, the mix) grows linearly from 0 over the first ``ramp`` share of the steps. Only the
first ``adv_batch`` snippets of each training batch are attacked (the clean term uses the whole batch).

Two entry points: :class:`DefenseHook` plugs into :func:`lobsim.train.train` (``TrainConfig.defense``, ``advsim lob
train --defense``), and :func:`robust_finetune` trains any model that follows the attack protocol
(``logits_from_book``, a torch ``model`` attribute: the project's models and torch models wrapped by
``lobsim.stress``) on a market's training snippets.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lobsim.defenses.order_attack import Book, OrderAttack, step_generator

DEFENSES = ("fast", "pgd", "universal", "certified")


@dataclass
class DefenseConfig:
    """How a model is defended (JSON-serialisable; stored as ``TrainConfig.defense``). See the module docstring.

    budget: capital of the training attack per snippet, dollars. steps / alpha: attack steps and dollars moved per
    step (fraction of the budget); defaults fast 1 / 1.25, pgd 5 / 0.5. top, density: the attack's step sparsity
    and random start. universal_lr: Adam step of the patterns' logits.
    """

    kind: str = "fast"
    budget: float = 10_000.0
    steps: int | None = None
    alpha: float | None = None
    top: int = 16
    density: float = 0.01
    mix: float = 0.5
    ramp: float = 0.2
    adv_batch: int = 64
    guard_every: int | None = None
    guard_steps: int = 10
    guard_n: int = 64
    guard_drop: float = 0.2
    universal_lr: float = 0.05
    val_n: int = 256

    def __post_init__(self) -> None:
        if self.kind not in DEFENSES:
            raise ValueError(f"--defense must be one of {', '.join(DEFENSES)}, got {self.kind!r}")
        if not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"--defense-budget must be a positive dollar amount, got {self.budget}")
        if self.steps is None:
            self.steps = 5 if self.kind == "pgd" else 1
        if self.alpha is None:
            self.alpha = 0.5 if self.kind == "pgd" else 1.25
        if self.guard_every is None:
            self.guard_every = 50 if self.kind == "fast" else 0
        if self.steps < 1 or not self.alpha > 0 or self.top < 1 or not 0 < self.density <= 1:
            raise ValueError(f"DefenseConfig: need steps >= 1, alpha > 0, top >= 1, 0 < density <= 1 (got {self})")
        if not 0 < self.mix <= 1 or not 0 <= self.ramp < 1:
            raise ValueError(f"DefenseConfig: need 0 < mix <= 1 and 0 <= ramp < 1, got {self.mix}, {self.ramp}")
        if self.adv_batch < 1 or self.guard_every < 0 or self.guard_n < 1 or self.val_n < 1:
            raise ValueError("DefenseConfig: adv_batch, guard_n and val_n must be >= 1, guard_every >= 0")

    def attack(self) -> OrderAttack:
        return OrderAttack(steps=int(self.steps), alpha=float(self.alpha), top=self.top, density=self.density)

    def guard_attack(self) -> OrderAttack:
        return OrderAttack(steps=self.guard_steps, alpha=2.5 / self.guard_steps, top=self.top, density=self.density)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | DefenseConfig) -> DefenseConfig:
        return d if isinstance(d, DefenseConfig) else cls(**d)


# -- the per-batch losses -------------------------------------------------------------------------------------------


def adversarial_logits(model: Any, book: Book, y: torch.Tensor, eps: torch.Tensor, attack: OrderAttack,
                       gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs on the attacked books, the orders) for budgets ``eps`` (B,); outputs carry gradients to the
    model's parameters, the orders are fixed."""
    orders = attack(model, book, y, eps, gen)
    return book.logits(model, orders), orders


class UniversalPatterns:
    """One dollar distribution per target class over (time offset, side, level), as softmax logits ``theta``."""

    def __init__(self, window: int, levels: int, lr: float, classes: int = 3) -> None:
        self.theta = torch.zeros((classes, window, 2, levels), requires_grad=True)
        self.opt = torch.optim.Adam([self.theta], lr=lr)

    def orders(self, book: Book, target: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Orders (B, W, 2, L) spending ``eps`` dollars per snippet along its target's pattern (differentiable)."""
        C = self.theta.shape[0]
        w = torch.softmax(self.theta.reshape(C, -1), dim=1)[target].reshape(book.shape)
        w = w * book.M.to(w.dtype)  # empty levels get nothing (as lobsim.propagation.universal_orders)
        dollars = w.reshape(book.real.shape)
        dollars = dollars / dollars.sum(1, keepdim=True).clamp_min(1e-30) * eps[:, None].to(dollars.dtype)
        return (dollars / book.price).reshape(book.shape)

    def update(self, model: Any, book: Book, target: torch.Tensor, eps: torch.Tensor) -> float:
        """One Adam step that pushes the batch towards its targets; returns that cross-entropy."""
        from lobsim.attacks.capital import gradient_mode

        with torch.enable_grad(), gradient_mode(model):
            loss = F.cross_entropy(book.logits(model, self.orders(book, target, eps)), target)
            self.opt.zero_grad(set_to_none=True)
            (g,) = torch.autograd.grad(loss, self.theta)
        self.theta.grad = g
        self.opt.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the logits and Adam's moments (float32 values written exactly as float64)."""
        st = self.opt.state.get(self.theta, {})
        flat = {k: st[k].detach().reshape(-1).double().tolist() for k in ("exp_avg", "exp_avg_sq") if k in st}
        return {"theta": self.theta.detach().reshape(-1).double().tolist(), "shape": list(self.theta.shape),
                "adam_step": float(st["step"]) if "step" in st else 0.0, **flat}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        shape = tuple(d["shape"])
        with torch.no_grad():
            self.theta.copy_(torch.tensor(d["theta"], dtype=torch.float32).reshape(shape))
        if d.get("adam_step"):
            self.opt.state[self.theta] = {"step": torch.tensor(float(d["adam_step"])),
                                          **{k: torch.tensor(d[k], dtype=torch.float32).reshape(shape)
                                             for k in ("exp_avg", "exp_avg_sq")}}


def interval_loss(trained: Any, book: Book, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the worst-case logits the interval bound allows at budgets ``eps`` (IBP training)."""
    from lobsim.attacks.capital import book_tensors_centred
    from lobsim.defenses.certify import fold, interval_margin
    from lobsim.defenses.fractional import fractional, ranges

    P, S, M, centre = book_tensors_centred(book.batch, "cpu", torch.float64)
    fr = fractional(trained.inputs, P, S, M)
    B, W, _, L = P.shape
    price = torch.where(M, P + centre[:, None, None, None], torch.full_like(P, float("inf"))).reshape(B, W, 2 * L)
    lo, hi = ranges(fr, price, eps.double().cpu())
    net = fold(trained, dtype=torch.float32)
    dev = net.A.device
    lb = interval_margin(net, lo.float().to(dev), hi.float().to(dev), y.to(dev))
    worst = -lb.masked_fill(torch.isinf(lb), 0.0)
    return F.cross_entropy(worst, y.to(dev))


def _attacked(market: Any, day: np.ndarray, start: np.ndarray, tau: float, device: str) -> Book:
    return Book(market.batch(day, start, tau), device)


# -- the training hook --------------------------------------------------------------------------------------------


@dataclass
class _Guard:
    refs: tuple[np.ndarray, np.ndarray]
    history: list[dict[str, float]] = field(default_factory=list)
    prev_acc: float | None = None
    prev_state: dict[str, torch.Tensor] | None = None
    triggered_step: int | None = None


class DefenseHook:
    """Plugs a defense into :func:`lobsim.train.train`: ``start``, ``loss`` every step, ``after_step`` (the guard),
    ``validate`` (the defense's loss at the full budget on validation snippets), ``state_dict`` / ``summary``."""

    def __init__(self, cfg: DefenseConfig | dict[str, Any]) -> None:
        self.cfg = DefenseConfig.from_dict(cfg)
        self.trained: Any = None
        self.attack = self.cfg.attack()
        self.seconds = 0.0
        self.log: list[dict[str, float]] = []
        self.patterns: UniversalPatterns | None = None
        self.guard: _Guard | None = None

    # lifecycle ---------------------------------------------------------------------------------------------------

    def start(self, trained: Any, market: Any, fit_regions: list, total_steps: int, seed: int) -> None:
        from lobsim.dataset import Market

        if self.cfg.kind == "certified":
            from lobsim.defenses.certify import fold
            from lobsim.defenses.fractional import check_supported

            fold(trained)  # refuses LSTMs and users' models with a clear error
            check_supported(trained.inputs)
        self.trained, self.market, self.total, self.seed = trained, market, max(int(total_steps), 1), int(seed)
        self.device = getattr(trained, "device", "cpu")
        if self.cfg.kind == "universal":
            self.patterns = UniversalPatterns(market.window, market.books[0].levels, self.cfg.universal_lr)
        if self.cfg.guard_every:
            self.guard = _Guard(Market.refs_in(fit_regions, self.cfg.guard_n, seed=self.seed + 17))

    def eps_at(self, step: int) -> float:
        """The training budget at ``step`` (linear ramp over the first ``ramp`` share of the steps)."""
        ramp = self.cfg.ramp * self.total
        return self.cfg.budget * (min(1.0, (step + 1) / ramp) if ramp > 0 else 1.0)

    def loss(self, step: int, day: np.ndarray, start: np.ndarray, y: torch.Tensor, clean_loss: torch.Tensor
             ) -> torch.Tensor:
        """The training loss of ``step`` from the clean loss of the batch ``(day, start)`` with labels ``y``."""
        t0 = time.perf_counter()
        n = min(self.cfg.adv_batch, len(day))
        book = _attacked(self.market, day[:n], start[:n], self.trained.tau, self.device)
        yb = y[:n]
        eps_v = self.eps_at(step)
        eps = torch.full((n,), eps_v, dtype=torch.float32, device=book.price.device)
        mix = self.cfg.mix
        gen = step_generator(self.seed, step)
        entry: dict[str, float] = {"step": step + 1, "eps": eps_v}
        if self.cfg.kind == "certified":
            ramp = self.cfg.ramp * self.total
            mix = self.cfg.mix * (min(1.0, (step + 1) / ramp) if ramp > 0 else 1.0)
            adv = interval_loss(self.trained, book, yb, eps)
        elif self.cfg.kind == "universal":
            assert self.patterns is not None
            r = torch.as_tensor(np.random.default_rng([self.seed, 14, step]).integers(1, 3, n), device=yb.device)
            target = (yb + r) % 3
            entry["pattern_ce"] = self.patterns.update(self.trained, book, target, eps)
            adv = F.cross_entropy(book.logits(self.trained, self.patterns.orders(book, target, eps).detach()), yb)
        else:
            logits, _ = adversarial_logits(self.trained, book, yb, eps, self.attack, gen)
            adv = F.cross_entropy(logits, yb)
            entry["adv_acc"] = float((logits.detach().argmax(1) == yb).float().mean())
        entry["adv_loss"] = float(adv.detach())
        if (step + 1) % 10 == 0:
            self.log.append({k: round(v, 5) for k, v in entry.items()})
        self.seconds += time.perf_counter() - t0
        return (1 - mix) * clean_loss + mix * adv

    def after_step(self, step: int) -> bool:
        """The catastrophic-overfitting guard after ``step`` steps; True: stop training (weights were restored)."""
        g = self.guard
        if g is None or not self.cfg.guard_every or step % self.cfg.guard_every:
            return False
        t0 = time.perf_counter()
        model = self.trained.model
        acc = self.robust_accuracy(g.refs, self.cfg.budget, self.cfg.guard_attack(), seed_tag=99)
        g.history.append({"step": step, "robust_acc": round(acc, 5)})
        stop = False
        if g.prev_acc is not None and acc < g.prev_acc - self.cfg.guard_drop:
            if g.prev_state is not None:
                model.load_state_dict(g.prev_state)
            g.triggered_step, stop = step, True
        else:
            g.prev_acc = acc
            g.prev_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        self.seconds += time.perf_counter() - t0
        return stop

    def robust_accuracy(self, refs: tuple[np.ndarray, np.ndarray], eps: float, attack: OrderAttack,
                        seed_tag: int = 98) -> float:
        """Accuracy of the current model on ``refs`` under ``attack`` at ``eps`` dollars (eval-mode numbers)."""
        model = self.trained.model
        was = model.training
        model.eval()
        try:
            book = _attacked(self.market, *refs, self.trained.tau, self.device)
            y = torch.as_tensor(book.batch.labels, device=book.price.device)
            e = torch.full((len(y),), eps, dtype=torch.float32, device=book.price.device)
            gen = step_generator(self.seed, seed_tag)
            logits, _ = adversarial_logits(self.trained, book, y, e, attack, gen)
            return float((logits.detach().argmax(1) == y).float().mean())
        finally:
            model.train(was)

    @torch.no_grad()
    def validate(self, trained: Any, market: Any, refs: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
        """(the defense's loss at the full budget, clean accuracy) on the first ``val_n`` validation snippets."""
        n = min(self.cfg.val_n, len(refs[0]))
        day, start = refs[0][:n], refs[1][:n]
        model = trained.model
        was = model.training
        model.eval()
        try:
            book = _attacked(market, day, start, trained.tau, self.device)
            y = torch.as_tensor(book.batch.labels, device=book.price.device)
            clean = book.logits(trained)
            eps = torch.full((n,), self.cfg.budget, dtype=torch.float32, device=book.price.device)
            if self.cfg.kind == "certified":
                adv = interval_loss(trained, book, y, eps)
            elif self.cfg.kind == "universal":
                assert self.patterns is not None
                target = (y + torch.as_tensor(np.random.default_rng([self.seed, 15]).integers(1, 3, n))) % 3
                adv = F.cross_entropy(book.logits(trained, self.patterns.orders(book, target, eps)), y)
            else:
                logits, _ = adversarial_logits(trained, book, y, eps, self.attack, step_generator(self.seed, 97))
                adv = F.cross_entropy(logits, y)
            loss = (1 - self.cfg.mix) * F.cross_entropy(clean, y) + self.cfg.mix * adv
            return float(loss), float((clean.argmax(1) == y).float().mean())
        finally:
            model.train(was)

    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"seconds": self.seconds, "log": self.log}
        if self.patterns is not None:
            d["patterns"] = self.patterns.state_dict()
        if self.guard is not None:
            d["guard"] = {"history": self.guard.history, "prev_acc": self.guard.prev_acc}
        return d

    def load_state_dict(self, d: dict[str, Any] | None) -> None:
        """Resume: the patterns and logs come back; the guard's reference weights do not (it restarts)."""
        if not d:
            return
        self.seconds, self.log = float(d.get("seconds", 0.0)), list(d.get("log", []))
        if self.patterns is not None and "patterns" in d:
            self.patterns.load_state_dict(d["patterns"])
        if self.guard is not None and "guard" in d:
            self.guard.history = list(d["guard"]["history"])

    def summary(self) -> dict[str, Any]:
        g = self.guard
        return {"config": self.cfg.to_dict(), "defense_seconds": self.seconds, "log": self.log,
                "guard": None if g is None else {"history": g.history, "triggered_step": g.triggered_step}}


def make_hook(defense: dict[str, Any] | DefenseConfig | None) -> DefenseHook | None:
    """The hook of ``TrainConfig.defense`` (None: no defense)."""
    return None if not defense else DefenseHook(defense)


def train_defended(cfg: Any, market: Any, out_dir: Any, progress: bool = True, resume: bool = True) -> Any:
    """:func:`lobsim.train.train` with the hook of ``cfg.defense`` (the plain training when it is None)."""
    from lobsim.train import train

    return train(cfg, market, out_dir, progress=progress, resume=resume, hook=make_hook(cfg.defense))


# -- any model of the attack protocol ----------------------------------------------------------------------------


def robust_finetune(model: Any, market: Any, tau: float, defense: DefenseConfig | dict[str, Any], steps: int = 100,
                    batch: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                    params: list[torch.nn.Parameter] | None = None) -> dict[str, Any]:
    """Train a model of the attack protocol (``logits_from_book(P, S, M[, centre])`` and a torch ``model``
    attribute, e.g. a torch model wrapped by ``lobsim.stress``) against ``defense`` on ``market``'s training
    snippets (labels at ``tau``), with Adam. Every loss term reads the book (no precomputed windows). Returns a log.

    ``certified`` needs the project's Linear / MLP models (use :func:`lobsim.train.train` for those)."""
    cfg = DefenseConfig.from_dict(defense)
    if cfg.kind == "certified":
        raise ValueError("robust_finetune: certified training needs a project Linear / MLP model (lob train "
                         "--defense certified)")
    net = getattr(model, "model", None)
    if not isinstance(net, torch.nn.Module):
        raise ValueError("robust_finetune: the model needs a torch module as its `model` attribute (a gradient-free "
                         "model cannot be trained)")
    params = list(net.parameters()) if params is None else params
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng([seed, 21])
    attack = cfg.attack()
    pats = UniversalPatterns(market.window, market.books[0].levels, cfg.universal_lr) if cfg.kind == "universal" \
        else None
    log: list[dict[str, float]] = []
    net.train()
    t0 = time.perf_counter()
    for step in range(steps):
        day, start = market.sample_train(batch, rng)
        book = _attacked(market, day, start, tau, device)
        y = torch.as_tensor(book.batch.labels, device=book.price.device)
        ramp = cfg.ramp * steps
        eps = torch.full((batch,), cfg.budget * (min(1.0, (step + 1) / ramp) if ramp > 0 else 1.0),
                         dtype=torch.float32, device=book.price.device)
        if pats is not None:
            target = (y + torch.as_tensor(rng.integers(1, 3, batch), device=y.device)) % 3
            pats.update(model, book, target, eps)
            adv = book.logits(model, pats.orders(book, target, eps).detach())
        else:
            adv, _ = adversarial_logits(model, book, y, eps, attack, step_generator(seed, step))
        clean = book.logits(model)
        loss = (1 - cfg.mix) * F.cross_entropy(clean, y) + cfg.mix * F.cross_entropy(adv, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append({"step": step + 1, "loss": float(loss.detach()),
                    "adv_acc": float((adv.detach().argmax(1) == y).float().mean())})
    net.eval()
    return {"log": log, "seconds": time.perf_counter() - t0, "config": cfg.to_dict()}
