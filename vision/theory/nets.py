"""Small networks for the theory experiments, each exposing its post-ReLU activations per layer.

- :class:`ConvReLUNet`: the teacher/student conv nets of spec-001 (3x3 kernels; the first conv unpadded and
  stride 1, so its inputs are exactly the k x k x C patches the patch PCA sees; then padded convs, strides
  ``strides``), global average pooling and a linear head. No batch norm.
- :class:`MLP`: Flatten, ``depth - 1`` ReLU hidden layers of ``width``, a linear head (spec-000 ch. 6 MLPs,
  spec-004's exact-singular-value sanity nets).
- :class:`SmallConvNet`: conv(w)-ReLU-pool-conv(2w)-ReLU-pool-conv(4w)-ReLU-pool-linear (the "simple ConvNet" of
  the NTK width sweep).
- :class:`TwoLayer`: x -> V^T relu(W [x; 1]) with weights and biases as spec-001's two-layer notation.

Every builder returns the bare net; :func:`wrap` adds :class:`vision.models.NormalizedModel` so inputs stay in
[0, 1] pixel space like every other vision model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision.models import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, NormalizedModel

__all__ = ["ConvReLUNet", "MLP", "SmallConvNet", "TwoLayer", "wrap", "activations", "conv_layers"]


class ConvReLUNet(nn.Module):
    """3x3 conv-ReLU layers of ``widths`` channels (first unpadded), global average pooling, linear head."""

    def __init__(self, widths: tuple[int, ...], in_channels: int = 1, num_classes: int = 10,
                 strides: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"conv widths must be positive, got {widths}")
        strides = strides or tuple(2 if i in (1, 2) else 1 for i in range(len(widths)))
        if len(strides) != len(widths):
            raise ValueError(f"need one stride per conv layer: {len(widths)} widths, {len(strides)} strides")
        self.widths, self.strides = tuple(int(w) for w in widths), tuple(int(s) for s in strides)
        convs, cin = [], in_channels
        for i, (w, s) in enumerate(zip(self.widths, self.strides)):
            convs.append(nn.Conv2d(cin, w, 3, stride=s, padding=0 if i == 0 else 1))
            cin = w
        self.convs = nn.ModuleList(convs)
        self.head = nn.Linear(cin, num_classes)

    def activations(self, x: Tensor) -> list[Tensor]:
        """Post-ReLU activations of every conv layer, then the logits."""
        out = []
        for conv in self.convs:
            x = F.relu(conv(x))
            out.append(x)
        out.append(self.head(x.mean(dim=(2, 3))))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.activations(x)[-1]


class MLP(nn.Module):
    """Flatten, ``depth - 1`` hidden ReLU layers of ``width`` (or the widths in ``widths``), a linear head."""

    def __init__(self, in_features: int, num_classes: int = 10, width: int = 64, depth: int = 3,
                 widths: tuple[int, ...] | None = None) -> None:
        super().__init__()
        widths = tuple(widths) if widths is not None else (width,) * (depth - 1)
        if depth < 1 or (widths and min(widths) < 1):
            raise ValueError(f"MLP needs depth >= 1 and positive widths, got depth={depth}, widths={widths}")
        dims = (in_features, *widths, num_classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def activations(self, x: Tensor) -> list[Tensor]:
        """Post-ReLU activations of every hidden layer, then the logits."""
        x = x.flatten(1)
        out = []
        for i, lin in enumerate(self.layers):
            x = lin(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.activations(x)[-1]


class SmallConvNet(nn.Module):
    """Three conv(3x3, pad 1)-ReLU-maxpool(2) stages of width w, 2w, 4w, then a linear head."""

    def __init__(self, width: int = 16, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, width, 3, padding=1),
                                    nn.Conv2d(width, 2 * width, 3, padding=1),
                                    nn.Conv2d(2 * width, 4 * width, 3, padding=1)])
        s = image_size
        for _ in range(3):
            s //= 2
        if s < 1:
            raise ValueError(f"image size {image_size} is too small for three 2x2 poolings")
        self.head = nn.Linear(4 * width * s * s, num_classes)

    def activations(self, x: Tensor) -> list[Tensor]:
        out = []
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
            out.append(x)
        out.append(self.head(x.flatten(1)))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.activations(x)[-1]


class TwoLayer(nn.Module):
    """f(x) = V^T relu(W x + b): ``hidden`` ReLU nodes on d-dimensional inputs, ``out`` linear outputs."""

    def __init__(self, d: int, hidden: int, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, out, bias=False)

    def augmented_weights(self) -> Tensor:
        """(hidden, d + 1): rows w_j = [w~_j; b_j] of spec-001's notation (input x = [x~; 1])."""
        return torch.cat([self.fc1.weight, self.fc1.bias[:, None]], dim=1)

    def activations(self, x: Tensor) -> list[Tensor]:
        h = F.relu(self.fc1(x))
        return [h, self.fc2(h)]

    def forward(self, x: Tensor) -> Tensor:
        return self.activations(x)[-1]


def wrap(net: nn.Module, in_channels: int) -> NormalizedModel:
    """``net`` behind per-channel normalisation (MNIST statistics for 1 channel, CIFAR-10's for 3)."""
    if in_channels == 1:
        mean, std = MNIST_MEAN, MNIST_STD
    elif in_channels == 3:
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = (0.5,) * in_channels, (0.5,) * in_channels
    return NormalizedModel(net, mean, std)


def activations(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Per-layer activations of a (possibly normalised) theory net."""
    if isinstance(model, NormalizedModel):
        return model.net.activations(model.normalize(x))
    return model.activations(x)


def conv_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, nn.Module, int]]:
    """(name, layer, spatial input size) for every Conv2d and Linear of ``model`` in call order (one forward pass
    on zeros of ``input_shape`` (C, H, W) records the sizes)."""
    found: list[tuple[str, nn.Module, int]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        size = inp[0].shape[-1] if isinstance(mod, nn.Conv2d) else 1
        found.append((names[mod], mod, int(size)))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return found


def he_uniform_(model: nn.Module) -> nn.Module:
    """Uniform He initialisation of every conv/linear weight (biases zero), the NTK experiments' init."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = math.sqrt(6.0 / fan_in)
            with torch.no_grad():
                m.weight.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.zero_()
    return model
