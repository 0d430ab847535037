"""Model shapes, parameter counts against the published architectures, normalisation inside the model, and the
device-side augmentation against a brute-force reference."""

from __future__ import annotations

import pytest
import torch

from vision.augment import augment, random_crop
from vision.models import CIFAR10_MEAN, CIFAR10_STD, build_model

# Published parameter counts: WRN-34-10 46,160,474 and WRN-28-10 36,479,194 (TRADES / robust-overfitting code);
# CIFAR ResNet-18 11,173,962; the large MNIST net 1,974,762 (spec-003 Table 3.4); the small net
# 16*16+16 + 32*16*16+32 + 1568*100+100 + 100*10+10 = 166,406; PreActResNet-18 of the fast-AT code 11,171,146
# plus its final 512-channel batch norm (1,024 parameters).
COUNTS = {"wrn-34-10": 46_160_474, "wrn-28-10": 36_479_194, "resnet18": 11_173_962, "mnist_large": 1_974_762,
          "mnist_small": 166_406, "preact18": 11_172_170}


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts(name):
    ch = 1 if name.startswith("mnist") else 3
    m = build_model(name, 10, ch, 28 if ch == 1 else 32)
    assert sum(p.numel() for p in m.parameters()) == COUNTS[name]


@pytest.mark.parametrize("name,ch,size", [("mnist_small", 1, 28), ("mnist_small", 1, 8), ("mnist_large", 1, 28),
                                          ("preact18", 3, 32), ("resnet10", 3, 32), ("wrn-16-2", 3, 32),
                                          ("resnet10", 1, 28)])
def test_output_shapes_and_gradients(name, ch, size):
    m = build_model(name, 7, ch, size).eval()
    x = torch.rand(3, ch, size, size, requires_grad=True)
    out = m(x)
    assert out.shape == (3, 7)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_normalisation_is_inside_the_model():
    m = build_model("resnet10", 10, 3, 32).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(m(x), m.net((x - mean) / std))
    sd = m.state_dict()
    assert "normalize.mean" in sd and "normalize.std" in sd
    grey = build_model("mnist_small", 10, 1, 28)
    torch.testing.assert_close(grey.normalize.mean.flatten(), torch.tensor([0.1307]))


def test_bad_names():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 10)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model("wrn-30-10", 10)


def _is_crop_flip_of(out: torch.Tensor, img: torch.Tensor, pad: int) -> bool:
    """Brute force: is ``out`` some zero-padded window of ``img``, possibly mirrored?"""
    c, h, w = img.shape
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            win = padded[:, dy: dy + h, dx: dx + w]
            if torch.equal(win, out) or torch.equal(win.flip(2), out):
                return True
    return False


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_is_crop_and_flip(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (40, 3, 6, 7), generator=g).to(dtype)
    if dtype == torch.float32:
        x = x / 255
    out = augment(x, padding=2, flip=True, generator=g)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= float(x.max())
    assert all(_is_crop_flip_of(out[i], x[i], 2) for i in range(len(x)))
    assert not torch.equal(out, x)  # with 40 images some crop or flip moved something
    torch.testing.assert_close(augment(x, padding=0, flip=False), x)


def test_crop_offsets_cover_the_range():
    x = torch.zeros(400, 1, 5, 5)
    x[:, :, 2, 2] = 1  # a single bright pixel; its position after cropping reveals the offset
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    pos = {tuple(int(v) for v in (o[0] == 1).nonzero()[0]) for o in out}
    assert pos == {(r, c) for r in range(5) for c in range(5)}


def test_augment_on_cuda(cuda_device):
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device=cuda_device)
    out = augment(x, 4, True)
    assert out.device.type == "cuda" and out.dtype == torch.uint8 and out.shape == x.shape
    assert all(_is_crop_flip_of(out[i].cpu(), x[i].cpu(), 4) for i in range(4))
