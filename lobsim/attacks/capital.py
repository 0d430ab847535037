"""Capital-constrained untargeted gradient attack (thesis section 3.4), its capital sweep and transfer check.

The attack ascends the cross-entropy of the true label with respect to real-valued orders ``a >= 0`` placed
at the existing top-L prices, through the differentiable touch propagation and the SWA:

    a <- max(a + alpha * grad_a CE(f(SWA(x + p(a))), y), 0),   alpha ~ U(0, alpha0) drawn every iteration

with the raw gradient (no sign, no projection). After every step the orders are rounded,
``a_hat = floor(a + r)`` (r = 0.95), and exactly propagated (``lobsim.propagation.propagate``). A snippet stops
when the model mispredicts on the rounded orders (success) or when their capital exceeds the budget (failure:
the returned orders are then the last rounded orders that were within the budget, or zero). Only snippets the
model classifies correctly are attacked; the others count as wrong in A_adv and failures count as right.

Step size: gradients differ by orders of magnitude between models and books, so by default
(``alpha0="auto"``) alpha0 is set per snippet at the first iteration to ``2 * step_shares / max|grad|``: the
expected step then places ``step_shares`` shares on the entry with the largest gradient. The same alpha0 is
kept for the rest of that snippet's attack (the update stays a raw-gradient step). A float alpha0 is used as is.
The default of 0.1 share keeps the steps small, as the thesis asks: with r = 0.95 every entry above 0.05 becomes a
whole share, so a step of ~1 share on the largest entry would place a share on nearly every entry at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from lobsim.attacks.records import AttackRecord
from lobsim.grid import level_mask
from lobsim.snippets import SnippetBatch

PRICE_SCALE = 10_000.0
STEP_RULES = ("budget", "thesis")


class SwaClassifier(Protocol):
    """What the attacks need from a trained model: logits from SWA windows (B, W), shift-invariant."""

    def logits_from_swa(self, swa: torch.Tensor) -> torch.Tensor: ...


def round_orders(a: np.ndarray | torch.Tensor, r: float = 0.95) -> np.ndarray | torch.Tensor:
    """The thesis' rounding R_r(x) = floor(x + r) (the greatest integer <= x + r); R_0.3(0.8) = 1."""
    if isinstance(a, torch.Tensor):
        return torch.floor(a + r)
    return np.floor(np.asarray(a, dtype=np.float64) + r)


def book_tensors(
    batch: SnippetBatch, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prices, sizes, mask) tensors (B, W, 2, L) for the SWA; prices in dollars CENTRED per snippet.

    Each snippet's prices are shifted by the mean of its real prices (computed in float64) before the cast,
    so float32 keeps sub-cent resolution at any price level; every model input is shift-invariant. Masked
    (dummy-price) levels get price 0 and are excluded through the mask.
    """
    P, S, M, _ = book_tensors_centred(batch, device, dtype)
    return P, S, M


def book_tensors_centred(
    batch: SnippetBatch, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`book_tensors` plus each snippet's centre in dollars (B,) float64 (absolute price = centre + P)."""
    mask = level_mask(batch.prices)
    n = mask.sum(axis=(1, 2, 3))
    if np.any(n == 0):
        raise ValueError(f"book_tensors: snippet {int(np.argmin(n))} has no real price level")
    P = np.empty(batch.prices.shape, np.float32 if dtype == torch.float32 else np.float64)
    centre = np.empty(batch.batch_size)
    for b in range(batch.batch_size):  # one snippet at a time: no (B, W, 2, L) float64 temporaries
        dollars = np.where(mask[b], batch.prices[b], 0) / PRICE_SCALE
        centre[b] = dollars.sum() / n[b]
        P[b] = np.where(mask[b], dollars - centre[b], 0.0)
    S = torch.from_numpy(batch.sizes.astype(P.dtype))  # no int64 temporary
    S[torch.from_numpy(~mask)] = 0
    return (torch.as_tensor(P, dtype=dtype, device=device), S.to(device), torch.as_tensor(mask, device=device),
            torch.as_tensor(centre, dtype=torch.float64, device=device))


def _modules(trained: Any) -> torch.nn.Module | None:
    model = getattr(trained, "model", None)
    return model if isinstance(model, torch.nn.Module) else None


