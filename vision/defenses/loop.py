"""The training loop shared by every defense: device-side batching of uint8 images, augmentation, learning-rate
schedules stepped per iteration, and mixed precision (bf16/fp16 autocast) on CUDA."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vision.augment import augment as augment_batch

SCHEDULES = ("cyclic", "piecewise", "cosine", "constant")


def lr_factor(schedule: str, total_steps: int, peak: float = 0.5) -> Callable[[int], float]:
    """Multiplier of the maximum learning rate at iteration ``step`` (0-based) of ``total_steps``.

    cyclic: linear 0 -> 1 over the first ``peak`` fraction, then 1 -> 0. piecewise: 1, /10 at 50% and 75%.
    cosine: 1 -> 0. constant: 1.
    """
    total = max(int(total_steps), 1)
    if schedule == "cyclic":
        up = max(peak * total, 1.0)

        def f(step: int) -> float:
            s = step + 1
            return s / up if s <= up else max(0.0, (total - s) / max(total - up, 1.0))
    elif schedule == "piecewise":
        def f(step: int) -> float:
            return 1.0 if step < 0.5 * total else (0.1 if step < 0.75 * total else 0.01)
    elif schedule == "cosine":
        def f(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    elif schedule == "constant":
        def f(step: int) -> float:
            return 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    return f


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD with momentum (weight decay on every parameter) or Adam."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")


def amp_dtype(amp: str, device: str) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, none on CPU; ``bf16``/``fp16`` force autocast (CUDA only); ``off`` disables it."""
    if amp == "off" or not device.startswith("cuda"):
        if amp in ("bf16", "fp16") and not device.startswith("cuda"):
            raise ValueError(f"mixed precision {amp!r} needs a CUDA device (got {device!r}); use --amp off")
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def train_epoch(model: nn.Module, defense: Callable, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, batch_size: int, *, pad: int = 0,
                flip: bool = False, dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                generator: torch.Generator | None = None, channels_last: bool = False,
                progress: bool = True, desc: str = "train") -> dict[str, float]:
    """One pass over (x uint8 (N, C, H, W), y) in shuffled batches on x's device; returns loss, acc, seconds."""
    model.train()
    device = x.device
    n = x.shape[0]
    perm = torch.randperm(n, device=device, generator=generator)
    starts = [s for s in range(0, n, batch_size) if min(batch_size, n - s) > 1]
    tot_loss = torch.zeros((), device=device)
    tot_correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    t0 = time.perf_counter()
    for s in tqdm(starts, desc=desc, leave=False, disable=not progress, unit="batch"):
        idx = perm[s: s + batch_size]
        xb = x[idx]
        if pad or flip:
            xb = augment_batch(xb, pad, flip, generator)
        xb = xb.float().div_(255.0)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[idx]
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, logits = defense(model, xb, yb)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        tot_loss += loss.detach() * len(idx)
        tot_correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"loss": float(tot_loss) / max(seen, 1), "acc": float(tot_correct) / max(seen, 1),
            "seconds": time.perf_counter() - t0}
