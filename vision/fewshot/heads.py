"""Few-shot classification heads: fit on the support embeddings of each task, classify query embeddings.

All heads work on a batch of tasks: support (B, n, d), support labels (B, n) in [0, way), query (B, q, d) ->
logits (B, q, way). ``fit`` returns a :class:`Fitted` head (class weights, or prototypes) that keeps the autograd
graph to the support embeddings, so the meta-gradient flows through the base learner; ``Fitted.detach()`` freezes
it (used while attacking the query set).

- ``ridge`` (R2-D2): ``W = S^T (S S^T + lambda I)^{-1} Y`` (the n x n dual form), logits ``scale * Q W``.
- ``proto`` (ProtoNet): class means; logits ``-scale * ||q - p_k||^2 / d``.
- ``svm`` (MetaOptNet): the Crammer-Singer SVM of :mod:`vision.fewshot.svm_qp`, ``W = S^T alpha``.
- ``maml`` (MAML with an FC-only inner loop): ``steps`` SGD steps of size ``lr`` on the support cross-entropy,
  from a meta-learned initialisation (W0, b0) of the linear layer; second order (the steps are differentiated)
  when the graph is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .svm_qp import cs_svm_alpha

HEADS = ("ridge", "proto", "svm", "maml")

__all__ = ["HEADS", "Fitted", "RidgeHead", "ProtoHead", "SVMHead", "MAMLHead", "build_head", "ridge_weights"]


@dataclass
class Fitted:
    """A head fitted on the support set: linear (``weight`` (B, d, way), ``bias`` (B, 1, way) or None) or
    prototype (``prototypes`` (B, way, d)); ``scale`` multiplies the logits."""

    scale: Tensor
    weight: Tensor | None = None
    bias: Tensor | None = None
    prototypes: Tensor | None = None

    def __call__(self, query: Tensor) -> Tensor:
        if self.prototypes is not None:
            d2 = (query.unsqueeze(2) - self.prototypes.unsqueeze(1)).pow(2).sum(-1)
            return -self.scale * d2 / query.shape[-1]
        out = query @ self.weight
        if self.bias is not None:
            out = out + self.bias
        return self.scale * out

    def detach(self) -> Fitted:
        def d(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach()

        return Fitted(d(self.scale), d(self.weight), d(self.bias), d(self.prototypes))


def _check(support: Tensor, labels: Tensor, way: int) -> None:
    if support.dim() != 3 or labels.shape != support.shape[:2]:
        raise ValueError(f"support must be (B, n, d) with labels (B, n); got {tuple(support.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= way):
        raise ValueError(f"support labels must lie in [0, {way}), got [{int(labels.min())}, {int(labels.max())}]")


def ridge_weights(support: Tensor, labels: Tensor, way: int, lam: float) -> Tensor:
    """``S^T (S S^T + lam I)^{-1} Y`` for each task: (B, d, way)."""
    n = support.shape[1]
    onehot = F.one_hot(labels, way).to(support.dtype)
    gram = support @ support.transpose(1, 2) + lam * torch.eye(n, dtype=support.dtype, device=support.device)
    return support.transpose(1, 2) @ torch.linalg.solve(gram, onehot)


class _Head(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, support: Tensor, labels: Tensor, query: Tensor, way: int) -> Tensor:
        return self.fit(support, labels, way)(query)


class RidgeHead(_Head):
    """R2-D2's differentiable ridge regression (regulariser ``lam``; the reference code uses 50)."""

    name = "ridge"

    def __init__(self, lam: float = 50.0, scale: float = 1.0) -> None:
        super().__init__(scale)
        if lam <= 0:
            raise ValueError(f"ridge lambda must be > 0, got {lam}")
        self.lam = float(lam)

    def fit(self, support: Tensor, labels: Tensor, way: int) -> Fitted:
        _check(support, labels, way)
        return Fitted(self.scale, weight=ridge_weights(support, labels, way, self.lam))