@contextlib.contextmanager
def gradient_mode(trained: Any) -> Iterator[None]:
    """Models with recurrent layers go to train mode with dropout 0 (cuDNN RNNs cannot backprop in eval mode)."""
    model = _modules(trained)
    if model is not None and any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
        from lobsim.models import attack_mode

        with attack_mode(model):
            yield
    else:
        yield


def logits_of(trained: SwaClassifier, P: torch.Tensor, S: torch.Tensor, M: torch.Tensor,
              centre: torch.Tensor | None = None) -> torch.Tensor:
    """Model logits for books (P, S, M) (sizes may include a perturbation).

    ``centre`` (B,) float64: each snippet's price centre (absolute dollars = centre + P). It is passed on only to
    models that set ``needs_centre = True`` (a user's model reading absolute prices or returns, issue 12)."""
    book = getattr(trained, "logits_from_book", None)
    if book is not None:
        if getattr(trained, "needs_centre", False):
            if centre is None:
                raise ValueError("this model reads absolute prices: the caller must pass each snippet's price centre")
            return book(P, S, M, centre=centre)
        return book(P, S, M)
    from lobsim.features import swa_torch

    return trained.logits_from_swa(swa_torch(P, S, M))


def evaluate_orders(
    trained: SwaClassifier,
    batch: SnippetBatch,
    orders: np.ndarray | None,
    fill_model: str = "touch",
    device: str = "cpu",
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (B,) on the books plus the EXACTLY propagated integer ``orders`` (None = clean books).

    Returns ``(pred, delta)`` with delta the int64 (B, W, 2, L) propagated perturbation (None for clean).
    """
    from lobsim.propagation import propagate

    B = batch.batch_size
    preds = np.empty(B, np.int64)
    deltas = None if orders is None else np.empty(batch.prices.shape, np.int64)
    for lo in range(0, B, chunk):
        idx = np.arange(lo, min(lo + chunk, B))
        sub = batch.select(idx) if (lo > 0 or len(idx) < B) else batch
        P, S, M = book_tensors(sub, device)
        if orders is not None:
            delta = propagate(np.ascontiguousarray(orders[idx], dtype=np.int64), sub, fill_model=fill_model).delta
            deltas[idx] = delta
            S = S + torch.as_tensor(delta, dtype=S.dtype, device=device)
        with torch.no_grad(), gradient_mode(trained):
            preds[idx] = logits_of(trained, P, S, M).argmax(dim=1).cpu().numpy()
    return preds, deltas


# -- the gradient member (budget rule and the thesis rule) ------------------------------------------------------------


def _cosine(k: int, K: int, floor: float) -> float:
    """1 at k = 0 decaying to ``floor`` at k = K - 1 (cosine)."""
    frac = k / max(K - 1, 1)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


@dataclass
class _BudgetRun:
    """The state of one start of the budget rule (rows of ``w``; ``act`` maps them to tracker rows)."""

    w: Any
    act: np.ndarray
    v: torch.Tensor  # real-valued orders, dollars (B, N)
    aint: torch.Tensor  # their rounding, shares (B, N): the orders evaluated next
    eps: torch.Tensor  # per-snippet budget, dollars (B,) float64
    cap: np.ndarray  # capital of aint
    found: np.ndarray
    best: np.ndarray
    last_gain: np.ndarray
    tr: Any
    restart: int


@dataclass
class GradientMember:
    """Gradient attack on one workspace; ``run(ws, rng) -> Tracker``. See the module docstring for the two rules."""

    budget: float
    step_rule: str = "budget"
    max_iter: int = 100
    restarts: int = 1
    alpha: float = 0.5
    gamma: float = 0.1
    patience: int = 0
    alpha0: float | str = "auto"
    step_shares: float = 0.1
    r: float = 0.95
    minimize: bool = True
    name: str = "gradient"
    uses_gradient = True

    def run(self, ws: Any, rng: np.random.Generator) -> Any:
        from lobsim.attacks.minimize import prune
        from lobsim.attacks.workspace import Tracker

        tr = Tracker(ws.n)
        if self.step_rule == "thesis":
            self._run_thesis(ws, rng, tr)
        else:
            for rs in range(self.restarts):
                self._run_budget(ws, rng, tr, rs)
        tr.freeze_fallback()
        if self.minimize:
            prune(ws, tr, np.flatnonzero([b is not None for b in tr.best]), True, rng)
        return tr

    # budget rule ---------------------------------------------------------------------------------------------------

    def _run_budget(self, ws: Any, rng: np.random.Generator, tr: Any, restart: int) -> None:
        st = self.budget_start(ws, rng, tr, restart)
        for k in range(self.max_iter):
            if not self.budget_iteration(st, k):
                break
        fooled, _ = st.w.check(st.aint)  # the last step's orders
        hit = np.flatnonzero(fooled & (st.cap <= self.budget))
        if hit.size:
            tr.offer(st.act[hit], st.aint, hit, st.cap, int(tr.iterations[st.act[hit]].max()))

    def budget_start(self, ws: Any, rng: np.random.Generator, tr: Any, restart: int) -> _BudgetRun:
        """The state of one start of the budget rule (zero orders, or random sparse orders for restarts)."""
        n = ws.n
        st = _BudgetRun(w=ws, act=np.arange(n), v=ws.zeros(), aint=ws.zeros(),
                        eps=torch.zeros(n, dtype=torch.float64), cap=np.zeros(n), found=np.zeros(n, bool),
                        best=np.full(n, np.inf), last_gain=np.zeros(n, np.int64), tr=tr, restart=restart)
        if restart > 0:  # random sparse start: about 1% of the real entries, total dollars drawn per snippet
            cmax = float(self.budget)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            real = ws.M.view(n, -1).cpu()
            pick = (torch.rand(real.shape, generator=gen) < 0.01) & real
            val = torch.rand(real.shape, generator=gen) * pick
            known = tr.capital
            lo = np.where(np.isfinite(known), 0.5 * known, cmax * 10.0 ** -rng.uniform(1, 4, n))
            total = np.minimum(lo * rng.uniform(1.0, 2.0, n), cmax)
            tot = val.sum(1).to(torch.float64).clamp_min(1e-30)
            st.v.copy_((val * (torch.as_tensor(total) / tot)[:, None]).to(st.v.dtype).to(st.v.device))
            st.cap = ws.kernels.round(st.v, 0.5, st.aint)
            st.eps = torch.as_tensor(total, dtype=torch.float64).clone()
        return st

    def budget_iteration(self, st: _BudgetRun, k: int) -> bool:
        """One iteration of the budget rule: gradient at the rounded orders (success check included), budget
        update, projected step, rounding. Returns False when every snippet of the start has finished."""
        cmax, K, tr = float(self.budget), self.max_iter, st.tr
        patience = self.patience or max(10, K // 4)
        a_k = self.alpha * _cosine(k, K, 0.02)
        g_k = self.gamma * _cosine(k, K, 0.05)
        w, act, cap = st.w, st.act, st.cap
        out, m_t, g = w.loss_grad(st.aint)
        m = m_t.cpu().numpy().astype(np.float64)
        fooled = w.fooled(out) & (cap <= cmax)
        hit = np.flatnonzero(fooled)
        if hit.size:
            tr.offer(act[hit], st.aint, hit, cap, k + 1)
            improved = hit[cap[hit] < st.best[hit] * (1 - 1e-9)]
            st.best[improved] = cap[improved]
            st.last_gain[improved] = k
        tr.peak[act] = np.maximum(tr.peak[act], np.where(np.isnan(tr.first_capital[act]), cap, 0.0))
        # the snippet's budget eps: shrink below a success, grow after a miss, extrapolate before any success
        e = st.eps.numpy()
        mode = np.zeros(len(act), np.int8)
        lo_e, hi_e = np.zeros(len(act)), np.full(len(act), cmax)
        st.found |= fooled
        e[fooled] = np.minimum(e[fooled], cap[fooled]) * (1 - g_k)
        up = ~fooled & st.found
        e[up] = np.minimum(e[up] * (1 + g_k), cmax)
        ext = ~fooled & ~st.found
        mode[ext] = 1
        unset = ext & (e <= 0)
        grow = ext & (e > 0)
        lo_e[unset] = cmax * 1e-6
        lo_e[grow] = np.minimum(e[grow] * (1 + g_k), cmax)
        hi_e[grow] = np.minimum(np.maximum(4 * e[grow], lo_e[grow]), cmax)
        deficit = np.maximum(-m, 0.0)
        st.cap, gmax = w.kernels.budget(st.v, g, st.eps, torch.as_tensor(mode), torch.as_tensor(deficit),
                                        torch.as_tensor(cap), torch.as_tensor(lo_e), torch.as_tensor(hi_e), a_k, 0.5,
                                        cmax, st.aint)
        if k == 0 and st.restart == 0:
            for r in act[(gmax <= 0) & ~fooled]:
                tr.status[r] = "zero_gradient"
        tr.iterations[act] = k + 1
        done = st.found & (k - st.last_gain >= patience)
        if done.all():
            return False
        if done.sum() * 4 >= len(act):  # compact: drop the finished snippets
            keep = np.flatnonzero(~done)
            kt = torch.as_tensor(keep, device=st.v.device)
            st.w, st.act = w.select(keep), act[keep]
            st.v, st.aint = st.v[kt].contiguous(), st.aint[kt].contiguous()
            st.eps = st.eps[torch.as_tensor(keep)].contiguous()
            st.cap, st.found, st.best, st.last_gain = st.cap[keep], st.found[keep], st.best[keep], st.last_gain[keep]
        return True

    # thesis rule ---------------------------------------------------------------------------------------------------

    def _run_thesis(self, ws: Any, rng: np.random.Generator, tr: Any) -> None:
        """The thesis' rule, as in spec-000 2.12: one draw u ~ U(0, 1) per iteration for the whole chunk."""
        from lobsim.attacks.workspace import Found

        statuses = {0: "success", 1: "budget", 2: "max_iter", 3: "zero_gradient"}
        w, act = ws, np.arange(ws.n)
        a, aint, prev = w.zeros(), w.zeros(), w.zeros()  # prev: the previous rounded orders (within the budget)
        alpha0: np.ndarray | None = None
        for it in range(1, self.max_iter + 1):
            u = float(rng.uniform())
            _, _, g = w.loss_grad(a, kind="loss")
            zero = np.zeros(len(act), bool)
            if alpha0 is None:
                gmax = (g * w.M.view(w.n, -1)).abs().amax(dim=1).cpu().numpy().astype(np.float64)
                if self.alpha0 == "auto":
                    alpha0 = np.where(gmax > 0, 2.0 * self.step_shares / np.maximum(gmax, 1e-30), 0.0)
                else:
                    alpha0 = np.full(len(act), float(self.alpha0))
                zero = gmax <= 0
            aint, prev = prev, aint  # the step overwrites every entry of aint
            cap = w.kernels.thesis(a, g, u * alpha0, self.r, aint)
            over = cap > self.budget
            tr.peak[act] = np.maximum(tr.peak[act], cap)
            fooled, _ = w.check(aint)
            success = ~over & fooled
            code = np.where(zero, 3, np.where(over, 1, np.where(success, 0, 2 if it == self.max_iter else -1)))
            hit = np.flatnonzero(success)
            if hit.size:
                tr.offer(act[hit], aint, hit, cap, it)
            done = code >= 0
            for i in np.flatnonzero(done):
                r = act[i]
                tr.iterations[r], tr.status[r] = it, statuses[int(code[i])]
                if code[i] != 0:  # failure: the last rounded orders within the budget are returned
                    src = prev if over[i] else aint
                    f = Found.of_row(src[i], 0.0)
                    f.capital = float((f.shares * w.prices_of(f.flat, i)).sum())
                    tr.failed[r] = f
            if done.all():
                break
            keep = np.flatnonzero(~done)
            if keep.size < len(act):
                w, act = w.select(keep), act[keep]
                kt = torch.as_tensor(keep, device=a.device)
                a, aint, prev = a[kt].contiguous(), aint[kt].contiguous(), prev[kt].contiguous()
                alpha0 = alpha0[keep]


@dataclass
class CapitalAttack:
    """Untargeted (by default) capital-constrained gradient attack; ``attack(trained, batch, seed)`` returns one
    :class:`AttackRecord` per snippet with the cheapest fooling orders found (verified on the exact engine).

    budget: capital limit in dollars (sum over placed orders of shares x price); a success costs at most this.
    step_rule: ``"budget"`` (default, scale-free: steps and projection in dollars relative to an adaptive per-snippet
        budget) or ``"thesis"`` (the thesis' raw-gradient rule, stopping at the first success or over the budget).
    max_iter: iterations per start (budget rule) or before giving up (thesis rule).
    restarts: starts of the budget rule (the first from zero orders, the others from random sparse orders).
    alpha, gamma: budget rule: initial step length (fraction of the snippet's budget) and budget adaptation rate,
        both cosine-decayed over the iterations.
    alpha0, step_shares, r: thesis rule (``alpha0="auto"``: expected first step = ``step_shares`` shares on the
        largest-gradient entry; rounding floor(a + r)).
    minimize: after a success, remove the least useful dollars while the model stays fooled (minimal capital).
    fill_model: of the exact engine used for the records (and for the success checks when not ``"touch"``).
    exact_check: check success on the exact engine every iteration (True) instead of the touch operator (equal on
        integer orders, which the tests prove); records are always computed on the exact engine.
    objective: ``"untargeted"`` (default), ``"targeted:down"`` ... or an :class:`~lobsim.attacks.objectives.Objective`.
    """

    budget: float = 100_000.0
    step_rule: str = "budget"
    max_iter: int = 100
    restarts: int = 1
    alpha: float = 0.5
    gamma: float = 0.1
    alpha0: float | str = "auto"
    step_shares: float = 0.1
    r: float = 0.95
    minimize: bool = True
    fill_model: str = "touch"
    exact_check: bool | str = "auto"
    batch_size: int = 64
    device: str = "cpu"
    model_name: str = ""
    objective: Any = "untargeted"

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"CapitalAttack: budget must be positive, got {self.budget}")
        if not 0.0 <= self.r < 1.0:
            raise ValueError(f"CapitalAttack: r must be in [0, 1), got {self.r}")
        if self.alpha0 != "auto" and not float(self.alpha0) > 0:
            raise ValueError(f"CapitalAttack: alpha0 must be 'auto' or positive, got {self.alpha0!r}")
        if self.max_iter < 1 or self.restarts < 1:
            raise ValueError("CapitalAttack: max_iter and restarts must be >= 1")
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"CapitalAttack: step_rule must be one of {STEP_RULES}, got {self.step_rule!r}")

    def member(self) -> GradientMember:
        return GradientMember(budget=self.budget, step_rule=self.step_rule, max_iter=self.max_iter,
                              restarts=self.restarts, alpha=self.alpha, gamma=self.gamma, alpha0=self.alpha0,
                              step_shares=self.step_shares, r=self.r, minimize=self.minimize,
                              name="thesis" if self.step_rule == "thesis" else "gradient")

    def resolved_objective(self) -> Any:
        from lobsim.attacks.objectives import Untargeted, make_objective

        if self.step_rule == "thesis" and self.objective in (None, "", "untargeted"):
            return Untargeted(loss_kind="ce")  # the thesis ascends the cross-entropy
        return make_objective(self.objective)

    def __call__(self, trained: SwaClassifier, batch: SnippetBatch, seed: int = 0, progress: bool = False
                 ) -> list[AttackRecord]:
        from lobsim.attacks.runner import run_members

        return run_members(trained, batch, [self.member()], budget=self.budget,
                           objective=self.resolved_objective(), seed=seed, batch_size=self.batch_size,
                           device=self.device, fill_model=self.fill_model, exact_check=self.exact_check is True,
                           model_name=self.model_name, progress=progress, label="capital attack")


