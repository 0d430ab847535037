"""Lemma 6.1 of spec-000 (section 4.1): an L-layer ReLU MLP whose widths are all >= s can represent any rank-s
affine map exactly on a finite set, with every ReLU active.

For the affine classifier x -> A x + b with the thin SVD A = U S V (s = rank):

- first layer:  A_1 = [S V; 0], b_1 = c 1, where c = max over the data and the first s rows of |(S V x)_j| + 1;
- middle layers: A_l = [I_s 0; 0 0], b_l = [0_s; c 1] (the garbled "[0 c 1]" of the text read as: 0 on the first
  s entries, c elsewhere, so every unit stays at >= 1 > 0);
- last layer:   A_L = [U 0], b_L = -c A_L 1 + b.

Every hidden unit then carries (S V x)_j + c >= 1 (first s) or c (the rest), and the output is A x + b.
:func:`embed_linear` writes these weights into an :class:`vision.theory.nets.MLP`; Theorem 6.2 says that training
the MLP from there inherits the linear model's local minimum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vision.theory.nets import MLP

__all__ = ["embed_linear", "min_preactivation", "embedding_rank"]


def embedding_rank(weight: Tensor, tol: float = 1e-10) -> int:
    """Numerical rank s of the affine map's matrix (singular values above ``tol`` x the largest)."""
    sv = torch.linalg.svdvals(weight.detach().double())
    return int((sv > tol * sv.max()).sum()) if sv.numel() and float(sv.max()) > 0 else 0


def embed_linear(mlp: MLP, weight: Tensor, bias: Tensor, inputs: Tensor, margin: float = 1.0) -> float:
    """Set ``mlp`` (in place) to compute ``inputs @ weight.T + bias`` exactly on ``inputs`` (rows, as the MLP's
    first layer sees them: flattened); returns the constant c. Needs every hidden width >= rank(weight)."""
    layers = list(mlp.layers)
    if len(layers) < 2:
        raise ValueError("Lemma 6.1 needs an MLP with at least one hidden layer")
    m, n = weight.shape
    if layers[0].in_features != n or layers[-1].out_features != m:
        raise ValueError(f"the MLP maps {layers[0].in_features} -> {layers[-1].out_features} features but the "
                         f"linear classifier maps {n} -> {m}")
    a = weight.detach().double()
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    rank = embedding_rank(a)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    widths = [lin.out_features for lin in layers[:-1]]
    if min(widths) < rank:
        raise ValueError(f"Lemma 6.1 needs every hidden width >= rank s = {rank}; the MLP has widths {widths}")
    sv = s[:, None] * vh  # (s, n) = S V
    x = inputs.detach().double().reshape(inputs.shape[0], -1)
    c = float((x @ sv.T).abs().max()) + margin if x.shape[0] else margin
    with torch.no_grad():
        w1 = torch.zeros(widths[0], n, dtype=torch.float64)
        w1[:rank] = sv
        layers[0].weight.copy_(w1)
        layers[0].bias.fill_(c)
        for i, lin in enumerate(layers[1:-1], start=1):
            w = torch.zeros(widths[i], widths[i - 1], dtype=torch.float64)
            w[:rank, :rank] = torch.eye(rank, dtype=torch.float64)
            b = torch.full((widths[i],), c, dtype=torch.float64)
            b[:rank] = 0.0
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        wl = torch.zeros(m, widths[-1], dtype=torch.float64)
        wl[:, :rank] = u
        layers[-1].weight.copy_(wl)
        layers[-1].bias.copy_(-c * wl.sum(dim=1) + bias.detach().double())
    return c


@torch.no_grad()
def min_preactivation(mlp: MLP, inputs: Tensor) -> float:
    """The smallest pre-activation of any hidden unit over ``inputs`` (> 0: no ReLU is ever inactive)."""
    x = inputs.reshape(inputs.shape[0], -1).to(mlp.layers[0].weight.dtype)
    low = float("inf")
    for lin in list(mlp.layers)[:-1]:
        x = lin(x)
        low = min(low, float(x.min()))
        x = torch.relu(x)
    return low
