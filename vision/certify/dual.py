"""The dual network of the convex outer adversarial polytope (Wong & Kolter 2017; Wong et al. 2018).

Every ReLU with pre-activation bounds l < 0 < u is relaxed to its convex hull (z >= 0, z >= zhat,
z <= u (zhat - l) / (u - l)). With the slope fixed at d = u / (u - l) (eq. 3.18/3.20) the dual network is linear,
and the bounds of every layer follow from pushing a few matrices *forward* through the network (Algorithm 2,
"AutoDual"); the paper's dual variables nu are the rows of these matrices. :class:`DualNetwork` does that
forward pass once per batch and keeps, for every node, three kinds of terms:

- the centre: the network with each ReLU replaced by multiplication with d, applied to x (the psi of Algorithm 1);
- the input term: the identity (or the box radii) pushed forward, which gives -x^T nu_1 - eps ||nu_1||_* once
  reduced with the dual norm (l1 for an l_inf ball, l2 for an l2 ball);
- one term per ReLU layer: the unstable units l_j d_j e_j pushed forward, which gives sum_j l_j [nu_j]_+.

Random projections (Theorem 4, Algorithm 3): with ``proj=r`` the identities are replaced by r Cauchy vectors
(Gaussian for l2) per example and the l1 (l2) norms by the median estimator. That is linear in the network size
and is meant for training; certificates use ``proj=None`` (exact).

:meth:`DualNetwork.objective` gives J(x, g(c)), a lower bound of c^T f(x + delta) over the perturbation set,
for a batch of vectors c. :meth:`DualNetwork.dual_objective` evaluates the same dual *backwards* (the literal
dual network g(c, alpha) of Theorem 1) for any slopes alpha in [0, 1] of the lower ReLU lines; alpha = d gives
the forward result, and the best alpha gives the LP optimum (strong duality), which the tests check with an LP
solver.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .graph import Graph, Node, trace_network

__all__ = ["DualNetwork", "InputSet", "GAUSS_MEDIAN"]

# median(|N(0, 1)|) = Phi^{-1}(3/4): the l2 median estimator divides by it.
GAUSS_MEDIAN = 0.6744897501960817


@dataclass
class InputSet:
    """The perturbation set of x: an l_inf box (optionally clipped to ``clip``) or an l2 ball of radius eps."""

    x: Tensor
    eps: Tensor                 # (B,)
    norm: str = "linf"
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"the dual network supports norm 'linf' or 'l2', got {self.norm!r}")
        if self.clip is not None and self.norm != "linf":
            raise ValueError("clipping the perturbation set to the pixel range is supported for linf only")
        if bool((self.eps < 0).any()):
            raise ValueError("eps must be >= 0")

    def center_radius(self) -> tuple[Tensor, Tensor]:
        """Box centre and per-coordinate radius (linf), or (x, eps broadcast) for l2."""
        e = self.eps.view(-1, *([1] * (self.x.dim() - 1))).to(self.x.dtype)
        if self.clip is None:
            return self.x, e.expand_as(self.x)
        lo = (self.x - e).clamp(self.clip[0], self.clip[1])
        hi = (self.x + e).clamp(self.clip[0], self.clip[1])
        return (lo + hi) / 2, (hi - lo) / 2


@dataclass
class _Term:
    """A batch of vectors pushed forward through the (linearised) network, and how it enters the bounds.

    layout ``shared``: v (K, *shape), the same for every example, with per-example weights ``weight`` (B, K);
    ``regular``: v (B, K, *shape); ``ragged``: v (N, *shape) with ``owner`` (N,) the example of each row.
    kind: ``abs`` (sum_k |g_k|), ``l2`` (sqrt(sum_k g_k^2)), ``relu`` (lower -sum [g]_+, upper +sum [-g]_+),
    ``median`` (factor * median_k |g_k|), ``shift`` (factor * g added to both bounds).
    """

    kind: str
    layout: str
    v: Tensor
    factor: float = 1.0
    weight: Tensor | None = None
    owner: Tensor | None = None


def _push(term: _Term, fn) -> _Term:
    """Apply a batched linear map ``fn`` (N, *in) -> (N, *out) to a term."""
    v = term.v
    if term.layout == "regular":
        b, k = v.shape[:2]
        out = fn(v.reshape(b * k, *v.shape[2:]))
        v = out.reshape(b, k, *out.shape[1:])
    else:
        v = fn(v)
    return _Term(term.kind, term.layout, v, term.factor, term.weight, term.owner)


def _regular(term: _Term, batch: int) -> _Term:
    """A shared term as a regular one (weights folded in)."""
    if term.layout != "shared":
        return term
    k = term.v.shape[0]
    w = term.weight if term.weight is not None else torch.ones(batch, k, dtype=term.v.dtype, device=term.v.device)
    v = term.v.unsqueeze(0) * w.view(batch, k, *([1] * (term.v.dim() - 1)))
    return _Term(term.kind, "regular", v, term.factor, None, None)


def _scale(term: _Term, d: Tensor) -> _Term:
    """Multiply every vector of a term elementwise by the per-example diagonal d (B, *shape)."""
    if term.layout == "shared":
        term = _regular(term, d.shape[0])
    if term.layout == "regular":
        return _Term(term.kind, "regular", term.v * d.unsqueeze(1), term.factor, None, None)
    return _Term(term.kind, "ragged", term.v * d[term.owner], term.factor, None, term.owner)


def _add(a: _Term, b: _Term, batch: int) -> _Term:
    if a.layout != b.layout:
        a, b = _regular(a, batch), _regular(b, batch)
    w = a.weight
    if a.layout == "shared" and not _same(a.weight, b.weight):
        a, b = _regular(a, batch), _regular(b, batch)
        w = None
    return _Term(a.kind, a.layout, a.v + b.v, a.factor, w, a.owner)


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and a.shape == b.shape and bool(torch.equal(a, b)))


def _reduce(term: _Term, g: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """(lower, upper) contributions (B, *feat) of a term whose pushed vectors are g (same layout as term.v)."""
    if term.layout == "ragged":
        feat = g.shape[1:]
        if term.kind != "relu":
            raise AssertionError("ragged terms are ReLU terms")
        lo = torch.zeros((batch, *feat), dtype=g.dtype, device=g.device)
        up = torch.zeros_like(lo)
        lo = lo.index_add(0, term.owner, -g.clamp_min(0))
        up = up.index_add(0, term.owner, (-g).clamp_min(0))
        return lo, up
    if term.layout == "shared":
        w = term.weight
        kdims = g.dim() - 1
        if term.kind == "abs":
            s = torch.einsum("bk,k...->b...", w, g.abs()) if w is not None else g.abs().sum(0, keepdim=True)
            return -s, s
        if term.kind == "l2":
            s = g.pow(2).sum(0).clamp_min(0).sqrt().unsqueeze(0)
            if w is not None:  # weight = eps per example, the same for every k
                s = s * w[:, 0].view(-1, *([1] * (kdims)))
            return -s, s
        raise AssertionError("shared terms are input terms (abs or l2)")
    # regular: g (B, K, *feat)
    if term.kind == "abs":
        s = g.abs().sum(1)
        return -s, s
    if term.kind == "l2":
        s = g.pow(2).sum(1).sqrt()
        return -s, s
    if term.kind == "relu":
        return -g.clamp_min(0).sum(1), (-g).clamp_min(0).sum(1)
    if term.kind == "median":
        s = term.factor * g.abs().median(dim=1).values
        return -s, s
    if term.kind == "shift":
        s = term.factor * g.sum(1)
        return s, s
    raise AssertionError(f"unknown term kind {term.kind}")


class DualNetwork:
    """Bounds of every layer of ``model`` over a perturbation set of ``x``, from the dual network.

    Args:
        model: a network of Linear/Conv2d/BatchNorm/ReLU layers and additions (see :mod:`.graph`).
        x: inputs (B, *shape).
        eps: radius (float, or a (B,) tensor for one radius per example).
        norm: ``linf`` (dual norm l1) or ``l2`` (dual norm l2).
        proj: number of random projections r for the median estimator (training only; None = exact).
        clip: intersect the l_inf ball with this box, e.g. (0, 1) for pixels (tighter; off in the thesis).
        generator: RNG for the projections.
    """

    def __init__(self, model: nn.Module, x: Tensor, eps: float | Tensor, norm: str = "linf",
                 proj: int | None = None, clip: tuple[float, float] | None = None,
                 generator: torch.Generator | None = None) -> None:
        if x.dim() < 2:
            raise ValueError(f"x must have a batch axis first, got shape {tuple(x.shape)}")
        if proj is not None and proj < 1:
            raise ValueError(f"proj must be a positive number of projections, got {proj}")
        self.graph: Graph = trace_network(model, tuple(x.shape[1:]))
        b = x.shape[0]
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        eps_t = eps_t.expand(b).clone() if eps_t.dim() == 0 else eps_t
        if eps_t.shape != (b,):
            raise ValueError(f"eps must be a float or a tensor of {b} radii, got shape {tuple(eps_t.shape)}")
        self.inp = InputSet(x, eps_t, norm, clip)
        self.batch = b
        self.proj = proj
        self.generator = generator
        self.bounds: dict[int, tuple[Tensor, Tensor]] = {}   # node index -> (lower, upper) (B, *shape)
        self._final: tuple[Tensor, dict[int, _Term]] | None = None
        self._run()

    # ---- forward pass (Algorithm 2 / 3) ----
    def _rand(self, shape: tuple[int, ...], like: Tensor, cauchy: bool) -> Tensor:
        if cauchy:
            u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=self.generator)
            return torch.tan(torch.pi * (u - 0.5))
        return torch.randn(shape, dtype=like.dtype, device=like.device, generator=self.generator)

    def _input_terms(self) -> tuple[Tensor, dict[int, _Term]]:
        x, b = self.inp.x, self.batch
        center, radius = self.inp.center_radius()
        n = x[0].numel()
        shape = tuple(x.shape[1:])
        linf = self.inp.norm == "linf"
        if self.proj is not None and self.proj < n:
            r = self._rand((b, self.proj, *shape), x, cauchy=linf) * radius.unsqueeze(1)
            term = _Term("median", "regular", r, 1.0 if linf else 1.0 / GAUSS_MEDIAN)
        else:
            eye = torch.eye(n, dtype=x.dtype, device=x.device).view(n, *shape)
            if linf:
                w = None if self.inp.clip is None and bool((self.inp.eps == self.inp.eps[0]).all()) else \
                    radius.reshape(b, n)
                if w is None:
                    eye = eye * self.inp.eps[0]
                term = _Term("abs", "shared", eye, 1.0, w)
            else:
                term = _Term("l2", "shared", eye, 1.0, self.inp.eps.view(b, 1).expand(b, n))
        return center, {0: term}

    def _bounds_of(self, center: Tensor, terms: dict[int, _Term]) -> tuple[Tensor, Tensor]:
        lo, up = center.clone(), center.clone()
        for t in terms.values():
            dl, du = _reduce(t, t.v, self.batch)
            lo = lo + dl
            up = up + du
        return lo, up

    def _relu(self, i: int, center: Tensor, terms: dict[int, _Term], lo: Tensor, up: Tensor):
        unstable = (lo < 0) & (up > 0)
        d = torch.where(up <= 0, torch.zeros_like(up), torch.ones_like(up))
        d = torch.where(unstable, up / (up - lo).clamp_min(1e-12), d)
        center = center * d
        terms = {k: _scale(t, d) for k, t in terms.items()}
        w = torch.where(unstable, lo * d, torch.zeros_like(lo))     # l_j d_j on the unstable units, 0 elsewhere
        n_unstable = int(unstable.sum())
        if n_unstable:
            b = self.batch
            shape = tuple(lo.shape[1:])
            r = self.proj
            if r is not None and n_unstable > b * (r + 1):
                rr = self._rand((b, r, *shape), lo, cauchy=True)   # sum_j |.| is an l1 norm
                terms[i] = _Term("median", "regular", rr * w.unsqueeze(1), 0.5)
                terms[-i] = _Term("shift", "regular", w.unsqueeze(1), -0.5)
            else:
                flat_mask = unstable.reshape(b, -1)
                owner, j = flat_mask.nonzero(as_tuple=True)
                vals = w.reshape(b, -1)[owner, j]
                v = torch.zeros((owner.shape[0], flat_mask.shape[1]), dtype=lo.dtype, device=lo.device)
                v = v.index_put((torch.arange(owner.shape[0], device=lo.device), j), vals)
                terms[i] = _Term("relu", "ragged", v.view(-1, *shape), 1.0, None, owner)
        return center, terms

    def _run(self) -> None:
        g = self.graph
        remaining = [len(c) for c in g.consumers]
        states: dict[int, tuple[Tensor, dict[int, _Term]]] = {}
        for i, nd in enumerate(g.nodes):
            if nd.kind == "input":
                st = self._input_terms()
            elif nd.kind == "affine":
                c, terms = states[nd.inputs[0]]
                center = nd.linear(c)
                bias = nd.bias
                if bias is not None:
                    center = center + bias
                st = (center, {k: _push(t, nd.linear) for k, t in terms.items()})
            elif nd.kind == "relu":
                src = nd.inputs[0]
                c, terms = states[src]
                if src not in self.bounds:
                    self.bounds[src] = self._bounds_of(c, terms)
                lo, up = self.bounds[src]
                st = self._relu(i, c, terms, lo, up)
            elif nd.kind == "add":
                c0, t0 = states[nd.inputs[0]]
                center, terms = c0, dict(t0)
                for j in nd.inputs[1:]:
                    cj, tj = states[j]
                    center = center + cj
                    for k, t in tj.items():
                        terms[k] = _add(terms[k], t, self.batch) if k in terms else t
                st = (center, terms)
            else:
                raise AssertionError(nd.kind)
            states[i] = st
            for j in nd.inputs:
                remaining[j] -= 1
                if remaining[j] == 0:
                    del states[j]
        self._final = states[g.output]

    # ---- results ----
    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.graph.nodes[self.graph.output].shape

    def output_bounds(self) -> tuple[Tensor, Tensor]:
        """Elementwise lower and upper bounds of the network output (B, *out)."""
        center, terms = self._final
        return self._bounds_of(center, terms)

    def objective(self, c: Tensor) -> Tensor:
        """J(x, g(c)): lower bounds (B, M) of c_m^T f(x') over the perturbation set, for c (B, M, *out)."""
        center, terms = self._final
        b = self.batch
        out_dims = len(self.output_shape)
        if c.shape[0] != b or tuple(c.shape[2:]) != self.output_shape:
            raise ValueError(f"c must have shape (B={b}, M, *{self.output_shape}), got {tuple(c.shape)}")
        red = tuple(range(2, 2 + out_dims))
        j = (c * center.unsqueeze(1)).sum(dim=red)
        for t in terms.values():
            v = t.v
            if t.layout == "shared":
                g = torch.einsum("k...,bm...->kbm", v, c)                 # (K, B, M)
                if t.kind == "abs":
                    a = g.abs()
                    s = torch.einsum("bk,kbm->bm", t.weight, a) if t.weight is not None else a.sum(0)
                    j = j - s
                    continue
                if t.kind == "l2":
                    s = g.pow(2).sum(0).sqrt()
                    if t.weight is not None:
                        s = s * t.weight[:, :1]
                    j = j - s
                    continue
                t = _regular(t, b)
                v = t.v
            if t.layout == "regular":
                g = torch.einsum("bk...,bm...->bkm", v, c)
            else:
                g = (v.unsqueeze(1) * c[t.owner]).flatten(2).sum(2)          # (N, M)
            lo, _ = _reduce(t, g, b)
            j = j + lo
        return j

    def dual_objective(self, c: Tensor, alpha: dict[int, Tensor] | None = None) -> Tensor:
        """J(x, g(c, alpha)) computed backwards through the dual network (Theorem 1 / Theorem 3).

        ``alpha`` maps a ReLU node index to the slopes (broadcastable to (B, M, *shape), values in [0, 1]) of
        the lower line z >= alpha * zhat on its unstable units; missing entries use alpha = u / (u - l). Uses
        the layer bounds of the forward pass (exact bounds: build the DualNetwork with proj=None).
        """
        g = self.graph
        b, m = c.shape[:2]
        lam: dict[int, Tensor] = {g.output: c}
        const = torch.zeros((b, m), dtype=c.dtype, device=c.device)
        for i in range(g.output, -1, -1):
            if i not in lam:
                continue
            nd: Node = g.nodes[i]
            lm = lam.pop(i)
            red = tuple(range(2, lm.dim()))
            if nd.kind == "affine":
                bias = nd.bias
                if bias is not None:
                    const = const + (lm * bias).sum(dim=red)
                back = nd.transpose(lm.reshape(b * m, *nd.shape)).reshape(b, m, *nd.in_shape)
                self._acc(lam, nd.inputs[0], back)
            elif nd.kind == "relu":
                lo, up = self.bounds[nd.inputs[0]]
                lo, up = lo.unsqueeze(1), up.unsqueeze(1)
                unstable = (lo < 0) & (up > 0)
                d = torch.where(unstable, up / (up - lo).clamp_min(1e-12), (lo >= 0).to(lm.dtype))
                a = alpha.get(i) if alpha is not None else None
                a = d if a is None else a
                slope = torch.where(unstable, torch.where(lm >= 0, a, d), d)
                const = const + torch.where(unstable, lm.clamp_max(0) * (-d * lo), torch.zeros_like(lm)).sum(dim=red)
                self._acc(lam, nd.inputs[0], slope * lm)
            elif nd.kind == "add":
                for j in nd.inputs:
                    self._acc(lam, j, lm)
            elif nd.kind == "input":
                center, radius = self.inp.center_radius()
                const = const + (lm * center.unsqueeze(1)).sum(dim=red)
                if self.inp.norm == "linf":
                    const = const - (lm.abs() * radius.unsqueeze(1)).sum(dim=red)
                else:
                    const = const - lm.flatten(2).norm(dim=2) * self.inp.eps.view(b, 1)
        return const

    @staticmethod
    def _acc(lam: dict[int, Tensor], j: int, v: Tensor) -> None:
        lam[j] = lam[j] + v if j in lam else v
