"""Specialisation of student nodes to teacher nodes (spec-001 sections 2.9-2.10).

- :func:`normalized_correlation`: rho_kj = f~_k^T f~*_j / N with f~ = (f - mean f) / std f, the Pearson correlation
  between student node k's and teacher node j's activations over an evaluation set (a node whose activation is
  constant has no direction: its correlations are 0).
- :func:`best_correlation` (BNC: max over student nodes, per teacher node), :func:`mean_best_correlation` (MBNC),
  :func:`specialization_counts` (specialised > 0.9, unspecialised < 0.8, counted over the teacher nodes' BNC and
  over each student node's best correlation: the source leaves open which one).
- :func:`channel_activations`: how a conv layer's channel becomes an activation vector; ``positions`` (every
  (image, position) pair is a sample, the default) or ``pool`` (spatial mean per image). The source does not say.
- :func:`patch_pca`: the first-layer input patches (k x k x C, unpadded, stride 1) and the eigenvectors of their
  covariance; the top ``n_components`` span the data subspace X (27 -> 17 on CIFAR-10 in the source).
- :func:`in_out_deviation`: eps_in = ||U U^T dw||, eps_out = ||(I - U U^T) dw|| for dw = w_k/||w_k|| - w*_j/||w*_j||.
- :func:`projected_angles`: the angle between student and teacher weights inside a subspace and outside it
  (Theorem 2's theta^U with U = X and U = X-perp).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "normalized_correlation", "best_correlation", "mean_best_correlation", "sorted_best_correlation",
    "specialization_counts", "channel_activations", "patch_pca", "in_out_deviation", "projected_angles",
    "pearson", "POOLING",
]

POOLING = ("positions", "pool")


def _standardize(a: Tensor) -> Tensor:
    a = a.double()
    a = a - a.mean(dim=0, keepdim=True)
    std = a.pow(2).mean(dim=0, keepdim=True).sqrt()
    return torch.where(std > 1e-12, a / std.clamp_min(1e-12), torch.zeros_like(a))


def normalized_correlation(student: Tensor, teacher: Tensor) -> Tensor:
    """(K_s, K_t) matrix rho[k, j] of Pearson correlations between columns of ``student`` (N, K_s) and
    ``teacher`` (N, K_t) (float64)."""
    if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"activations must be (N, K) matrices over the same N samples, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[0] < 2:
        raise ValueError("need at least 2 samples to correlate activations")
    return _standardize(student).T @ _standardize(teacher) / student.shape[0]


def best_correlation(rho: Tensor) -> Tensor:
    """BNC per teacher node: max over student nodes of rho[:, j]."""
    return rho.max(dim=0).values


def mean_best_correlation(rho: Tensor) -> float:
    """MBNC of a layer: the mean of the teacher nodes' BNC."""
    return float(best_correlation(rho).mean())


def sorted_best_correlation(rho: Tensor) -> list[float]:
    """The sorted BNC curve (descending)."""
    return [float(v) for v in best_correlation(rho).sort(descending=True).values]


def specialization_counts(rho: Tensor, high: float = 0.9, low: float = 0.8) -> dict[str, float | int | None]:
    """Specialised (> ``high``) and unspecialised (< ``low``) nodes, over teacher BNCs and student best NCs."""
    out: dict[str, float | int | None] = {}
    for who, best in (("teacher", rho.max(dim=0).values), ("student", rho.max(dim=1).values)):
        spec, unspec = int((best > high).sum()), int((best < low).sum())
        out[f"{who}_specialized"] = spec
        out[f"{who}_unspecialized"] = unspec
        out[f"{who}_ratio"] = unspec / spec if spec else None
    return out


def channel_activations(act: Tensor, pooling: str = "positions") -> Tensor:
    """A layer's activations as an (N_samples, K) matrix: (N, K) passes; (N, C, H, W) per ``pooling``."""
    if pooling not in POOLING:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLING)}")
    if act.ndim == 2:
        return act
    if act.ndim != 4:
        raise ValueError(f"activations must be (N, K) or (N, C, H, W), got {tuple(act.shape)}")
    if pooling == "pool":
        return act.mean(dim=(2, 3))
    return act.permute(0, 2, 3, 1).reshape(-1, act.shape[1])


def patches(images: Tensor, kernel: int = 3) -> Tensor:
    """All k x k x C patches (unpadded, stride 1) of float images (N, C, H, W) as rows (N * P, C * k * k), in the
    layout of a conv weight ``w.reshape(C_out, -1)``."""
    cols = F.unfold(images.double(), kernel)  # (N, C*k*k, P)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def patch_pca(images: Tensor, kernel: int = 3, max_patches: int | None = 200_000,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of the covariance of the centred first-layer patches."""
    p = patches(images, kernel)
    if max_patches is not None and p.shape[0] > max_patches:
        idx = torch.randperm(p.shape[0], generator=generator)[:max_patches]
        p = p[idx]
    p = p - p.mean(dim=0, keepdim=True)
    cov = p.T @ p / max(p.shape[0] - 1, 1)
    vals, vecs = torch.linalg.eigh(cov)
    order = vals.argsort(descending=True)
    return vals[order], vecs[:, order]


def _unit_rows(w: Tensor) -> Tensor:
    w = w.reshape(w.shape[0], -1).double()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def in_out_deviation(student_w: Tensor, teacher_w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """(eps_in, eps_out), each (K_s, K_t): norms of the in-plane and out-of-plane parts of
    dw_jk = w_k/||w_k|| - w*_j/||w*_j||; ``basis`` (D, r) has orthonormal columns spanning X."""
    s, t = _unit_rows(student_w), _unit_rows(teacher_w)
    if s.shape[1] != t.shape[1] or basis.shape[0] != s.shape[1]:
        raise ValueError(f"weights of dimension {s.shape[1]} / {t.shape[1]} do not fit a basis of shape "
                         f"{tuple(basis.shape)}")
    u = basis.double()
    dw = s[:, None, :] - t[None, :, :]  # (K_s, K_t, D)
    inside = dw @ u @ u.T
    return inside.norm(dim=2), (dw - inside).norm(dim=2)


def projected_angles(student_w: Tensor, teacher_w: Tensor, basis: Tensor) -> Tensor:
    """(K_s, K_t) angles in degrees between Proj_U[w_k] and Proj_U[w*_j] (``basis`` (D, r) orthonormal columns)."""
    u = basis.double()
    ps = student_w.reshape(student_w.shape[0], -1).double() @ u
    pt = teacher_w.reshape(teacher_w.shape[0], -1).double() @ u
    cos = _unit_rows(ps) @ _unit_rows(pt).T
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two flat vectors (0 when either is constant)."""
    return float(normalized_correlation(a.reshape(-1, 1), b.reshape(-1, 1))[0, 0])
