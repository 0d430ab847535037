"""An AutoAttack-style evaluation suite: several complementary attacks, the worst case per image, and flags for
gradient masking.

The ``standard`` suite (``norm`` linf or l2): APGD-CE, APGD-T (targeted DLR towards the 9 most likely wrong
classes) and the gradient-free Square attack (5,000 queries); for l1: APGD-CE and APGD-T (5 targets) with the
L1 step (no gradient-free L1 member is implemented). An image counts as robust only when it is classified
correctly and no member found an adversarial example for it (every reported success is re-checked: the point is
inside the ball and the box and the model misclassifies it).

``sequential=True`` (default, cheap) attacks with each member only the images that survived the members before it,
as AutoAttack does. ``sequential=False`` runs every member on every correctly classified image, which also gives
each member's own robust accuracy.

Flags (a robust-looking model whose gradients cannot be trusted):

- ``gradient_free_beats_gradient``: the gradient-free member broke images that every gradient member missed, more
  than ``free_tol`` of all images (0.2%, AutoAttack's threshold).
- ``more_steps_weaker``: APGD-CE with all its iterations left more images robust than the same attack with a
  quarter of them (by more than ``step_tol``); with honest gradients more steps never hurt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .apgd import APGD, APGDT
from .base import Attack, eval_mode, norm_of
from .square import Square

SUITES = ("standard",)

__all__ = ["SUITES", "standard_suite", "run_suite"]


def standard_suite(eps: float, norm: str = "linf", *, steps: int = 100, queries: int = 5000,
                   n_targets: int | None = None, seed: int = 0) -> list[tuple[str, Attack]]:
    """The members of the standard suite, in the order they run: (name, attack)."""
    if norm not in ("linf", "l2", "l1"):
        raise ValueError(f"unknown norm {norm!r} for the suite; expected linf, l2 or l1")
    nt = n_targets if n_targets is not None else (5 if norm == "l1" else 9)
    members: list[tuple[str, Attack]] = [
        ("apgd-ce", APGD(eps, steps, norm, restarts=1, loss="ce", seed=seed)),
        ("apgd-t", APGDT(eps, steps, norm, n_targets=nt, seed=seed)),
    ]
    if norm in ("linf", "l2") and queries > 0:
        members.append(("square", Square(eps, queries, norm, seed=seed)))
    return members


GRADIENT_FREE = ("square",)


def _batches(n: int, bs: int) -> list[slice]:
    return [slice(s, min(s + bs, n)) for s in range(0, n, bs)]


def _attack_images(model: nn.Module, attack: Callable, x: Tensor, y: Tensor, idx: Tensor, eps: float, norm: str,
                   batch_size: int, progress: bool, desc: str) -> Tensor:
    """Which of the images ``idx`` the attack breaks (re-checked: feasible and misclassified). Bool (len(idx),)."""
    broken = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
    for sl in tqdm(_batches(idx.numel(), batch_size), desc=desc, leave=False, disable=not progress, unit="batch"):
        sub = idx[sl]
        xb, yb = x[sub], y[sub]
        res = attack(model, xb, yb)
        xa = res.x_adv.detach()
        d = (xa - xb).flatten(1)
        tol = eps * 1e-5 + 1e-6
        bad = (norm_of(d, norm) > eps + tol) | (xa.flatten(1).amin(1) < -1e-6) | (xa.flatten(1).amax(1) > 1 + 1e-6)
        if bool(bad.any()):
            raise RuntimeError(f"{attack!r} returned points outside the {norm} ball of radius {eps} or [0, 1]")
        with torch.no_grad():
            broken[sl] = model(xa).argmax(1) != yb
    return broken


def run_suite(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf", *, suite: str = "standard",
              steps: int = 100, queries: int = 5000, n_targets: int | None = None, seed: int = 0,
              sequential: bool = True, check_steps: bool = True, step_tol: float = 0.01, free_tol: float = 0.002,
              batch_size: int = 256,
              members: list[tuple[str, Attack]] | None = None, progress: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` on (x in [0, 1] or uint8, y) with the suite; returns the record (see the module doc).

    ``members`` overrides the suite's attacks (name, attack); a name in :data:`GRADIENT_FREE` marks a
    gradient-free member.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)} (--suite)")
    if x.dtype == torch.uint8:
        x = x.float().div(255.0)
    t_start = time.perf_counter()
    with eval_mode(model):  # every submodule's own mode is restored afterwards
        n = int(x.shape[0])
        with torch.no_grad():
            clean = torch.cat([model(x[sl]).argmax(1) == y[sl] for sl in _batches(n, batch_size)]) if n else \
                torch.zeros(0, dtype=torch.bool, device=x.device)
        mem = members if members is not None else standard_suite(eps, norm, steps=steps, queries=queries,
                                                                  n_targets=n_targets, seed=seed)
        broken_by: list[str | None] = [None] * n
        robust = clean.clone()
        rows = []
        gradient_broke = torch.zeros(n, dtype=torch.bool, device=x.device)
        free_broke = torch.zeros(n, dtype=torch.bool, device=x.device)
        for name, atk in mem:
            idx = (robust if sequential else clean).nonzero().squeeze(1)
            t0 = time.perf_counter()
            br = _attack_images(model, atk, x, y, idx, eps, norm, batch_size, progress, name) if idx.numel() else \
                torch.zeros(0, dtype=torch.bool, device=x.device)
            hit = torch.zeros(n, dtype=torch.bool, device=x.device)
            hit[idx[br]] = True
            new = hit & robust
            for i in new.nonzero().squeeze(1).tolist():
                broken_by[i] = name
            robust &= ~hit
            if name in GRADIENT_FREE:
                free_broke |= hit
            else:
                gradient_broke |= hit
            row = {"name": name, "attack": repr(atk), "attacked": int(idx.numel()), "broke": int(hit.sum()),
                   "new_breaks": int(new.sum()), "robust_acc_after": float(robust.float().mean()) if n else 0.0,
                   "seconds": time.perf_counter() - t0}
            if not sequential:
                row["robust_acc_alone"] = float((clean & ~hit).float().mean()) if n else 0.0
            rows.append(row)

        flags: dict[str, Any] = {}
        free_only = free_broke & ~gradient_broke & clean
        free_frac = float(free_only.float().mean()) if n else 0.0
        flags["gradient_free_beats_gradient"] = {
            "images": int(free_only.sum()), "fraction": free_frac, "flag": free_frac > free_tol, "tolerance": free_tol,
            "meaning": "a gradient-free attack broke images every gradient attack missed"}
        if check_steps and mem and mem[0][0] == "apgd-ce" and isinstance(mem[0][1], APGD):
            long_atk = mem[0][1]
            short_steps = max(long_atk.steps // 4, 1)
            short = APGD(long_atk.eps, short_steps, long_atk.norm, restarts=1, loss=long_atk.loss, seed=seed)
            cidx = clean.nonzero().squeeze(1)
            br_short = _attack_images(model, short, x, y, cidx, eps, norm, batch_size, progress, "apgd-ce-short") \
                if cidx.numel() else torch.zeros(0, dtype=torch.bool, device=x.device)
            hit_s = torch.zeros(n, dtype=torch.bool, device=x.device)
            hit_s[cidx[br_short]] = True
            if sequential:  # the long run's own accuracy: it ran first, on every correctly classified image
                acc_long = rows[0]["robust_acc_after"]
            else:
                acc_long = rows[0]["robust_acc_alone"]
            acc_short = float((clean & ~hit_s).float().mean()) if n else 0.0
            new = hit_s & robust
            for i in new.nonzero().squeeze(1).tolist():
                broken_by[i] = "apgd-ce-short"
            robust &= ~hit_s
            flags["more_steps_weaker"] = {
                "steps": [short_steps, long_atk.steps], "robust_acc": [acc_short, acc_long],
                "flag": acc_long > acc_short + step_tol, "tolerance": step_tol,
                "meaning": "more attack iterations left more images robust"}
        masking = any(f["flag"] for f in flags.values())
        return {
            "suite": suite, "norm": norm, "eps": float(eps), "n": n, "sequential": sequential,
            "clean_acc": float(clean.float().mean()) if n else 0.0,
            "robust_acc": float(robust.float().mean()) if n else 0.0,
            "members": rows, "flags": flags, "gradient_masking_suspected": masking,
            "per_image": {"clean": clean.tolist(), "robust": robust.tolist(), "broken_by": broken_by},
            "seconds": time.perf_counter() - t_start,
        }
