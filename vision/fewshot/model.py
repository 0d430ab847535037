"""A few-shot learner: an embedding network and a head; building it from a config and loading a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import build_backbone, feature_dim
from .heads import Fitted, build_head

__all__ = ["FewShotModel", "build_fewshot_model", "load_fewshot_run"]


class FewShotModel(nn.Module):
    """``backbone`` embeds images (inputs in [0, 1]); ``head`` fits on support embeddings and scores queries."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def embed(self, x: Tensor) -> Tensor:
        """(B, n, C, H, W) images -> (B, n, d) embeddings (one backbone call for the whole batch)."""
        b, n = x.shape[:2]
        return self.backbone(x.reshape(b * n, *x.shape[2:])).view(b, n, -1)

    def fit(self, support_x: Tensor, support_y: Tensor, way: int) -> Fitted:
        """Fit the head on the support images of each task."""
        return self.head.fit(self.embed(support_x), support_y, way)

    def logits(self, fitted: Fitted, query_x: Tensor) -> Tensor:
        """(B, q, way) logits of the query images under the fitted heads."""
        return fitted(self.embed(query_x))

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, way: int) -> Tensor:
        return self.logits(self.fit(support_x, support_y, way), query_x)


def build_fewshot_model(cfg: Any, shape: tuple[int, int, int]) -> FewShotModel:
    """The model of a :class:`vision.fewshot.train.FewShotConfig` for images of shape (C, H, W)."""
    backbone = build_backbone(cfg.backbone, shape[0], width=cfg.width)
    dim = feature_dim(backbone, shape)
    head = build_head(cfg.head, dim, cfg.way, ridge_lambda=cfg.ridge_lambda, svm_cost=cfg.svm_cost,
                      svm_ridge=cfg.svm_ridge, maml_steps=cfg.maml_steps, maml_lr=cfg.maml_lr,
                      scale=getattr(cfg, "head_scale", 1.0))
    return FewShotModel(backbone, head)


def load_fewshot_run(run_dir: str | Path, device: str = "cpu") -> tuple[FewShotModel, Any, dict[str, Any]]:
    """The model of a finished ``advsim vision fewshot train`` run, in eval mode, with its config and metrics."""
    from data_loaders.rundir import load_weights, read_json

    from .train import FewShotConfig

    run_dir = Path(run_dir)
    cfg_path, met_path = run_dir / "config.json", run_dir / "metrics.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not a few-shot run directory (no config.json)")
    if not met_path.is_file():
        raise FileNotFoundError(f"{met_path}: the run has not finished (no metrics.json)")
    raw = read_json(cfg_path)
    try:
        cfg = FewShotConfig(**raw)
    except TypeError as exc:
        raise ValueError(f"{cfg_path}: not written by advsim vision fewshot train ({exc})") from exc
    metrics = read_json(met_path)
    shape = metrics.get("input_shape")
    if not shape:
        raise ValueError(f"{met_path}: lacks input_shape; not written by advsim vision fewshot train")
    model = build_fewshot_model(cfg, tuple(shape))
    wpath = run_dir / "weights.safetensors"
    try:
        model.load_state_dict(load_weights(wpath))
    except RuntimeError as exc:
        raise ValueError(f"{wpath}: does not fit the configured model: {exc}") from exc
    return model.to(device).eval(), cfg, metrics


def as_float(x: Tensor) -> Tensor:
    """uint8 images -> float in [0, 1] (float input is returned unchanged)."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x
