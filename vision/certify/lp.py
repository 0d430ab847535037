"""The exact LP relaxation (3.6) of a small network, solved with scipy's HiGHS: the reference for the dual bounds.

For one example and one objective vector c, :func:`lp_bound` builds

    minimise c^T z_out  subject to  lo <= z_1 <= hi (the l_inf box),  z_i = A_i z_src + b_i (affine nodes),
    z_i = sum of inputs (add nodes), and per ReLU unit with pre-activation bounds [l, u]:
    z = 0 (u <= 0), z = zhat (l >= 0), else z >= 0, z >= zhat, (u - l) z - u zhat <= -u l,

with the layer bounds taken from a :class:`~vision.certify.dual.DualNetwork` (the relaxation the dual network
is the dual of) or tightened by solving two LPs per unit (:func:`lp_layer_bounds`). The matrices A_i come from
applying each layer's linear part to the identity, so this is for tiny networks only (tests, the tightness study).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import linprog

from .dual import DualNetwork
from .graph import Graph

__all__ = ["lp_bound", "lp_layer_bounds", "optimise_alpha"]


def _matrix(node, dtype=torch.float64) -> np.ndarray:
    n_in = int(np.prod(node.in_shape))
    eye = torch.eye(n_in, dtype=dtype).view(n_in, *node.in_shape)
    with torch.no_grad():
        cols = node.linear(eye).reshape(n_in, -1)
    return cols.T.cpu().numpy()          # (n_out, n_in)


def _bias(node) -> np.ndarray:
    with torch.no_grad():
        b = node.bias
    n = int(np.prod(node.shape))
    return np.zeros(n) if b is None else b.detach().reshape(-1).double().cpu().numpy()


def _build(graph: Graph, lo_in: np.ndarray, hi_in: np.ndarray, relu_bounds: dict[int, tuple[np.ndarray, np.ndarray]],
           upto: int):
    """Variables and constraints of nodes 0..upto; returns (offsets, sizes, A_eq, b_eq, A_ub, b_ub, bounds)."""
    sizes = [int(np.prod(nd.shape)) for nd in graph.nodes[: upto + 1]]
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    nvar = int(offs[-1])
    bounds = [(None, None)] * nvar
    eq_rows, eq_b, ub_rows, ub_b = [], [], [], []

    def block(i: int, mat) -> sparse.csr_matrix:
        m = sparse.csr_matrix(mat)
        pieces = [sparse.csr_matrix((m.shape[0], offs[i])), m, sparse.csr_matrix((m.shape[0], nvar - offs[i + 1]))]
        return sparse.hstack(pieces, format="csr")

    for i, nd in enumerate(graph.nodes[: upto + 1]):
        n = sizes[i]
        if nd.kind == "input":
            for k in range(n):
                bounds[offs[i] + k] = (float(lo_in[k]), float(hi_in[k]))
        elif nd.kind == "affine":
            s = nd.inputs[0]
            eq_rows.append(block(i, sparse.identity(n)) - block(s, _matrix(nd)))
            eq_b.append(_bias(nd))
        elif nd.kind == "add":
            row = block(i, sparse.identity(n))
            for s in nd.inputs:
                row = row - block(s, sparse.identity(n))
            eq_rows.append(row)
            eq_b.append(np.zeros(n))
        elif nd.kind == "relu":
            s = nd.inputs[0]
            lo, up = relu_bounds[s]
            for k in range(n):
                zi, zh = offs[i] + k, offs[s] + k
                if up[k] <= 0:
                    bounds[zi] = (0.0, 0.0)
                elif lo[k] >= 0:
                    eq_rows.append(sparse.csr_matrix(([1.0, -1.0], ([0, 0], [zi, zh])), shape=(1, nvar)))
                    eq_b.append(np.zeros(1))
                else:
                    bounds[zi] = (0.0, None)
                    ub_rows.append(sparse.csr_matrix(([-1.0, 1.0], ([0, 0], [zi, zh])), shape=(1, nvar)))
                    ub_b.append(np.zeros(1))
                    ub_rows.append(sparse.csr_matrix(([up[k] - lo[k], -up[k]], ([0, 0], [zi, zh])), shape=(1, nvar)))
                    ub_b.append(np.array([-up[k] * lo[k]]))
    a_eq = sparse.vstack(eq_rows, format="csr") if eq_rows else None
    a_ub = sparse.vstack(ub_rows, format="csr") if ub_rows else None
    return (offs, sizes, a_eq, np.concatenate(eq_b) if eq_b else None, a_ub,
            np.concatenate(ub_b) if ub_b else None, bounds)


def _solve(graph, lo_in, hi_in, relu_bounds, node: int, c: np.ndarray) -> float:
    offs, _, a_eq, b_eq, a_ub, b_ub, bounds = _build(graph, lo_in, hi_in, relu_bounds, node)
    obj = np.zeros(int(offs[-1]))
    obj[offs[node]: offs[node + 1]] = c
    res = linprog(obj, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status != 0:
        raise ValueError(f"the LP relaxation could not be solved: {res.message}")
    return float(res.fun)


def _input_box(dn: DualNetwork, b: int) -> tuple[np.ndarray, np.ndarray]:
    if dn.inp.norm != "linf":
        raise ValueError("the exact LP reference supports the l_inf ball only")
    center, radius = dn.inp.center_radius()
    c = center[b].reshape(-1).double().cpu().numpy()
    r = radius[b].reshape(-1).double().cpu().numpy()
    return c - r, c + r


def _dual_bounds(dn: DualNetwork, b: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {k: (lo[b].reshape(-1).detach().double().cpu().numpy(), up[b].reshape(-1).detach().double().cpu().numpy())
            for k, (lo, up) in dn.bounds.items()}


def lp_layer_bounds(dn: DualNetwork, b: int = 0) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Pre-activation bounds of every ReLU input, each unit tightened by two LPs (the 'LP-all' relaxation)."""
    g = dn.graph
    lo_in, hi_in = _input_box(dn, b)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in g.relus():
        s = g.nodes[i].inputs[0]
        if s in out:
            continue
        n = int(np.prod(g.nodes[s].shape))
        lo, up = np.empty(n), np.empty(n)
        for k in range(n):
            e = np.zeros(n)
            e[k] = 1.0
            lo[k] = _solve(g, lo_in, hi_in, out, s, e)
            up[k] = -_solve(g, lo_in, hi_in, out, s, -e)
        out[s] = (lo, up)
    return out


