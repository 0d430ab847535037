"""Certified capital: a lower bound on the dollars of orders needed to change a Linear or MLP model's prediction.

The attacker places orders ``a >= 0`` at the real top-L prices of a snippet, with capital ``sum_i price_i a_i <=
eps``; they rest through the touch propagation ``delta = P a`` (linear, :mod:`lobsim.propagation`), the model reads
linear-fractional channels of the book plus delta (:mod:`lobsim.defenses.fractional`), then the normaliser, the
pooling and the first linear layer (one affine map, folded here into ``z1 = A . V + b1``), then ReLU layers.
For a budget eps we bound from below, for every class k, the margin ``z_y - z_k`` of the clean prediction y over
all such orders; if every bound is positive, no orders worth eps change the prediction. The certified capital of
a snippet is the largest eps so certified (log bisection). Two bounds:

- **interval** (IBP): the exact range of each channel at each snapshot under the budget, then interval arithmetic
  through the affine map and the ReLU layers. It ignores that the budget is shared over the window.
- **linear relaxation** (CROWN-style): linear lower / upper bounds of the channels in the resting shares, of the
  ReLUs in their pre-activations (with the tighter of the interval and the linear bounds of every hidden neuron as
  intermediate bounds), propagated backwards to one linear function ``g . a + const`` of the orders through the
  adjoint of the propagation, then minimised exactly over the capital simplex: ``const + eps * min(0, min_i
  g_i / price_i)``. Two choices of the channel bounds' offsets are tried and the best bound kept; the reported
  bound is never below the interval bound (the larger of the two is a valid bound).

The bounds hold for real-valued orders, hence for the whole shares of the real attack: the true minimal capital of
a snippet lies between its certified capital and the capital of the cheapest attack found. Computed in float64;
a snippet counts as certified only when its margin bound exceeds ``margin_tol`` (float32 models are evaluated to
about 1e-6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lobsim.defenses.fractional import Fractional, best_offset, fractional, lower, max_kappa_shares, ranges, upper
from lobsim.snippets import SnippetBatch

METHODS = ("interval", "linear")


@dataclass
class Network:
    """An MLP reading raw channel windows V ``(W, C)`` as affine pieces: ``z1 = A . V + b1``, then
    ``z_j = W_j relu(z_{j-1}) + b_j`` for ``(W_j, b_j)`` in ``rest``; the last z holds the logits."""

    A: torch.Tensor
    b1: torch.Tensor
    rest: list[tuple[torch.Tensor, torch.Tensor]]

    def forward(self, V: torch.Tensor) -> torch.Tensor:
        """Logits of channel windows ``(B, W, C)`` (float64 reference of the folded model)."""
        z = torch.einsum("hwc,bwc->bh", self.A, V.to(self.A.dtype)) + self.b1
        for Wj, bj in self.rest:
            z = torch.relu(z) @ Wj.T + bj
        return z

    def to(self, device: str | torch.device) -> Network:
        return Network(self.A.to(device), self.b1.to(device), [(w.to(device), b.to(device)) for w, b in self.rest])

    @property
    def widths(self) -> list[int]:
        return [int(self.A.shape[0])] + [int(w.shape[0]) for w, _ in self.rest]


def fold(trained: Any, dtype: torch.dtype = torch.float64) -> Network:
    """The affine pieces of a project Linear / MLP model (``lobsim.models.MLPModel``) and its input normaliser.

    Differentiable in the model's parameters (certified training uses it with the float32 weights)."""
    from lobsim.models import MLPModel

    model = getattr(trained, "model", None)
    if not isinstance(model, MLPModel):
        kind = type(model).__name__ if model is not None else type(trained).__name__
        raise ValueError(f"certify: only the project's Linear and MLP models can be certified, got a {kind} "
                         "(LSTMs and users' models: attack them, the capital found is an upper bound)")
    layers = list(model.net)
    for m in layers:
        if not isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout)):
            raise ValueError(f"certify: unsupported layer {type(m).__name__} in the MLP")
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    W, C = model.window, model.channels
    pool, keep = model.pool.factor, model.pool.keep
    norm = trained.normalizer
    if len(norm.kinds) != C:
        raise ValueError(f"certify: the normaliser has {len(norm.kinds)} channels, the model reads {C}")
    W1, b1 = linears[0].weight.to(dtype), linears[0].bias.to(dtype)
    H1 = W1.shape[0]
    Ax = W1.reshape(H1, keep // pool, C).repeat_interleave(pool, dim=1) / pool
    Ax = torch.cat([torch.zeros(H1, W - keep, C, dtype=dtype, device=Ax.device), Ax], dim=1)  # on raw x (H1, W, C)
    scale = torch.tensor(norm.scale, dtype=dtype, device=Ax.device)
    centre = torch.tensor(norm.centre, dtype=dtype, device=Ax.device)
    last = torch.tensor([k == "last" for k in norm.kinds], dtype=dtype, device=Ax.device)
    A = Ax / scale
    tot = Ax.sum(1) / scale  # (H1, C)
    at_end = torch.zeros(W, dtype=dtype, device=Ax.device)
    at_end[W - 1] = 1.0
    A = A - at_end[None, :, None] * (tot * last)[:, None, :]
    b = b1 - (tot * centre * (1 - last)).sum(-1)
    rest = [(m.weight.to(dtype), m.bias.to(dtype)) for m in linears[1:]]
    return Network(A, b, rest)


# -- interval bounds -----------------------------------------------------------------------------------------------


def interval_layers(net: Network, lo: torch.Tensor, hi: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(lower, upper) of every pre-activation layer (the last = logits) for channels in [lo, hi] ``(B, W, C)``."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    zm = torch.einsum("hwc,bwc->bh", net.A, mid) + net.b1
    zr = torch.einsum("hwc,bwc->bh", net.A.abs(), rad)
    out = [(zm - zr, zm + zr)]
    for Wj, bj in net.rest:
        l, u = (torch.relu(v) for v in out[-1])
        m, r = (l + u) / 2, (u - l) / 2
        zm, zr = m @ Wj.T + bj, r @ Wj.abs().T
        out.append((zm - zr, zm + zr))
    return out


def interval_margin(net: Network, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor,
                    layers: list | None = None) -> torch.Tensor:
    """Lower bounds ``(B, K)`` of ``z_y - z_k`` (+inf at k = y), the last layer taken on the difference rows."""
    layers = interval_layers(net, lo, hi) if layers is None else layers
    if not net.rest:
        D = net.A[y][:, None] - net.A[None]  # (B, K, W, C)
        db = net.b1[y][:, None] - net.b1[None]
        lb = (D.clamp_min(0) * lo[:, None]).sum((2, 3)) + (D.clamp_max(0) * hi[:, None]).sum((2, 3)) + db
    else:
        Wn, bn = net.rest[-1]
        l, u = (torch.relu(v) for v in layers[-2])
        D = Wn[y][:, None] - Wn[None]  # (B, K, H)
        lb = (D.clamp_min(0) * l[:, None]).sum(-1) + (D.clamp_max(0) * u[:, None]).sum(-1) + bn[y][:, None] - bn
    return lb.masked_fill(torch.nn.functional.one_hot(y, lb.shape[1]).bool(), float("inf"))


# -- linear relaxation ---------------------------------------------------------------------------------------------


class _Relaxed:
    """The channels' linear bounds at one budget (offsets c_l, c_u and slopes l, u per snapshot and channel)."""

    def __init__(self, fr: Fractional, price: torch.Tensor, eps: torch.Tensor, offsets: str) -> None:
        K = max_kappa_shares(fr, price, eps)
        self.offset = offsets != "zero"
        if offsets == "zero":
            self.c_l = self.c_u = torch.zeros_like(fr.f0)
        else:
            self.c_u = best_offset(fr, price, eps, K, "upper")
            self.c_l = best_offset(fr, price, eps, K, "lower")
        self.u, self.l = upper(fr, K, self.c_u), lower(fr, K, self.c_l)
        self.lu = torch.cat([self.l, self.u], dim=2).transpose(2, 3).contiguous()  # (B, W, 2L, 2C)


class LinearBound:
    """Backward linear bounds for one chunk of snippets (see the module docstring)."""

    def __init__(self, net: Network, fr: Fractional, price: torch.Tensor, op: Any, row_chunk: int = 64) -> None:
        self.net, self.fr, self.op, self.row_chunk = net, fr, op, row_chunk
        self.B, self.W, self.C = fr.f0.shape
        self.L2 = fr.q.shape[-1]
        self.price = price.reshape(self.B, self.W * self.L2, 1)

    def lower(self, coef: torch.Tensor, layer: int, inter: list[tuple[torch.Tensor, torch.Tensor]],
              rx: _Relaxed, eps: torch.Tensor) -> torch.Tensor:
        """Lower bound ``(B, R)`` of ``coef . z_layer`` (coef ``(B, R, H)``) over the budget ``eps`` (B,)."""
        out = []
        for r0 in range(0, coef.shape[1], self.row_chunk):
            out.append(self._lower(coef[:, r0:r0 + self.row_chunk], layer, inter, rx, eps))
        return torch.cat(out, dim=1)

    def _lower(self, coef: torch.Tensor, layer: int, inter: list, rx: _Relaxed, eps: torch.Tensor) -> torch.Tensor:
        from lobsim.defenses.adjoint import adjoint_rows

        net, fr = self.net, self.fr
        const = torch.zeros(coef.shape[:2], dtype=coef.dtype, device=coef.device)
        for i in range(layer, 0, -1):
            Wi, bi = net.rest[i - 1]
            const = const + coef @ bi
            coef = coef @ Wi
            lo, up = inter[i - 1]
            unstable = (lo < 0) & (up > 0)
            active = (lo >= 0).to(coef.dtype)
            lam = torch.where(unstable, up / torch.where(unstable, up - lo, torch.ones_like(up)), active)
            alpha = torch.where(unstable, (up > -lo).to(coef.dtype), active)
            pos = coef >= 0
            inter_c = torch.where(unstable, -lam * lo, torch.zeros_like(lo))[:, None]
            const = const + torch.where(pos, torch.zeros_like(coef), coef * inter_c).sum(-1)
            coef = coef * torch.where(pos, alpha[:, None], lam[:, None])
        const = const + coef @ net.b1
        G = torch.einsum("brh,hwc->bwcr", coef, net.A)  # rows last: the adjoint's layout
        Gp, Gn = G.clamp_min(0), G.clamp_max(0)
        const = const + torch.einsum("bwcr,bwc->br", G, fr.f0)
        if rx.offset:
            const = const - torch.einsum("bwcr,bwc->br", Gp, rx.c_l) + torch.einsum("bwcr,bwc->br", Gn, rx.c_u)
        cd = torch.matmul(rx.lu, torch.cat([Gp, Gn], dim=2))  # (B, W, 2L, R)
        g = adjoint_rows(self.op, cd.reshape(self.B, self.W * self.L2, -1))
        ratio = (g / self.price).amin(1)  # price = +inf at masked levels
        return const + eps[:, None] * ratio.clamp_max(0.0)


@dataclass
class CertifyConfig:
    """How certification runs. ``eps_min`` / ``eps_max``: the bisection's range in dollars (a snippet not certified
    at eps_min gets 0; one certified at eps_max gets eps_max, flagged ``capped``). ``iterations``: log-bisection
    steps (14 over $1-$10M: 0.1% resolution). ``intermediate``: hidden-neuron bounds ``crown`` (linear, tighter,
    cost ~ neurons x window x levels per snippet), ``interval`` or ``auto`` (crown up to 1,024 neurons a layer).
    ``chunk``: snippets per batch of work."""

    eps_min: float = 1.0
    eps_max: float = 1e7
    iterations: int = 14
    intermediate: str = "auto"
    margin_tol: float = 1e-5
    chunk: int = 8
    row_chunk: int = 64
    offsets: tuple[str, ...] = ("zero", "best")
    inter_offsets: tuple[str, ...] = ("zero",)

    def __post_init__(self) -> None:
        if not 0 < self.eps_min < self.eps_max:
            raise ValueError(f"certify: need 0 < eps_min < eps_max, got {self.eps_min}, {self.eps_max}")
        if self.intermediate not in ("auto", "crown", "interval"):
            raise ValueError(f"certify: intermediate must be auto, crown or interval, got {self.intermediate!r}")
        if self.iterations < 1 or self.chunk < 1:
            raise ValueError("certify: iterations and chunk must be >= 1")
        self.offsets, self.inter_offsets = tuple(self.offsets), tuple(self.inter_offsets)
        bad = [o for o in self.offsets + self.inter_offsets if o not in ("zero", "best")]
        if bad or not self.offsets or not self.inter_offsets:
            raise ValueError(f"certify: offsets must be non-empty subsets of ('zero', 'best'), got {bad}")
        if not set(self.inter_offsets) <= set(self.offsets):
            raise ValueError("certify: inter_offsets must be among offsets")


@dataclass
class Certificate:
    """Per snippet: the clean prediction, its margin, and the certified capital of each method (dollars)."""

    pred: np.ndarray
    margin: np.ndarray
    interval: np.ndarray
    linear: np.ndarray
    capped: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


class _Chunk:
    """Everything one chunk of snippets needs: channels, prices, the propagation operator and the bounds."""

    def __init__(self, trained: Any, batch: SnippetBatch, net: Network, cfg: CertifyConfig) -> None:
        from lobsim.attacks.capital import book_tensors_centred
        from lobsim.propagation import TouchPropagator

        P, S, M, centre = book_tensors_centred(batch, "cpu", torch.float64)
        self.fr = fractional(trained.inputs, P, S, M)
        B, W, _, L = P.shape
        absolute = P + centre[:, None, None, None]
        self.price = torch.where(M, absolute, torch.full_like(P, float("inf"))).reshape(B, W, 2 * L)
        if bool((self.price <= 0).any()):
            raise ValueError("certify: a real level has a non-positive price; capital is undefined there")
        self.net, self.cfg = net, cfg
        self.logits = net.forward(self.fr.f0)
        self.y = self.logits.argmax(1)
        top2 = self.logits.topk(2, dim=1).values
        self.margin = top2[:, 0] - top2[:, 1]
        self.op = TouchPropagator(batch, dtype=torch.float64)
        self.lin = LinearBound(net, self.fr, self.price, self.op, cfg.row_chunk)
        mode = cfg.intermediate
        self.crown_inter = mode == "crown" or (mode == "auto" and max(net.widths[:-1] or [0]) <= 1024)

    def interval(self, eps: torch.Tensor) -> torch.Tensor:
        lo, hi = ranges(self.fr, self.price, eps)
        return interval_margin(self.net, lo, hi, self.y).amin(1)

    def linear(self, eps: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """min_k lower bound of z_y - z_k; ``raw``: the linear relaxation alone (not maxed with the interval)."""
        lo, hi = ranges(self.fr, self.price, eps)
        layers = interval_layers(self.net, lo, hi)
        rxs = {o: _Relaxed(self.fr, self.price, eps, o) for o in self.cfg.offsets}
        inter: list[tuple[torch.Tensor, torch.Tensor]] = []
        n = len(self.net.rest)
        for j in range(n):  # hidden pre-activations z_0 .. z_{n-1}
            if j == 0:
                lb, ub = layers[0]
            else:  # interval step from the (tighter) bounds of the previous layer
                Wj, bj = self.net.rest[j - 1]
                pl, pu = (torch.relu(v) for v in inter[-1])
                m, r = (pl + pu) / 2, (pu - pl) / 2
                lb, ub = m @ Wj.T + bj - r @ Wj.abs().T, m @ Wj.T + bj + r @ Wj.abs().T
            if self.crown_inter:
                idx = torch.nonzero(((lb < 0) & (ub > 0)).any(0))[:, 0]  # stable neurons need no tighter bound
                if idx.numel():
                    H = lb.shape[1]
                    eye = torch.eye(H, dtype=torch.float64)[idx]
                    rows = torch.cat([eye, -eye]).expand(lb.shape[0], 2 * len(idx), H)
                    for o in self.cfg.inter_offsets:
                        v = self.lin.lower(rows, j, inter, rxs[o], eps)
                        lb[:, idx] = torch.maximum(lb[:, idx], v[:, :len(idx)])
                        ub[:, idx] = torch.minimum(ub[:, idx], -v[:, len(idx):])
            inter.append((lb, ub))
        K = self.logits.shape[1]
        rows = torch.eye(K, dtype=torch.float64)[self.y][:, None] - torch.eye(K, dtype=torch.float64)[None]
        at_y = torch.nn.functional.one_hot(self.y, K).bool()
        best = torch.full((self.y.shape[0],), -float("inf"), dtype=torch.float64)
        for rx in rxs.values():
            m = self.lin.lower(rows, n, inter, rx, eps)  # (B, K)
            best = torch.maximum(best, m.masked_fill(at_y, float("inf")).amin(1))
        if raw:
            return best
        if n:
            Wn, bn = self.net.rest[-1]
            pl, pu = (torch.relu(v) for v in inter[-1])
            D = Wn[self.y][:, None] - Wn[None]
            ibp = (D.clamp_min(0) * pl[:, None]).sum(-1) + (D.clamp_max(0) * pu[:, None]).sum(-1) \
                + bn[self.y][:, None] - bn
            ibp = ibp.masked_fill(at_y, float("inf")).amin(1)
        else:
            ibp = interval_margin(self.net, lo, hi, self.y).amin(1)
        return torch.maximum(best, ibp)


def _bisect(fn: Callable[[torch.Tensor], torch.Tensor], known: torch.Tensor, cfg: CertifyConfig,
            tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest eps in [eps_min, eps_max] with fn(eps) > tol, per snippet (0 when none); ``known``: eps already
    certified (a lower end). Returns (eps, capped)."""
    B = known.shape[0]
    lo = known.clone()
    need_min = lo < cfg.eps_min
    if bool(need_min.any()):
        ok = fn(torch.full((B,), cfg.eps_min, dtype=torch.float64)) > tol
        lo = torch.where(need_min & ok, torch.full_like(lo, cfg.eps_min), lo)
    hi = torch.full((B,), cfg.eps_max, dtype=torch.float64)
    top = fn(hi) > tol
    capped = top & (lo > 0)
    lo = torch.where(capped, hi, lo)
    active = (lo > 0) & ~capped
    for _ in range(cfg.iterations):
        if not bool(active.any()):
            break
        mid = torch.sqrt(lo.clamp_min(cfg.eps_min) * hi)
        ok = fn(mid) > tol
        lo = torch.where(active & ok, mid, lo)
        hi = torch.where(active & ~ok, mid, hi)
    return lo, capped


def certify(trained: Any, batch: SnippetBatch, cfg: CertifyConfig | None = None, methods: tuple[str, ...] = METHODS,
            progress: bool = False) -> Certificate:
    """Certified capital (dollars) of every snippet of ``batch`` for ``trained`` (see the module docstring)."""
    cfg = cfg or CertifyConfig()
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"certify: methods must be a non-empty subset of {METHODS}, got {list(methods)}")
    with torch.no_grad():
        net = fold(trained).to("cpu")  # bounds run in float64 on the CPU (the adjoint is a Numba kernel)
    fields: dict[str, list[np.ndarray]] = {k: [] for k in ("pred", "margin", "interval", "linear", "capped")}
    chunks = range(0, batch.batch_size, cfg.chunk)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="certify", unit="chunk")
    for lo in chunks:
        sub = batch.select(np.arange(lo, min(lo + cfg.chunk, batch.batch_size)))
        ch = _Chunk(trained, sub, net, cfg)
        with torch.no_grad():
            zero = torch.zeros(sub.batch_size, dtype=torch.float64)
            ok0 = ch.margin > cfg.margin_tol
            e_i, cap_i = _bisect(ch.interval, zero, cfg, cfg.margin_tol)
            e_i, cap_i = torch.where(ok0, e_i, zero), cap_i & ok0
            if "linear" in methods:
                e_l, cap_l = _bisect(ch.linear, e_i, cfg, cfg.margin_tol)
                e_l = torch.where(ok0, torch.maximum(e_l, e_i), zero)
            else:
                e_l, cap_l = torch.full_like(e_i, float("nan")), cap_i
        fields["pred"].append(ch.y.numpy())
        fields["margin"].append(ch.margin.numpy())
        fields["interval"].append(e_i.numpy())
        fields["linear"].append(e_l.numpy())
        fields["capped"].append((cap_i | cap_l).numpy())
    out = {k: np.concatenate(v) for k, v in fields.items()}
    return Certificate(pred=out["pred"].astype(np.int64), margin=out["margin"], interval=out["interval"],
                       linear=out["linear"], capped=out["capped"].astype(bool), config=asdict(cfg))


def margin_bounds(trained: Any, batch: SnippetBatch, eps: np.ndarray | float, cfg: CertifyConfig | None = None,
                  raw: bool = False) -> dict[str, np.ndarray]:
    """Lower bounds of the clean prediction's margin at budgets ``eps`` (per snippet): ``interval``, ``linear``
    (never below the interval one) and, with ``raw``, ``linear_raw`` (the relaxation alone). Also ``margin``."""
    cfg = cfg or CertifyConfig()
    with torch.no_grad():
        net = fold(trained).to("cpu")
        ch = _Chunk(trained, batch, net, cfg)
        e = torch.as_tensor(np.broadcast_to(np.asarray(eps, np.float64), (batch.batch_size,)).copy())
        out = {"margin": ch.margin.numpy(), "pred": ch.y.numpy(), "interval": ch.interval(e).numpy(),
               "linear": ch.linear(e).numpy()}
        if raw:
            out["linear_raw"] = ch.linear(e, raw=True).numpy()
    return out
