"""One chunk of snippets prepared for attacking, shared by every attack member, and the per-snippet best-orders log.

:class:`Workspace` holds the book tensors (centred float32 prices, float32 sizes, mask, each snippet's centre), the
touch operator (built once per chunk), the fused propagation -> SWA map when the model reads only the SWA, the
model, the objective and its reference. Its methods are the only way members reach the model:

- ``outputs(a)``: model outputs on the books plus the propagated orders (no gradient);
- ``loss_grad(a)``: outputs, the ascent loss and its gradient with respect to the orders;
- ``check(a_int)``: which snippets the integer orders fool. For the touch fill model through the operator (equal to
  the exact engine on integer orders: shares are exact in float32 below 2**24); for other fill models through the
  exact engine.

The general path is ``logits_of(model, P, S + op(a), M)``; the fused path (``FusedTouchSwa``) is used only when
``getattr(model, "inputs", ("swa",)) == ("swa",)`` and the model has ``logits_from_swa``, on the CPU.
Models with ``differentiable = False`` are only ever called without autograd.

:class:`Tracker` keeps, per snippet, the cheapest fooling orders found (sparse), the capital at the first success,
and a fallback (the cheapest before minimisation) used when the exact verification of the final orders fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lobsim.attacks.capital import book_tensors_centred, gradient_mode, logits_of
from lobsim.attacks.objectives import Objective
from lobsim.snippets import SnippetBatch


def swa_only(model: Any) -> bool:
    """True when the model reads nothing but the SWA and exposes ``logits_from_swa`` (the fused path is allowed)."""
    return tuple(getattr(model, "inputs", ("swa",))) == ("swa",) and hasattr(model, "logits_from_swa")


def differentiable(model: Any) -> bool:
    return bool(getattr(model, "differentiable", True))


class Workspace:
    """A chunk ``rows`` of ``batch`` ready to attack (see the module docstring)."""

    def __init__(self, model: Any, batch: SnippetBatch, rows: np.ndarray, objective: Objective,
                 device: str = "cpu", fill_model: str = "touch", fused: bool | str = "auto",
                 check_exact: bool = False) -> None:
        from lobsim.attacks.steps import StepKernels
        from lobsim.propagation import FusedTouchSwa, TouchPropagator

        self.model, self.objective, self.fill_model = model, objective, fill_model
        self.device = torch.device(device)
        self.parent, self.rows = batch, np.asarray(rows, np.int64)
        sub = batch.select(self.rows)
        labels_np = sub.labels.copy()
        self.P, self.S, self.M, self.centre = book_tensors_centred(sub, self.device)
        self.op = TouchPropagator(sub, device=self.device)
        self.check_exact = check_exact or fill_model != "touch"
        self._exact_batch = sub if self.check_exact else None
        del sub  # the int64 book is not needed while attacking (records re-select it from the parent)
        B = len(self.rows)
        self.shape = tuple(self.P.shape)
        self.N = int(np.prod(self.shape[1:]))
        use_fused = (fused == "auto" and swa_only(model)) or fused is True
        self.fused = FusedTouchSwa(self.op, self.P, self.S) if use_fused and self.op.backend == "numba" else None
        self.kernels = StepKernels(self.op._key if self.op.backend == "numba" else None, self.P.view(B, -1),
                                   self.centre, self.M.view(B, -1))
        with torch.no_grad(), gradient_mode(model):  # the general path, a few snippets at a time
            self.clean = torch.cat([logits_of(model, self.P[i:i + 8], self.S[i:i + 8], self.M[i:i + 8],
                                              self.centre[i:i + 8]).detach() for i in range(0, B, 8)])
        labels = torch.as_tensor(labels_np, device=self.clean.device)
        self.y = objective.reference(self.clean, labels)
        self.eligible = objective.eligible(self.clean, labels).cpu().numpy()

    @property
    def n(self) -> int:
        return len(self.rows)

    def zeros(self) -> torch.Tensor:
        """A fresh (B, N) float32 order buffer on the device."""
        return torch.zeros((self.n, self.N), dtype=torch.float32, device=self.device)

    # -- the model ------------------------------------------------------------------------------------------------

    def _forward(self, a: torch.Tensor) -> torch.Tensor:
        a4 = a.view(self.shape)
        if self.fused is not None:
            return self.model.logits_from_swa(self.fused(a4))
        return logits_of(self.model, self.P, self.S + self.op(a4), self.M, self.centre)

    def outputs(self, a: torch.Tensor) -> torch.Tensor:
        """Model outputs (B, C) for the books plus the propagated orders a (B, N) (no gradient)."""
        with torch.no_grad(), gradient_mode(self.model):
            return self._forward(a).detach()

    def loss_grad(self, a: torch.Tensor, kind: str = "margin") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(outputs, loss (B,), d loss / d a (B, N)) at orders a; ``kind`` "margin" or "loss" (objective.loss)."""
        if not differentiable(self.model):
            raise ValueError("this model is not differentiable (differentiable = False): use a gradient-free attack")
        x = a.detach().requires_grad_(True)
        with gradient_mode(self.model):
            out = self._forward(x)
            val = self.objective.margin(out, self.y) if kind == "margin" else self.objective.loss(out, self.y)
            (g,) = torch.autograd.grad(val.sum(), x)
        return out.detach(), val.detach(), g.reshape(self.n, self.N)

    def margin(self, outputs: torch.Tensor) -> np.ndarray:
        return self.objective.margin(outputs, self.y).detach().cpu().numpy().astype(np.float64)

    def fooled(self, outputs: torch.Tensor) -> np.ndarray:
        return self.objective.fooled(outputs, self.y).cpu().numpy()

    def check(self, aint: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(fooled (B,) bool, margin (B,)) of integer orders held in a float buffer (B, N)."""
        if not self.check_exact:
            out = self.outputs(aint)
        else:
            from lobsim.propagation import propagate

            orders = aint.detach().cpu().numpy().reshape(self.shape).astype(np.int64)
            delta = propagate(orders, self._exact_batch, fill_model=self.fill_model).delta
            with torch.no_grad(), gradient_mode(self.model):
                S = self.S + torch.as_tensor(delta, dtype=self.S.dtype, device=self.device)
                out = logits_of(self.model, self.P, S, self.M, self.centre).detach()
        return self.fooled(out), self.margin(out)

    # -- bookkeeping ------------------------------------------------------------------------------------------------

    def select(self, local: np.ndarray) -> Workspace:
        """The workspace of rows ``local`` (indices into this workspace); nothing is recomputed."""
        from lobsim.propagation import FusedTouchSwa

        local = np.asarray(local, np.int64)
        ti = torch.as_tensor(local, device=self.device)
        new = object.__new__(Workspace)
        new.__dict__.update(self.__dict__)
        new.rows = self.rows[local]
        new.shape = (len(local),) + tuple(self.shape[1:])
        new.P, new.S, new.M, new.centre = (t[ti].contiguous() for t in (self.P, self.S, self.M, self.centre))
        new.op = self.op.select(local)
        new.fused = FusedTouchSwa(new.op, new.P, new.S) if self.fused is not None else None
        if self._exact_batch is not None:
            new._exact_batch = self._exact_batch.select(local)
        new.kernels = self.kernels.select(local, new.P.view(len(local), -1), new.M.view(len(local), -1),
                                          new.op._key if new.op.backend == "numba" else None)
        new.clean, new.y, new.eligible = self.clean[ti], self.y[ti], self.eligible[local]
        return new

    def prices_of(self, flat: np.ndarray, row: int) -> np.ndarray:
        """Absolute float64 dollar prices of flat entries of one row."""
        p = self.P.view(self.n, -1)[row].detach().cpu().numpy()
        return float(self.centre[row]) + p[flat].astype(np.float64)


@dataclass
class Found:
    """Sparse integer orders: flat entry indices and shares, with their (in-loop) capital."""

    flat: np.ndarray
    shares: np.ndarray
    capital: float

    @staticmethod
    def of_row(buf_row: torch.Tensor, capital: float) -> Found:
        r = buf_row.detach().cpu().numpy()
        nz = np.flatnonzero(r)
        return Found(nz.astype(np.int64), np.rint(r[nz]).astype(np.int64), float(capital))

    def dense(self, N: int) -> np.ndarray:
        out = np.zeros(N, np.int64)
        out[self.flat] = self.shares
        return out


@dataclass
class Tracker:
    """Per-snippet results of one member on one workspace (indexed like the workspace rows)."""

    n: int
    best: list[Found | None] = field(default_factory=list)
    fallback: list[Found | None] = field(default_factory=list)
    failed: list[Found | None] = field(default_factory=list)  # orders returned on failure (thesis rule only)
    first_capital: np.ndarray = field(default_factory=lambda: np.zeros(0))
    first_iter: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    iterations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    peak: np.ndarray = field(default_factory=lambda: np.zeros(0))
    status: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.best = [None] * self.n
        self.fallback = [None] * self.n
        self.failed = [None] * self.n
        self.first_capital = np.full(self.n, np.nan)
        self.first_iter = np.zeros(self.n, np.int64)
        self.iterations = np.zeros(self.n, np.int64)
        self.peak = np.zeros(self.n)
        self.status = ["max_iter"] * self.n

    @property
    def capital(self) -> np.ndarray:
        return np.array([np.inf if f is None else f.capital for f in self.best])

    def offer(self, rows: np.ndarray, buf: torch.Tensor, local: np.ndarray, caps: np.ndarray, it: int) -> None:
        """Fooling integer orders ``buf[local[i]]`` with capital ``caps[local[i]]`` for tracker rows ``rows[i]``."""
        for r, k in zip(rows, local):
            c = float(caps[k])
            if np.isnan(self.first_capital[r]):
                self.first_capital[r], self.first_iter[r] = c, it
                self.status[r] = "success"
            if self.best[r] is None or c < self.best[r].capital:
                self.best[r] = Found.of_row(buf[k], c)

    def offer_found(self, r: int, f: Found) -> None:
        if self.best[r] is None or f.capital < self.best[r].capital:
            self.best[r] = f

    def freeze_fallback(self) -> None:
        """Remember the current best orders as the fallback (before minimisation)."""
        self.fallback = list(self.best)