def transfer_accuracy(records: Sequence[AttackRecord], batch: SnippetBatch, victim: SwaClassifier,
                      fill_model: str = "touch", device: str = "cpu") -> dict[str, float]:
    """Orders crafted on one model, evaluated on ``victim`` (exact propagation), snippet by snippet.

    ``accuracy``: victim accuracy on the books perturbed by the returned orders (zero orders where the source
    model was not attacked). ``fooled_rate``: share of the snippets the victim got right on clean books that it
    gets wrong on the perturbed ones. Compare ``accuracy`` with the victim's own white-box A_adv: a transfer
    attack that beats the white-box attack is the usual sign of gradient masking.
    """
    from lobsim.attacks.records import dense_orders

    if len(records) != batch.batch_size:
        raise ValueError(f"transfer_accuracy: {len(records)} records for a batch of {batch.batch_size} snippets")
    for r, d, s in zip(records, batch.day, batch.start):
        if (r.day, r.start) != (int(d), int(s)):
            raise ValueError(f"transfer_accuracy: record {r.index} is for snippet ({r.day}, {r.start}), "
                             f"the batch holds ({int(d)}, {int(s)})")
    orders = dense_orders(records, batch.window, batch.levels)
    clean, _ = evaluate_orders(victim, batch, None, device=device)
    adv, _ = evaluate_orders(victim, batch, orders, fill_model, device)
    y = batch.labels
    right = clean == y
    return {
        "clean_accuracy": float(np.mean(right)),
        "accuracy": float(np.mean(adv == y)),
        "fooled_rate": float(np.mean(adv[right] != y[right])) if right.any() else float("nan"),
        "n": int(batch.batch_size),
    }
