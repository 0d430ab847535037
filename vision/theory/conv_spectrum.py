"""Singular values of convolution and linear layers, effective rank, and the RankMin / RankMax projections
(spec-000 section 4.4; spec-004's per-layer singular-value statistics).

A stride-1 convolution with circular padding on n x n inputs is a block-circulant operator; its singular values
are those of the n^2 matrices K^(u, v) = FFT2(kernel zero-padded to n x n)[:, :, u, v] (C_out x C_in each, Sedghi
et al. 2019). :func:`conv_singular_values` computes them; a test compares them with the SVD of the dense operator.
For zero-padded or strided convolutions the same numbers are the usual approximation (recorded as such).
:func:`project_conv_spectrum` applies a function to every singular value, rebuilds the operator and crops the kernel
back to its k x k support (Sedghi's "clip, then project the filter"); after the crop the operator is only
approximately the clipped one, so projections are applied repeatedly during training, as in the source.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "conv_singular_values", "conv_operator_matrix", "linear_singular_values", "reshaped_singular_values",
    "effective_rank", "project_conv_spectrum", "project_linear_spectrum", "rank_min", "rank_max",
    "layer_singular_values", "apply_rank_projection", "RANK_METHODS",
]

RANK_METHODS = ("rankmin", "rankmax")


def _check_kernel(weight: Tensor, n: int) -> None:
    if weight.ndim != 4:
        raise ValueError(f"a conv kernel must be (C_out, C_in, k, k), got {tuple(weight.shape)}")
    if n < max(weight.shape[-2:]):
        raise ValueError(f"input size {n} is smaller than the kernel {tuple(weight.shape[-2:])}")


def conv_singular_values(weight: Tensor, n: int) -> Tensor:
    """All n * n * min(C_out, C_in) singular values (descending, float64) of the circular convolution on n x n."""
    _check_kernel(weight, n)
    k = torch.fft.fft2(weight.detach().double(), s=(n, n))  # (C_out, C_in, n, n)
    sv = torch.linalg.svdvals(k.permute(2, 3, 0, 1))
    return sv.flatten().sort(descending=True).values


def conv_operator_matrix(weight: Tensor, n: int) -> Tensor:
    """The dense (C_out n^2, C_in n^2) matrix of ``conv2d`` with circular padding, stride 1 (the slow reference)."""
    _check_kernel(weight, n)
    c_in, k = weight.shape[1], weight.shape[-1]
    eye = torch.eye(c_in * n * n, dtype=torch.float64).reshape(-1, c_in, n, n)
    lo, hi = (k - 1) // 2, k // 2
    cols = F.conv2d(F.pad(eye, (lo, hi, lo, hi), mode="circular"), weight.detach().double())
    return cols.reshape(c_in * n * n, -1).T


def linear_singular_values(weight: Tensor) -> Tensor:
    """Singular values (descending, float64) of a linear layer's weight matrix."""
    return torch.linalg.svdvals(weight.detach().double())


def reshaped_singular_values(weight: Tensor) -> Tensor:
    """Singular values of a conv kernel reshaped to (C_out, C_in k k), the cheap alternative matrixisation."""
    return torch.linalg.svdvals(weight.detach().double().reshape(weight.shape[0], -1))


def effective_rank(sv: Tensor) -> float:
    """r(W) = ||W||_* / ||W||_F = sum(s) / sqrt(sum(s^2)) (0 for the zero operator)."""
    fro = float(sv.double().pow(2).sum().sqrt())
    return float(sv.double().sum()) / fro if fro > 0 else 0.0


def rank_min(threshold: float) -> Callable[[Tensor], Tensor]:
    """RankMin: singular values below ``threshold`` x the largest one become 0."""
    if not 0 <= threshold < 1:
        raise ValueError(f"the RankMin threshold is a fraction of the largest singular value in [0, 1), got "
                         f"{threshold}")

    def f(s: Tensor) -> Tensor:
        return torch.where(s >= threshold * s.max(), s, torch.zeros_like(s))
    return f


def rank_max(clip: float) -> Callable[[Tensor], Tensor]:
    """RankMax: singular values are clipped to ``clip`` x the largest one (min(s, c))."""
    if not 0 < clip <= 1:
        raise ValueError(f"the RankMax clip is a fraction of the largest singular value in (0, 1], got {clip}")

    def f(s: Tensor) -> Tensor:
        return torch.minimum(s, clip * s.max())
    return f


def project_conv_spectrum(weight: Tensor, n: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """A k x k kernel whose n x n circular operator has singular values ``fn(s)`` (exact before the crop)."""
    _check_kernel(weight, n)
    kh, kw = weight.shape[-2:]
    k = torch.fft.fft2(weight.detach().double(), s=(n, n)).permute(2, 3, 0, 1)
    u, s, vh = torch.linalg.svd(k, full_matrices=False)
    s2 = fn(s.flatten()).reshape(s.shape).to(u.dtype)
    full = torch.fft.ifft2(((u * s2.unsqueeze(-2)) @ vh).permute(2, 3, 0, 1)).real
    return full[:, :, :kh, :kw].to(weight.dtype)


def project_linear_spectrum(weight: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """U diag(fn(s)) V^T of a weight matrix."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return ((u * fn(s)) @ vh).to(weight.dtype)


def layer_singular_values(layers: list[tuple[str, nn.Module, int]], conv_mode: str = "fft") -> dict[str, Tensor]:
    """Singular values per layer (from :func:`vision.theory.nets.conv_layers`): linear exactly, conv by ``fft``
    (operator on the layer's input size) or ``reshape`` ((C_out, C_in k k) matrix)."""
    if conv_mode not in ("fft", "reshape"):
        raise ValueError(f"conv singular values are 'fft' or 'reshape', got {conv_mode!r}")
    out = {}
    for name, layer, size in layers:
        if isinstance(layer, nn.Conv2d):
            if conv_mode == "fft":
                out[name] = conv_singular_values(layer.weight, max(size, layer.weight.shape[-1]))
            else:
                out[name] = reshaped_singular_values(layer.weight)
        else:
            out[name] = linear_singular_values(layer.weight)
    return out


def apply_rank_projection(layers: list[tuple[str, nn.Module, int]], method: str, value: float) -> None:
    """Replace every conv/linear weight (in place) by its RankMin / RankMax projection."""
    if method not in RANK_METHODS:
        raise ValueError(f"unknown rank projection {method!r}; choose one of {', '.join(RANK_METHODS)}")
    fn = rank_min(value) if method == "rankmin" else rank_max(value)
    with torch.no_grad():
        for _, layer, size in layers:
            if isinstance(layer, nn.Conv2d):
                layer.weight.copy_(project_conv_spectrum(layer.weight, max(size, layer.weight.shape[-1]), fn))
            else:
                layer.weight.copy_(project_linear_spectrum(layer.weight, fn))
