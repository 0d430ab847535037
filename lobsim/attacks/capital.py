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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from lobsim.attacks.records import AttackRecord, sparse_orders
from lobsim.grid import level_mask
from lobsim.snippets import SnippetBatch

PRICE_SCALE = 10_000.0


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
    mask = level_mask(batch.prices)
    dollars = np.where(mask, batch.prices, 0).astype(np.float64) / PRICE_SCALE
    n = mask.sum(axis=(1, 2, 3))
    if np.any(n == 0):
        raise ValueError(f"book_tensors: snippet {int(np.argmin(n))} has no real price level")
    centre = dollars.sum(axis=(1, 2, 3)) / n
    centred = np.where(mask, dollars - centre[:, None, None, None], 0.0)
    P = torch.as_tensor(centred, dtype=dtype, device=device)
    S = torch.as_tensor(np.where(mask, batch.sizes, 0), dtype=dtype, device=device)
    M = torch.as_tensor(mask, device=device)
    return P, S, M


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


def logits_of(trained: SwaClassifier, P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Model logits for books (P, S, M) (sizes may include a perturbation)."""
    book = getattr(trained, "logits_from_book", None)
    if book is not None:
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


@dataclass
class CapitalAttack:
    """Untargeted capital-constrained attack; ``attack(trained, batch, seed)`` returns one record per snippet.

    budget: capital limit in dollars (sum over placed orders of shares x price).
    alpha0: ``"auto"`` (per snippet: expected first step = ``step_shares`` shares on the largest-gradient entry)
        or a float used for every snippet. alpha ~ U(0, alpha0) is redrawn every iteration (one draw per
        iteration for the whole batch, so the path of a snippet does not depend on which others are present).
    r: rounding offset of R_r(x) = floor(x + r).
    max_iter: iterations before a snippet is given up (failure, status ``max_iter``).
    fill_model: fill model of the exact engine used for the checks and the records; the gradient always comes
        from the differentiable touch operator.
    exact_check: check success on the exact engine every iteration (``True``), on the torch operator applied
        to the rounded orders (``False``; equal for the touch model and cheaper on a GPU), or ``"auto"`` (exact
        on the CPU, torch on CUDA). The records are always computed with the exact engine.
    batch_size: snippets attacked together (finished ones leave the batch).
    """

    budget: float = 100_000.0
    alpha0: float | str = "auto"
    step_shares: float = 0.1
    r: float = 0.95
    max_iter: int = 300
    fill_model: str = "touch"
    exact_check: bool | str = "auto"
    batch_size: int = 64
    device: str = "cpu"
    model_name: str = ""

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"CapitalAttack: budget must be positive, got {self.budget}")
        if not 0.0 <= self.r < 1.0:
            raise ValueError(f"CapitalAttack: r must be in [0, 1), got {self.r}")
        if self.alpha0 != "auto" and not float(self.alpha0) > 0:
            raise ValueError(f"CapitalAttack: alpha0 must be 'auto' or positive, got {self.alpha0!r}")
        if self.max_iter < 1:
            raise ValueError("CapitalAttack: max_iter must be >= 1")

    def __call__(self, trained: SwaClassifier, batch: SnippetBatch, seed: int = 0, progress: bool = False
                 ) -> list[AttackRecord]:
        if np.any(batch.labels < 0):
            raise ValueError("CapitalAttack: the batch needs labels (build it with market.batch(day, start, tau))")
        B = batch.batch_size
        records: list[AttackRecord | None] = [None] * B
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=B, desc=f"capital attack {self.model_name}".rstrip(), unit="snippet")
        for c, lo in enumerate(range(0, B, self.batch_size)):
            idx = np.arange(lo, min(lo + self.batch_size, B))
            sub = batch.select(idx)
            rng = np.random.default_rng([seed, c])
            for k, rec in self._attack_chunk(trained, sub, rng):
                rec.index = int(idx[k])
                records[idx[k]] = rec
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return records  # type: ignore[return-value]

    # -- one chunk -----------------------------------------------------------------------------------------

    def _check_on_torch(self) -> bool:
        if self.exact_check == "auto":
            return str(self.device).startswith("cuda") and self.fill_model == "touch"
        return not bool(self.exact_check)

    def _attack_chunk(self, trained: SwaClassifier, sub: SnippetBatch, rng: np.random.Generator
                      ) -> list[tuple[int, AttackRecord]]:
        from lobsim.metrics import capital as capital_of
        from lobsim.propagation import TouchPropagator, propagate

        dev = self.device
        P, S, M = book_tensors(sub, dev)
        y_all = torch.as_tensor(sub.labels, device=dev)
        with torch.no_grad(), gradient_mode(trained):
            pred0 = logits_of(trained, P, S, M).argmax(dim=1).cpu().numpy()
        out: list[tuple[int, AttackRecord]] = []
        for k in np.nonzero(pred0 != sub.labels)[0]:
            out.append((int(k), self._record(sub, int(k), int(pred0[k]), int(pred0[k]), False, False,
                                              "misclassified_before")))
        act = np.nonzero(pred0 == sub.labels)[0]
        if act.size == 0:
            return out
        W, L = sub.window, sub.levels
        op = TouchPropagator(sub, device=dev).select(act)
        bsub = sub.select(act)
        Pa, Sa, Ma, ya = P[act], S[act], M[act], y_all[act]
        maskf = Ma.to(Pa.dtype)
        a = torch.zeros(Pa.shape, dtype=Pa.dtype, device=dev)
        alpha0: torch.Tensor | None = None
        best = np.zeros((act.size, W, 2, L), np.int64)  # last rounded orders within budget
        peak = np.zeros(act.size)
        ids = act.copy()  # chunk-local index of each active row
        finished: list[tuple[int, int, np.ndarray, float, int]] = []  # (chunk idx, iterations, orders, peak, code)
        torch_check = self._check_on_torch()
        for it in range(1, self.max_iter + 1):
            u = float(rng.uniform())
            a.requires_grad_(True)
            with gradient_mode(trained):
                logits = logits_of(trained, Pa, Sa + op(a), Ma)
                loss = F.cross_entropy(logits, ya, reduction="sum")
                (g,) = torch.autograd.grad(loss, a)
            g = g * maskf
            a = a.detach()
            if alpha0 is None:
                gmax = g.abs().amax(dim=(1, 2, 3))
                if self.alpha0 == "auto":
                    alpha0 = torch.where(gmax > 0, 2.0 * self.step_shares / gmax.clamp_min(1e-30),
                                         torch.zeros_like(gmax))
                else:
                    alpha0 = torch.full_like(gmax, float(self.alpha0))
                zero = (gmax <= 0).cpu().numpy()
            else:
                zero = np.zeros(ids.size, bool)
            a = torch.clamp(a + u * alpha0[:, None, None, None] * g, min=0.0) * maskf
            a_hat = round_orders(a, self.r) * maskf
            a_int = a_hat.detach().cpu().numpy().astype(np.int64)
            cap = capital_of(a_int, bsub.prices)
            over = cap > self.budget
            peak = np.maximum(peak, cap)
            if torch_check:
                with torch.no_grad(), gradient_mode(trained):
                    pred = logits_of(trained, Pa, Sa + op(a_hat), Ma).argmax(dim=1).cpu().numpy()
            else:
                delta = propagate(a_int, bsub, fill_model=self.fill_model).delta
                with torch.no_grad(), gradient_mode(trained):
                    pred = logits_of(trained, Pa, Sa + torch.as_tensor(delta, dtype=Sa.dtype, device=dev),
                                     Ma).argmax(dim=1).cpu().numpy()
            within = ~over
            best[within] = a_int[within]
            success = within & (pred != bsub.labels)
            code = np.where(zero, 3, np.where(over, 1, np.where(success, 0, 2 if it == self.max_iter else -1)))
            done = code >= 0
            for i in np.nonzero(done)[0]:
                # Peak capital of a failure by budget includes the rejected step; of a success, its path.
                finished.append((int(ids[i]), it, best[i].copy(), float(peak[i]), int(code[i])))
            if done.all():
                break
            keep = np.nonzero(~done)[0]
            if keep.size < ids.size:
                op = op.select(keep)
                bsub = bsub.select(keep)
                kt = torch.as_tensor(keep, device=dev)
                Pa, Sa, Ma, ya, maskf, a, alpha0 = (t[kt] for t in (Pa, Sa, Ma, ya, maskf, a, alpha0))
                best, peak, ids = best[keep], peak[keep], ids[keep]
        # Records from the exact engine on the returned orders.
        order = [f[0] for f in finished]
        fin = sub.select(np.asarray(order, np.int64))
        orders = np.stack([f[2] for f in finished])
        prop = propagate(orders, fin, fill_model=self.fill_model)
        pred_after, _ = evaluate_orders(trained, fin, orders, self.fill_model, dev)
        from lobsim.metrics import cost, relative_size

        caps = capital_of(orders, fin.prices)
        costs = cost(orders, fin, prop)
        sizes = relative_size(prop.delta, fin.sizes, fin.mask)
        status_of = {0: "success", 1: "budget", 2: "max_iter", 3: "zero_gradient"}
        for n, (k, it, o, pk, code) in enumerate(finished):
            ok = bool(pred_after[n] != sub.labels[k])
            status = "success" if ok else (status_of[code] if code != 0 else "max_iter")
            rec = self._record(sub, k, int(pred0[k]), int(pred_after[n]), True, ok, status)
            rec.iterations, rec.capital, rec.peak_capital = it, float(caps[n]), pk
            rec.cost, rec.relative_size, rec.orders = float(costs[n]), float(sizes[n]), sparse_orders(o)
            out.append((k, rec))
        return out

    def _record(self, sub: SnippetBatch, k: int, before: int, after: int, attacked: bool, success: bool,
                status: str) -> AttackRecord:
        return AttackRecord(index=k, day=int(sub.day[k]), start=int(sub.start[k]), label=int(sub.labels[k]),
                            pred_before=before, pred_after=after, attacked=attacked, success=success,
                            status=status, model=self.model_name)


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
