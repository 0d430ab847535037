"""Valuation models: normalised input windows ``(B, W, C)`` (or SWA-only ``(B, W)``) -> logits ``(B, 3)``.

``C`` channels come from the feature adapters (``lobsim.adapters``; SWA alone is the thesis input, C = 1). A
``(B, W)`` input is the same as ``(B, W, 1)``, and a C = 1 model computes exactly what the SWA-only models always
did (same parameters, same state-dict keys). The MLP flattens the pooled window time-major ``(W' x C)``; the
LSTM reads C features per step.

Presets: ``paper`` (thesis sizes: Linear W->3, MLP 4 x 8,000 ReLU, LSTM 3 x 100 on the raw per-step sequence)
and ``small`` (fits a 2-core CPU: MLP 2 x 256, LSTM that average-pools the window by 20 then 1 layer of 32).
Pooling is a layer of the model, so attacks differentiate through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

KINDS = ("linear", "mlp", "lstm")
PRESETS = ("paper", "small")
N_CLASSES = 3

_PRESET_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("linear", "paper"): {"pool": 1},
    ("linear", "small"): {"pool": 1},
    ("mlp", "paper"): {"pool": 1, "hidden": [8000, 8000, 8000, 8000]},
    ("mlp", "small"): {"pool": 1, "hidden": [256, 256]},
    ("lstm", "paper"): {"pool": 1, "hidden": [100], "layers": 3},
    ("lstm", "small"): {"pool": 20, "hidden": [32], "layers": 1},
}


@dataclass
class ModelConfig:
    """Which model and how big. ``None`` fields take the preset's value (see ``resolved``).

    ``pool``: average-pool the window by this factor first (the oldest ``W % pool`` steps are dropped).
    ``hidden``: MLP hidden widths, or ``[hidden_size]`` for the LSTM; ``layers``: LSTM layers.
    ``dropout``: after every MLP hidden layer / between LSTM layers. ``channels``: input channels per step (C).
    """

    kind: str = "mlp"
    preset: str = "small"
    window: int = 6000
    pool: int | None = None
    hidden: list[int] | None = None
    layers: int | None = None
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    channels: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ModelConfig: kind must be one of {KINDS}, got {self.kind!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"ModelConfig: preset must be one of {PRESETS}, got {self.preset!r}")
        if self.window < 1:
            raise ValueError(f"ModelConfig: window must be >= 1, got {self.window}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.channels < 1:
            raise ValueError(f"ModelConfig: channels must be >= 1, got {self.channels}")

    def resolved(self) -> ModelConfig:
        """A copy with every ``None`` replaced by the preset's value (what is stored with a trained model)."""
        d = _PRESET_DEFAULTS[(self.kind, self.preset)]
        out = replace(
            self,
            pool=self.pool if self.pool is not None else d["pool"],
            hidden=list(self.hidden) if self.hidden is not None else list(d.get("hidden", [])),
            layers=self.layers if self.layers is not None else d.get("layers", 0),
        )
        if out.pool < 1 or out.pool > out.window:
            raise ValueError(f"ModelConfig: pool must be in [1, window={out.window}], got {out.pool}")
        if out.kind == "lstm" and (len(out.hidden) != 1 or out.layers < 1):
            raise ValueError(f"ModelConfig: an LSTM needs hidden=[size] and layers >= 1, got {out.hidden} {out.layers}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**d)


class AvgPool(nn.Module):
    """Average-pool ``(B, W)`` or ``(B, W, C)`` by ``factor`` over time -> ``(B, W // factor[, C])``, dropping the
    oldest ``W % factor`` steps."""

    def __init__(self, window: int, factor: int) -> None:
        super().__init__()
        self.window, self.factor = window, factor
        self.keep = (window // factor) * factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return x
        x = x[:, x.shape[1] - self.keep :]
        return x.reshape(x.shape[0], self.keep // self.factor, self.factor, *x.shape[2:]).mean(dim=2)


def _check_input(x: torch.Tensor, window: int, channels: int) -> torch.Tensor:
    """``(B, W)`` -> itself when C = 1; ``(B, W, C)`` -> itself, or ``(B, W)`` when C = 1 (one code path)."""
    if x.dim() == 3:
        if x.shape[1:] != (window, channels):
            raise ValueError(f"model: input {tuple(x.shape)} does not match window {window} x {channels} channel(s)")
        return x[..., 0] if channels == 1 else x
    if x.dim() != 2 or channels != 1 or x.shape[1] != window:
        raise ValueError(f"model: input {tuple(x.shape)} does not match window {window} x {channels} channel(s)")
    return x


class MLPModel(nn.Module):
    """Pool -> flatten -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear(., 3). ``hidden=[]``: linear model."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.window, self.channels = cfg.window, cfg.channels
        self.pool = AvgPool(cfg.window, cfg.pool)
        layers: list[nn.Module] = []
        width = (cfg.window // cfg.pool) * cfg.channels
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        layers.append(nn.Linear(width, N_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(_check_input(x, self.window, self.channels))
        return self.net(x if x.dim() == 2 else x.flatten(1))


class LSTMModel(nn.Module):
    """Pool -> LSTM over the C-feature sequence -> Linear(last hidden state of the top layer, 3)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.window, self.channels = cfg.window, cfg.channels
        self.pool = AvgPool(cfg.window, cfg.pool)
        self.lstm = nn.LSTM(
            input_size=cfg.channels,
            hidden_size=cfg.hidden[0],
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden[0], N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.pool(_check_input(x, self.window, self.channels))
        seq = seq.unsqueeze(-1) if seq.dim() == 2 else seq
        _, (h, _) = self.lstm(seq)
        return self.head(h[-1])


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``cfg`` (presets resolved): ``(B, window, channels)`` (or ``(B, window)``) -> logits ``(B, 3)``."""
    cfg = cfg.resolved()
    if cfg.kind == "linear":
        return MLPModel(replace(cfg, hidden=[]))
    if cfg.kind == "mlp":
        if not cfg.hidden:
            raise ValueError("ModelConfig: an MLP needs at least one hidden layer")
        return MLPModel(cfg)
    return LSTMModel(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode with every dropout probability 0, restored on exit.

    cuDNN LSTMs cannot run backward in eval mode; attacks differentiate through the model in this mode,
    which computes exactly the eval-mode function (the models have no batch-norm).
    """
    training = {m: m.training for m in model.modules()}
    saved: list[tuple[nn.Module, str, float]] = []
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            saved.append((m, "p", m.p))
            m.p = 0.0
        elif isinstance(m, nn.RNNBase):
            saved.append((m, "dropout", m.dropout))
            m.dropout = 0.0
    model.train()
    try:
        yield model
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)
        for m, flag in training.items():
            m.training = flag
