"""Lemma 3.1 of spec-004 checked numerically on a ReLU MLP: along the segment x(t) = x' + t (x - x'), t in [0, 1],
the layer-l activation is piecewise affine, and

    T_l(x) - T_l(x') = sum_q (t_{q+1} - t_q) * prod_{i=l..1} W_i^q (x - x'),

where W_i^q is W_i with the rows of the units that are off in linear region q set to zero. :func:`segment_pieces`
finds the exact breakpoints (where some pre-activation changes sign, by solving the affine pre-activations of the
current region for their roots) and the masked products; :func:`check_lemma31` compares the sum with the direct
difference. :func:`interlacing_holds` checks the singular-value interlacing the source uses (deleting r rows of W:
s_k(W) >= s_k(W^q) >= s_{k+r}(W)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vision.theory.nets import MLP

__all__ = ["Piece", "segment_pieces", "check_lemma31", "interlacing_holds"]


@dataclass
class Piece:
    """One linear region crossed by the segment: [t0, t1], the masks per hidden layer, the Jacobian of T_l."""

    t0: float
    t1: float
    masks: list[Tensor]
    jacobian: Tensor


def _weights(mlp: MLP) -> list[tuple[Tensor, Tensor]]:
    return [(lin.weight.detach().double(), lin.bias.detach().double()) for lin in mlp.layers]


def segment_pieces(mlp: MLP, x_start: Tensor, x_end: Tensor, layer: int | None = None,
                   probe: float = 1e-9) -> list[Piece]:
    """The linear regions of T_``layer`` (1-based; default the logits) crossed from ``x_start`` to ``x_end``."""
    ws = _weights(mlp)
    n_layers = len(ws)
    layer = n_layers if layer is None else int(layer)
    if not 1 <= layer <= n_layers:
        raise ValueError(f"layer must be in 1..{n_layers}, got {layer}")
    a0 = x_start.detach().double().reshape(-1)
    d = x_end.detach().double().reshape(-1) - a0
    pieces, t = [], 0.0
    while t < 1.0:
        tp = min(t + probe, 0.5 * (t + 1.0))
        h = a0 + tp * d
        masks = []
        for w, b in ws[:-1]:  # activation pattern inside the region just after t
            z = w @ h + b
            masks.append(z > 0)
            h = torch.relu(z)
        alpha, beta = a0.clone(), d.clone()  # h(t') = alpha + t' beta inside the region
        nxt = 1.0
        jac = torch.eye(a0.numel(), dtype=torch.float64)
        for i, (w, b) in enumerate(ws):
            za, zb = w @ alpha + b, w @ beta
            if i < n_layers - 1:
                nz = zb.abs() > 1e-300
                roots = -za[nz] / zb[nz]
                roots = roots[roots > tp]
                if roots.numel():
                    nxt = min(nxt, float(roots.min()))
                m = masks[i].double()
                alpha, beta = za * m, zb * m
            if i < layer:
                jac = (w * (masks[i].double()[:, None] if i < n_layers - 1 else 1.0)) @ jac
        pieces.append(Piece(t, nxt, masks, jac))
        t = nxt
    return pieces


@torch.no_grad()
def check_lemma31(mlp: MLP, x_start: Tensor, x_end: Tensor, layer: int | None = None) -> dict[str, float]:
    """{"pieces", "max_abs_error", "scale"}: the piece sum against T_l(x_end) - T_l(x_start) (float64)."""
    pieces = segment_pieces(mlp, x_start, x_end, layer)
    d = (x_end.detach().double() - x_start.detach().double()).reshape(-1)
    total = sum((p.t1 - p.t0) * (p.jacobian @ d) for p in pieces)
    n_layers = len(mlp.layers)
    layer = n_layers if layer is None else layer
    nn_layers = list(mlp.layers)

    def t_l(x: Tensor) -> Tensor:
        h = x.double().reshape(-1)
        for i, lin in enumerate(nn_layers[:layer]):
            h = lin.weight.double() @ h + lin.bias.double()
            if i < n_layers - 1:
                h = torch.relu(h)
        return h

    direct = t_l(x_end) - t_l(x_start)
    return {"pieces": len(pieces), "max_abs_error": float((total - direct).abs().max()),
            "scale": float(direct.abs().max())}


def interlacing_holds(weight: Tensor, row_mask: Tensor, tol: float = 1e-9) -> bool:
    """Cauchy interlacing for a row deletion: s_k(W) >= s_k(W_masked) >= s_{k+r}(W), r = rows removed."""
    w = weight.detach().double()
    keep = row_mask.bool()
    s = torch.linalg.svdvals(w)
    sm = torch.linalg.svdvals(w * keep.double()[:, None])
    r = int((~keep).sum())
    upper = bool((sm <= s + tol).all())
    lower = all(float(sm[k]) >= float(s[k + r]) - tol for k in range(len(s) - r))
    return upper and lower