class ProtoHead(_Head):
    """Prototypical networks: squared Euclidean distance to the class means, divided by the dimension."""

    name = "proto"

    def fit(self, support: Tensor, labels: Tensor, way: int) -> Fitted:
        _check(support, labels, way)
        onehot = F.one_hot(labels, way).to(support.dtype)
        counts = onehot.sum(1).clamp_min(1).unsqueeze(2)
        return Fitted(self.scale, prototypes=onehot.transpose(1, 2) @ support / counts)


class SVMHead(_Head):
    """MetaOptNet's multiclass (Crammer-Singer) SVM with cost ``C`` and dual ridge ``ridge``."""

    name = "svm"

    def __init__(self, cost: float = 0.1, ridge: float = 1.0, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.cost, self.ridge = float(cost), float(ridge)

    def fit(self, support: Tensor, labels: Tensor, way: int) -> Fitted:
        _check(support, labels, way)
        gram = support @ support.transpose(1, 2)
        alpha = cs_svm_alpha(gram, labels, way, self.cost, self.ridge)
        return Fitted(self.scale, weight=support.transpose(1, 2) @ alpha)


class MAMLHead(_Head):
    """MAML restricted to the last layer: ``steps`` SGD steps (size ``lr``) on the mean support CE of each task,
    from a meta-learned initialisation (W0, b0).

    ``second_order`` differentiates through the inner steps (the "original MAML" outer gradient); otherwise the
    first-order approximation is used (the adapted weights depend on (W0, b0) through the identity). Under
    ``torch.no_grad`` (evaluation) the inner steps still run, and the result is detached.
    """

    name = "maml"

    def __init__(self, dim: int, way: int, steps: int = 10, lr: float = 0.01, second_order: bool = True,
                 scale: float = 1.0) -> None:
        super().__init__(scale)
        self.way, self.steps, self.lr, self.second_order = int(way), int(steps), float(lr), bool(second_order)
        self.weight0 = nn.Parameter(torch.zeros(dim, way))
        self.bias0 = nn.Parameter(torch.zeros(way))

    def fit(self, support: Tensor, labels: Tensor, way: int) -> Fitted:
        _check(support, labels, way)
        if way != self.way:
            raise ValueError(f"this MAML head was built for {self.way}-way tasks, got {way}-way (--way)")
        b, n = support.shape[:2]
        track = torch.is_grad_enabled()
        graph = track and self.second_order
        w = self.weight0.unsqueeze(0).expand(b, -1, -1)
        bias = self.bias0.view(1, 1, -1).expand(b, 1, -1)
        feats = support if graph else support.detach()
        with torch.enable_grad():
            for _ in range(self.steps):
                wi = w if graph else w.detach().requires_grad_(True)
                bi = bias if graph else bias.detach().requires_grad_(True)
                logits = self.scale * (feats @ wi + bi)
                loss = F.cross_entropy(logits.reshape(-1, way), labels.reshape(-1), reduction="sum") / b / n
                gw, gb = torch.autograd.grad(loss, (wi, bi), create_graph=graph)
                w, bias = w - self.lr * gw, bias - self.lr * gb
        if not track:
            w, bias = w.detach(), bias.detach()
        return Fitted(self.scale, weight=w, bias=bias)


def build_head(name: str, dim: int, way: int, *, ridge_lambda: float = 50.0, svm_cost: float = 0.1,
               svm_ridge: float = 1.0, maml_steps: int = 10, maml_lr: float = 0.01, scale: float = 1.0) -> _Head:
    """A head by name (see :data:`HEADS`); ``scale`` is the initial value of the learnable logit scale."""
    if name == "ridge":
        return RidgeHead(ridge_lambda, scale=scale)
    if name == "proto":
        return ProtoHead(scale)
    if name == "svm":
        return SVMHead(svm_cost, svm_ridge, scale=scale)
    if name == "maml":
        return MAMLHead(dim, way, maml_steps, maml_lr, scale=scale)
    raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)} (--head)")
