"""Image classifiers: the small/large convolutional nets of the specs, PreActResNet-18, Wide ResNets, ResNet-10/18
and MobileNetV2 (CIFAR variant).

Every model takes inputs in [0, 1] and normalises them inside (per-channel mean and std held as buffers), so
attacks, epsilons and clipping all live in pixel space. ``build_model(name, num_classes, in_channels, image_size)``
is the one entry point; :data:`MODELS` lists the names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers saved with the weights."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class NormalizedModel(nn.Module):
    """``net(normalize(x))``: the wrapper every builder returns. ``.net`` is the bare network."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"image size {size} is too small for this network")
    return out


def mnist_small(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Conv(16, 4x4, s2, p1)-ReLU-Conv(32, 4x4, s2, p1)-ReLU-FC(100)-ReLU-FC (the spec's small conv net)."""
    s = _conv_out(_conv_out(image_size, 4, 2, 1), 4, 2, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * s * s, 100), nn.ReLU(), nn.Linear(100, num_classes))


def mnist_large(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Conv(32,3x3,s1)-Conv(32,4x4,s2)-Conv(64,3x3,s1)-Conv(64,4x4,s2)-FC512-FC512-FC (padding 1, ReLUs)."""
    s = _conv_out(_conv_out(image_size, 4, 2, 1), 4, 2, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(64 * s * s, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, num_classes))


def mnist_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Conv(16,4x4,s1,p1)-ReLU-Conv(32,4x4,s1,p1)-ReLU-FC(100)-FC: spec-002 Table 4.2's net (FC input 21632 at 28x28;
    no activation between the two FC layers, as the table lists none)."""
    s = _conv_out(_conv_out(image_size, 4, 1, 1), 4, 1, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * s * s, 100), nn.Linear(100, num_classes))


def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 512) -> nn.Module:
    """Flatten-FC(width)-ReLU-FC(width)-ReLU-FC: a network without convolutions (spec-002 ch. 6 architecture pairs)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))


def without_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` with every BatchNorm layer replaced by the identity (the BN-free variants of spec-002 ch. 3-4)."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.Identity())
        else:
            without_batchnorm(child)
    return net


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, drop: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.drop = drop
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop > 0:
            out = F.dropout(out, self.drop, self.training)
        return self.conv2(out) + skip


class PreActResNet(nn.Module):
    """Pre-activation ResNet with ``blocks`` basic blocks per stage (18 layers: (2, 2, 2, 2))."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3,
                 width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(PreActBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class BasicBlock(nn.Module):
    """Post-activation basic block (conv-BN-ReLU-conv-BN + shortcut, ReLU)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of basic blocks; ``blocks=(1, 1, 1, 1)`` is ResNet-10, ``(2, 2, 2, 2)`` ResNet-18."""

    def __init__(self, blocks: tuple[int, ...] = (1, 1, 1, 1), num_classes: int = 10, in_channels: int = 3,
                 width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.stem(x))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class WideResNet(nn.Module):
    """Wide ResNet-``depth``-``widen`` (depth = 6n + 4): three stages of n pre-activation blocks, 16k/32k/64k wide."""

    def __init__(self, depth: int = 34, widen: int = 10, num_classes: int = 10, in_channels: int = 3,
                 drop: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 (e.g. 28, 34), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            for j in range(n):
                layers.append(PreActBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1, drop=drop))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand - 3x3 depthwise (stride) - 1x1 linear projection, each with batch norm.

    Stride-1 blocks add a shortcut (identity, or a 1x1 conv + BN when the width changes), as in the CIFAR
    MobileNetV2 of the ARD experiments; stride-2 blocks have none.
    """

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        mid = expansion * cin
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride != 1:
            return out
        return out + (self.shortcut(x) if self.shortcut is not None else x)


class MobileNetV2(nn.Module):
    """MobileNetV2, CIFAR variant (stride-1 stem and second stage; 2,296,922 parameters for 10 classes)."""

    # (expansion, width, blocks, stride of the first block)
    CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        layers, cin = [], 32
        for expansion, cout, n, stride in self.CFG:
            for j in range(n):
                layers.append(InvertedResidual(cin, cout, expansion, stride if j == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(cin, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _parse_wrn(name: str) -> tuple[int, int]:
    parts = name.split("-")
    try:
        return int(parts[1]), int(parts[2])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"Wide ResNet name must look like 'wrn-34-10' (depth-width), got {name!r}") from exc


MODELS = ("mnist_small", "mnist_large", "preact18", "resnet10", "resnet18", "mobilenetv2", "wrn-34-10",
          "wrn-28-10", "mnist_cnn", "mlp", "resnet10-nobn", "preact18-nobn")


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> NormalizedModel:
    """Build model ``name`` (see :data:`MODELS`; any ``wrn-<depth>-<width>`` works) wrapped with normalisation.

    ``mean``/``std`` default to the CIFAR-10 statistics for 3 channels and the MNIST ones for 1 channel.
    """
    key = name.lower().replace("_", "-")
    if key == "mnist-small":
        net = mnist_small(num_classes, in_channels, image_size)
    elif key == "mnist-large":
        net = mnist_large(num_classes, in_channels, image_size)
    elif key in ("preact18", "preactresnet18", "preact-resnet18"):
        net = PreActResNet((2, 2, 2, 2), num_classes, in_channels)
    elif key == "resnet10":
        net = ResNet((1, 1, 1, 1), num_classes, in_channels)
    elif key == "resnet18":
        net = ResNet((2, 2, 2, 2), num_classes, in_channels)
    elif key in ("mobilenetv2", "mnv2", "mobilenet-v2"):
        net = MobileNetV2(num_classes, in_channels)
    elif key == "mnist-cnn":
        net = mnist_cnn(num_classes, in_channels, image_size)
    elif key == "mlp":
        net = mlp(num_classes, in_channels, image_size)
    elif key == "resnet10-nobn":
        net = without_batchnorm(ResNet((1, 1, 1, 1), num_classes, in_channels))
    elif key == "preact18-nobn":
        net = without_batchnorm(PreActResNet((2, 2, 2, 2), num_classes, in_channels))
    elif key.startswith("wrn-"):
        depth, widen = _parse_wrn(key)
        net = WideResNet(depth, widen, num_classes, in_channels)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (or wrn-<depth>-<width>)")
    if mean is None or std is None:
        if in_channels == 3:
            mean, std = CIFAR10_MEAN, CIFAR10_STD
        elif in_channels == 1:
            mean, std = MNIST_MEAN, MNIST_STD
        else:
            mean, std = (0.5,) * in_channels, (0.5,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
    return NormalizedModel(net, tuple(mean), tuple(std))