def lp_bound(dn: DualNetwork, c: torch.Tensor, b: int = 0, tighten: bool = False) -> np.ndarray:
    """min c_m^T f(x') over the LP relaxation for example ``b``; c is (M, *out). Returns (M,) values.

    ``tighten=False`` uses the dual network's own layer bounds (the LP whose dual the network evaluates);
    ``tighten=True`` first tightens every ReLU's bounds with LPs.
    """
    g = dn.graph
    lo_in, hi_in = _input_box(dn, b)
    rb = lp_layer_bounds(dn, b) if tighten else _dual_bounds(dn, b)
    cm = c.reshape(c.shape[0], -1).detach().double().cpu().numpy()
    return np.array([_solve(g, lo_in, hi_in, rb, g.output, row) for row in cm])


def optimise_alpha(dn: DualNetwork, c: torch.Tensor, steps: int = 300, lr: float = 0.05,
                   seed: int = 0) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Maximise J(x, g(c, alpha)) over the lower-line slopes alpha in [0, 1] by projected Adam ascent.

    Every alpha gives a valid lower bound (weak duality); the maximum equals the LP with the same layer bounds
    (strong duality). Returns the best J (B, M) seen and its alphas.
    """
    gen = torch.Generator().manual_seed(seed)
    b, m = c.shape[:2]
    params: dict[int, torch.Tensor] = {}
    for i in dn.graph.relus():
        lo, up = dn.bounds[dn.graph.nodes[i].inputs[0]]
        d = (up / (up - lo).clamp_min(1e-12)).clamp(0, 1).detach()
        a = d.unsqueeze(1).expand(b, m, *d.shape[1:]).clone()
        a = (a + 0.05 * torch.randn(a.shape, generator=gen, dtype=a.dtype)).clamp(0, 1)
        params[i] = a.requires_grad_(True)
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    best = dn.dual_objective(c).detach()
    best_alpha = {k: v.detach().clone() for k, v in params.items()}
    for _ in range(steps):
        j = dn.dual_objective(c, params)
        grads = torch.autograd.grad(-j.sum(), list(params.values()))
        for v, gr in zip(params.values(), grads):
            v.grad = gr
        opt.step()
        with torch.no_grad():
            for v in params.values():
                v.clamp_(0, 1)
            j = dn.dual_objective(c, params)
            if bool((j > best).any()):
                upd = j > best
                best = torch.where(upd, j, best)
                for k, v in params.items():
                    best_alpha[k] = torch.where(upd.view(b, m, *([1] * (v.dim() - 2))), v, best_alpha[k])
    return best, best_alpha
