"""Embedding networks of the few-shot learners; inputs in [0, 1], normalised inside, output (N, d) features.

- ``conv4``: ProtoNet's four blocks of conv3x3 (``width`` channels) - BN - activation - maxpool 2.
- ``r2d2``: R2-D2's embedding: four conv3x3 - BN - maxpool - activation blocks of 96, 192, 384, 512 channels,
  dropout in the last two, features of the last two blocks concatenated.
- ``resnet12``: MetaOptNet's ResNet-12: four residual blocks (three conv3x3-BN-activation each, 1x1 shortcut,
  maxpool 2) of 64, 160, 320, 640 channels, flattened without average pooling (DropBlock replaced by dropout).

The activation is LeakyReLU(0.1) by default (the adversarial-querying code's choice for R2-D2 and ProtoNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision.models import Normalize

BACKBONES = ("conv4", "r2d2", "resnet12")

__all__ = ["BACKBONES", "build_backbone", "Embedding", "feature_dim"]


def _act(name: str) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1)
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; choose leaky_relu or relu")


class Conv4(nn.Module):
    def __init__(self, in_channels: int, width: int = 64, activation: str = "leaky_relu") -> None:
        super().__init__()
        layers, cin = [], in_channels
        for _ in range(4):
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), _act(activation),
                       nn.MaxPool2d(2)]
            cin = width
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.net(x), 1)


class R2D2Embedding(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, ...] = (96, 192, 384, 512),
                 activation: str = "leaky_relu", drop: tuple[float, ...] = (0.0, 0.0, 0.3, 0.4)) -> None:
        super().__init__()
        blocks, cin = [], in_channels
        for w, p in zip(widths, drop):
            blocks.append(nn.Sequential(nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                        nn.MaxPool2d(2), _act(activation), nn.Dropout(p)))
            cin = w
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return torch.cat([torch.flatten(feats[-2], 1), torch.flatten(feats[-1], 1)], dim=1)


class ResBlock12(nn.Module):
    def __init__(self, cin: int, cout: int, activation: str, drop: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c, cout, 3, padding=1, bias=False) for c in (cin, cout, cout)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(cout) for _ in range(3)])
        self.act = _act(activation)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            out = bn(conv(out))
            if i < 2:
                out = self.act(out)
        out = F.max_pool2d(self.act(out + self.shortcut(x)), 2)
        return F.dropout(out, self.drop, self.training) if self.drop > 0 else out


class ResNet12(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, ...] = (64, 160, 320, 640),
                 activation: str = "leaky_relu", drop: float = 0.1) -> None:
        super().__init__()
        blocks, cin = [], in_channels
        for w in widths:
            blocks.append(ResBlock12(cin, w, activation, drop))
            cin = w
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.blocks(x), 1)


class Embedding(nn.Module):
    """``net(normalize(x))`` for images in [0, 1]."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def build_backbone(name: str, in_channels: int, *, width: int = 64, activation: str = "leaky_relu",
                   mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Embedding:
    """The embedding ``name`` (see :data:`BACKBONES`); ``width`` sets conv4's channels."""
    if name == "conv4":
        net = Conv4(in_channels, width, activation)
    elif name == "r2d2":
        net = R2D2Embedding(in_channels, activation=activation)
    elif name == "resnet12":
        net = ResNet12(in_channels, activation=activation)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} (--backbone)")
    mean = mean or (0.5,) * in_channels
    std = std or (0.5,) * in_channels
    return Embedding(net, tuple(mean), tuple(std))


def feature_dim(backbone: nn.Module, shape: tuple[int, int, int]) -> int:
    """Output dimension of ``backbone`` for images of shape (C, H, W)."""
    was = backbone.training
    backbone.eval()
    try:
        p = next(backbone.parameters())
        with torch.no_grad():
            return int(backbone(torch.zeros(1, *shape, device=p.device)).shape[1])
    finally:
        backbone.train(was)
