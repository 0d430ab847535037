"""APGD (Croce & Hein): PGD with an automatic step-size schedule, for the Linf, L2 and L1 balls; CE or DLR loss;
and APGD-T, the targeted-DLR version that tries the most likely wrong classes in turn.

Linf and L2, per example:

- Checkpoints: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); checkpoint j is the
  iteration ceil(p_j * N) for a budget of N iterations.
- Start at x_0 (the clean input or a random point of the ball), step size eta = 2 * eps.
  x_1 = P(x_0 + eta * s(grad_0)), with s the steepest-ascent direction of the norm (sign, or normalised gradient).
- Then z = P(x_k + eta * s(grad_k)) and x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})) with momentum
  a = 0.75. The highest-loss point so far (x_max, f_max) is kept.
- At each checkpoint the step size is halved, and the iterate restarts from x_max (without momentum), if
  (1) the loss increased in fewer than rho = 0.75 of the steps since the previous checkpoint, or
  (2) the step size was not halved at the previous checkpoint and f_max has not grown since then.

L1 ("mind the box" APGD, Croce & Hein 2021), per example:

- The step moves the k coordinates of largest |gradient| that can still move in their gradient's direction
  without leaving [0, 1], each by eta / k, so the step has L1 length eta; then the exact projection onto the L1 ball
  intersected with the box. k starts at 20% of the input size and adapts: every max(1, 0.04 N) iterations
  k = (number of non-zero coordinates of x_max - x) / 1.5.
- Sparsity-adaptive step: eta starts at eps. At each such check, if the sparsity of x_max dropped below 95% of its
  value at the previous check, eta goes back to eps and the iterate restarts from x_max; otherwise eta /= 1.5,
  kept in [eps / 10, eps]. No momentum.
- Start: a Gaussian draw projected onto the ball and the box (a sparse point). By default the run is split in three
  stages with radii 3 eps, 2 eps, eps and 30% / 30% / 40% of the iterations, each stage starting from the previous
  stage's highest-loss point projected onto the smaller ball; only the last stage (radius eps) can succeed.

Every run keeps, per example, the first successful iterate (or the highest-loss one). With ``early_stop`` (the
default) an example leaves the batch as soon as it succeeds: every other example follows exactly the same
trajectory, and the attack does no work on examples already broken.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import Attack, AttackResult, best_over_restarts, is_success
from .losses import ce_loss, check_loss, dlr_loss, dlr_targeted_loss
from .pgd import make_generator
from .projections import project, project_l1_box
from .steps import check_norm, random_start

__all__ = ["APGD", "APGDT", "checkpoints", "l1_stages"]

# obj_fn(logits, idx) -> (objective to maximise, success), for the examples idx of the batch
ObjFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def checkpoints(n_iter: int) -> list[int]:
    """The iterations (1..n_iter) at which Linf/L2 APGD checks whether to halve its step size."""
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1.0:
            break
        p.append(nxt)
    out = sorted({math.ceil(round(q * n_iter, 6)) for q in p[1:]})  # round: 0.22 + 0.19 is not 0.41
    return [w for w in out if 0 < w <= n_iter]


def l1_stages(n_iter: int, eps_schedule: tuple[float, ...] | None) -> list[tuple[float, int]]:
    """(radius multiplier, iterations) per stage of L1 APGD: ``(3, 2, 1)`` gets 30% / 30% / the rest."""
    if not eps_schedule:
        return [(1.0, n_iter)]
    mults = [float(m) for m in eps_schedule]
    if mults[-1] != 1.0 or any(m <= 0 for m in mults):
        raise ValueError(f"the L1 eps schedule must be positive and end at 1, got {eps_schedule}")
    if len(mults) == 1:
        return [(1.0, n_iter)]
    early = [math.ceil(0.3 * n_iter) for _ in mults[:-1]] if len(mults) == 3 else \
        [math.ceil(0.6 * n_iter / (len(mults) - 1)) for _ in mults[:-1]]
    last = n_iter - sum(early)
    if last < 1 or any(e < 1 for e in early):
        return [(1.0, n_iter)]
    return list(zip(mults, [*early, last]))


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _loss_grad(model: nn.Module, x: Tensor, d: Tensor, fn: ObjFn, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    d = d.detach().requires_grad_(True)
    obj, succ = fn(model(x + d), idx)
    (grad,) = torch.autograd.grad(obj.sum(), d)
    return obj.detach(), grad.detach(), succ.detach()


class _Outputs:
    """Per-example result of one run (full batch): the first success, else the highest objective."""

    def __init__(self, d0: Tensor) -> None:
        b = d0.shape[0]
        self.d = d0.detach().clone()
        self.obj = torch.full((b,), -torch.inf, device=d0.device)
        self.succ = torch.zeros(b, dtype=torch.bool, device=d0.device)

    def update(self, act: Tensor, d: Tensor, obj: Tensor, succ: Tensor) -> None:
        old_s, old_o = self.succ[act], self.obj[act]
        upd = (succ & ~old_s) | ((succ == old_s) & (obj > old_o))
        if bool(upd.any()):
            sel = act[upd]
            self.d[sel] = d[upd]
            self.obj[sel] = obj[upd]
            self.succ[sel] = succ[upd]


class APGD(Attack):
    """APGD in the Linf, L2 or L1 ball with the cross-entropy or DLR loss.

    Args:
        eps: radius of the ball.
        steps: iterations N (each one forward and one backward pass).
        norm: ``linf``, ``l2`` or ``l1``.
        restarts: independent runs (random starts); the best per example is kept.
        random_start: start the first run at a random point of the ball (later restarts always do).
        targeted: ``y`` is the target class; the attack minimises its cross-entropy (CE loss only; for a targeted
            DLR attack that keeps the true label use :class:`APGDT`).
        loss: ``ce`` or ``dlr``.
        rho: fraction of loss-increasing steps required between checkpoints to keep the step size (Linf, L2).
        momentum: weight ``a`` of the new step against the previous displacement (Linf, L2).
        l1_eps_schedule: radius multipliers of the L1 stages (default ``(3, 2, 1)``; ``None`` or ``(1,)``: one stage).
        l1_topk: initial fraction of coordinates moved by an L1 step.
        early_stop: drop an example from the batch once it succeeded (same trajectories for the others).
        seed: seed for the random starts.
        use_eval_mode: attack the model in eval mode (restored afterwards).
    """

    def __init__(
        self,
        eps: float,
        steps: int = 100,
        norm: str = "linf",
        restarts: int = 1,
        random_start: bool = True,
        targeted: bool = False,
        *,
        loss: str = "ce",
        rho: float = 0.75,
        momentum: float = 0.75,
        l1_eps_schedule: tuple[float, ...] | None = (3.0, 2.0, 1.0),
        l1_topk: float = 0.2,
        early_stop: bool = True,
        seed: int | None = None,
        use_eval_mode: bool = True,
    ) -> None:
        super().__init__(targeted=targeted, use_eval_mode=use_eval_mode)
        self.norm = check_norm(norm)
        if eps < 0 or steps < 1 or restarts < 1:
            raise ValueError(f"need eps >= 0, steps >= 1, restarts >= 1; got {eps}, {steps}, {restarts}")
        self.loss = check_loss(loss)
        if targeted and loss == "dlr":
            raise ValueError("targeted APGD supports the ce loss; for targeted DLR use APGDT (it keeps the labels)")
        if not 0 < l1_topk <= 1:
            raise ValueError(f"l1_topk is a fraction of the coordinates in (0, 1], got {l1_topk}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.random_start = bool(random_start)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.l1_eps_schedule = tuple(l1_eps_schedule) if l1_eps_schedule else None
        l1_stages(self.steps, self.l1_eps_schedule)  # validate
        self.l1_topk = float(l1_topk)
        self.early_stop = bool(early_stop)
        self.seed = seed

    # ---- the objective ----
    def objective_fn(self, y: Tensor) -> ObjFn:
        """``(logits, idx) -> (objective, success)`` for the labels (or targets) ``y`` of the whole batch."""
        targeted, loss = self.targeted, self.loss

        def fn(logits: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            yy = y[idx]
            obj = dlr_loss(logits, yy) if loss == "dlr" else ce_loss(logits, yy, targeted)
            return obj, is_success(logits.detach(), yy, targeted)

        return fn

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        gen = make_generator(self.seed, x.device)
        fn = self.objective_fn(y)

        def one(idx: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
            delta, obj, succ = self.run(model, x[idx], fn, idx, gen, random=self.random_start or r > 0)
            return (x[idx] + delta).clamp(0.0, 1.0), obj, succ

        return best_over_restarts(x, self.restarts, one)

    def run(self, model: nn.Module, x: Tensor, fn: ObjFn, idx: Tensor | None = None,
            gen: torch.Generator | None = None, random: bool = True,
            delta0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run on ``x`` (``idx``: where these examples sit in the batch ``fn`` knows); returns
        (delta, objective, success) of the returned point per example."""
        idx = torch.arange(x.shape[0], device=x.device) if idx is None else idx
        if self.norm == "l1":
            return self._run_l1(model, x, fn, idx, gen, random, delta0)
        if delta0 is None:
            delta0 = random_start(x, self.eps, self.norm, gen) if random else torch.zeros_like(x)
        return self._run_lp(model, x, fn, idx, delta0)

    # ---- Linf / L2 ----
    def _run_lp(self, model: nn.Module, x: Tensor, fn: ObjFn, idx: Tensor,
                delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        eps, norm, a = self.eps, self.norm, self.momentum
        ckpts = set(checkpoints(self.steps))
        b = x.shape[0]
        act = torch.arange(b, device=x.device)  # rows of x still in the batch
        out = _Outputs(delta)

        xa = x
        d_cur = delta.detach()
        f_cur, g_cur, s_cur = _loss_grad(model, xa, d_cur, fn, idx)
        out.update(act, d_cur, f_cur, s_cur)
        d_max, f_max, g_max = d_cur.clone(), f_cur.clone(), g_cur.clone()
        eta = torch.full((b,), 2.0 * eps, device=x.device, dtype=x.dtype)
        d_prev = d_cur
        n_incr = torch.zeros(b, device=x.device)
        last_ckpt, eta_at_ckpt, fmax_at_ckpt = 0, eta.clone(), f_max.clone()

        for k in range(self.steps):
            if self.early_stop:
                keep = ~out.succ[act]
                if not bool(keep.all()):
                    if not bool(keep.any()):
                        break
                    act, xa = act[keep], xa[keep]
                    d_cur, d_prev, f_cur, g_cur = d_cur[keep], d_prev[keep], f_cur[keep], g_cur[keep]
                    d_max, f_max, g_max = d_max[keep], f_max[keep], g_max[keep]
                    eta, n_incr = eta[keep], n_incr[keep]
                    eta_at_ckpt, fmax_at_ckpt = eta_at_ckpt[keep], fmax_at_ckpt[keep]
            with torch.no_grad():
                if norm == "linf":
                    step = g_cur.sign() * _bview(eta, xa)
                else:
                    gn = g_cur.flatten(1).norm(dim=1).clamp_min(1e-12)
                    step = g_cur * _bview(eta / gn, xa)
                z = project(d_cur + step, xa, eps, norm)
                d_new = z if k == 0 else project(d_cur + a * (z - d_cur) + (1.0 - a) * (d_cur - d_prev), xa, eps, norm)
            f_new, g_new, s_new = _loss_grad(model, xa, d_new, fn, idx[act])
            out.update(act, d_new, f_new, s_new)

            n_incr += (f_new > f_cur).float()
            up = f_new > f_max
            upv = _bview(up, xa)
            d_max = torch.where(upv, d_new, d_max)
            g_max = torch.where(upv, g_new, g_max)
            f_max = torch.where(up, f_new, f_max)

            d_prev, d_cur, f_cur, g_cur = d_cur, d_new, f_new, g_new
            it = k + 1
            if it in ckpts:
                too_few = n_incr < self.rho * (it - last_ckpt)
                stalled = (eta == eta_at_ckpt) & (f_max <= fmax_at_ckpt)
                halve = too_few | stalled
                eta_before = eta
                eta = torch.where(halve, eta / 2.0, eta)
                hv = _bview(halve, xa)
                d_cur = torch.where(hv, d_max, d_cur)
                d_prev = torch.where(hv, d_max, d_prev)  # no momentum right after a restart from x_max
                g_cur = torch.where(hv, g_max, g_cur)
                f_cur = torch.where(halve, f_max, f_cur)
                n_incr.zero_()
                last_ckpt, eta_at_ckpt, fmax_at_ckpt = it, eta_before, f_max.clone()
        return out.d, out.obj, out.succ

    # ---- L1 ----
    def _l1_start(self, x: Tensor, radius: float, gen: torch.Generator | None) -> Tensor:
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)
        return project_l1_box(noise, radius, -x, 1.0 - x)

    def _run_l1(self, model: nn.Module, x: Tensor, fn: ObjFn, idx: Tensor, gen: torch.Generator | None,
                random: bool, delta0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        stages = l1_stages(self.steps, self.l1_eps_schedule)
        given = delta0 is not None
        if delta0 is None:
            delta0 = self._l1_start(x, self.eps * stages[0][0], gen) if random else torch.zeros_like(x)
        d_init = delta0.detach()
        out = None
        for j, (mult, n_iter) in enumerate(stages):
            last = j == len(stages) - 1
            d_init = project(d_init, x, self.eps * mult, "l1")
            d_init, out = self._l1_stage(model, x, fn, idx, d_init, self.eps * mult, n_iter, last,
                                         from_init=j > 0 or given)
        assert out is not None
        return out.d, out.obj, out.succ

    def _l1_stage(self, model: nn.Module, x: Tensor, fn: ObjFn, idx: Tensor, delta: Tensor, eps: float,
                  n_iter: int, final: bool, from_init: bool) -> tuple[Tensor, _Outputs]:
        """One L1 stage of radius ``eps``; returns (highest-loss delta per example, outputs of this stage)."""
        b = x.shape[0]
        n = x[0].numel()
        act = torch.arange(b, device=x.device)
        out = _Outputs(delta)
        early = self.early_stop and final
        xa = x
        d_cur = delta.detach()
        f_cur, g_cur, s_cur = _loss_grad(model, xa, d_cur, fn, idx)
        out.update(act, d_cur, f_cur, s_cur)
        d_max, f_max, g_max = d_cur.clone(), f_cur.clone(), g_cur.clone()
        all_max = d_cur.clone()  # highest-loss point of every example (the next stage starts there)
        eta = torch.full((b,), eps, device=x.device, dtype=x.dtype)
        if from_init:
            sp_old = (d_cur.flatten(1) != 0).sum(1).to(x.dtype).clamp_min(1.0)
            topk = sp_old / n / 1.5
        else:
            sp_old = torch.full((b,), float(n), device=x.device, dtype=x.dtype)
            topk = torch.full((b,), self.l1_topk, device=x.device, dtype=x.dtype)
        every = max(int(0.04 * n_iter), 1)

        for i in range(n_iter):
            if early:
                keep = ~out.succ[act]
                if not bool(keep.all()):
                    all_max[act] = d_max
                    if not bool(keep.any()):
                        break
                    act, xa = act[keep], xa[keep]
                    d_cur, f_cur, g_cur = d_cur[keep], f_cur[keep], g_cur[keep]
                    d_max, f_max, g_max = d_max[keep], f_max[keep], g_max[keep]
                    eta, sp_old, topk = eta[keep], sp_old[keep], topk[keep]
            with torch.no_grad():
                g = g_cur.flatten(1)
                cur = (xa + d_cur).flatten(1)
                blocked = ((g > 0) & (cur >= 1.0)) | ((g < 0) & (cur <= 0.0)) | (g == 0)
                score = g.abs().masked_fill(blocked, -1.0)
                k = (topk * n).round().clamp(1, n).long()
                srt = score.sort(dim=1, descending=True).values
                thr = srt.gather(1, (k - 1).unsqueeze(1))
                take = (score >= thr) & (score >= 0)
                cnt = take.sum(1).clamp_min(1).to(x.dtype)
                step = (g.sign() * take) * (eta / cnt).unsqueeze(1)
                d_new = project_l1_box(d_cur + step.view_as(d_cur), eps, -xa, 1.0 - xa)
            f_new, g_new, s_new = _loss_grad(model, xa, d_new, fn, idx[act])
            out.update(act, d_new, f_new, s_new)
            up = f_new > f_max
            upv = _bview(up, xa)
            d_max = torch.where(upv, d_new, d_max)
            g_max = torch.where(upv, g_new, g_max)
            f_max = torch.where(up, f_new, f_max)
            d_cur, f_cur, g_cur = d_new, f_new, g_new
            if (i + 1) % every == 0:
                sp_cur = (d_max.flatten(1) != 0).sum(1).to(x.dtype)
                reset = sp_cur / sp_old.clamp_min(1.0) < 0.95
                topk = sp_cur / n / 1.5
                eta = torch.where(reset, torch.full_like(eta, eps), eta / 1.5).clamp(eps / 10.0, eps)
                sp_old = sp_cur
                rv = _bview(reset, xa)
                d_cur = torch.where(rv, d_max, d_cur)
                g_cur = torch.where(rv, g_max, g_cur)
                f_cur = torch.where(reset, f_max, f_cur)
        all_max[act] = d_max
        return all_max, out


class APGDT(Attack):
    """APGD-T: untargeted in effect (``y`` are the true labels), it runs APGD with the targeted DLR loss towards
    each of the ``n_targets`` most likely wrong classes of the clean input in turn, on the examples not broken yet.

    Args:
        eps, steps, norm, random_start, seed, use_eval_mode, l1_eps_schedule, early_stop: as :class:`APGD`.
        n_targets: how many target classes to try (at most the number of classes - 1).
        restarts: runs per target class.
    """

    def __init__(self, eps: float, steps: int = 100, norm: str = "linf", n_targets: int = 9, restarts: int = 1,
                 random_start: bool = True, *, l1_eps_schedule: tuple[float, ...] | None = (3.0, 2.0, 1.0),
                 early_stop: bool = True, seed: int | None = None, use_eval_mode: bool = True) -> None:
        super().__init__(targeted=False, use_eval_mode=use_eval_mode)
        if n_targets < 1:
            raise ValueError(f"n_targets must be >= 1, got {n_targets}")
        self._apgd = APGD(eps, steps, norm, restarts=1, random_start=random_start, loss="ce",
                          l1_eps_schedule=l1_eps_schedule, early_stop=early_stop, seed=seed,
                          use_eval_mode=use_eval_mode)
        self.eps, self.steps, self.norm = float(eps), int(steps), norm
        self.n_targets, self.restarts, self.seed = int(n_targets), int(restarts), seed
        self.random_start = bool(random_start)

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        gen = make_generator(self.seed, x.device)
        with torch.no_grad():
            order = model(x).argsort(dim=1, descending=True)
        n_cls = order.shape[1]
        if n_cls < 4:
            raise ValueError(f"APGD-T needs at least 4 classes (targeted DLR loss), the model has {n_cls}")
        b = x.shape[0]
        best_x = x.clone()
        best_obj = torch.full((b,), -torch.inf, device=x.device)
        best_succ = torch.zeros(b, dtype=torch.bool, device=x.device)
        for t in range(1, min(self.n_targets, n_cls - 1) + 1):
            # the t-th most likely class other than y (the top class itself when it is not y)
            not_y = order != y.unsqueeze(1)
            rank = not_y.long().cumsum(1)
            target = torch.where((rank == t) & not_y, order, torch.zeros_like(order)).sum(1)

            def fn(logits: Tensor, idx: Tensor, target: Tensor = target) -> tuple[Tensor, Tensor]:
                yy = y[idx]
                return dlr_targeted_loss(logits, yy, target[idx]), logits.detach().argmax(1) != yy

            for r in range(self.restarts):
                todo = (~best_succ).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return AttackResult(best_x.detach(), best_succ, best_obj)
                random = self.random_start or r > 0 or t > 1
                d, obj, succ = self._apgd.run(model, x[todo], fn, todo, gen, random=random)
                upd = (succ & ~best_succ[todo]) | ((succ == best_succ[todo]) & (obj > best_obj[todo]))
                sel = todo[upd]
                best_x[sel] = (x[sel] + d[upd]).clamp(0.0, 1.0)
                best_obj[sel] = obj[upd]
                best_succ[sel] = succ[upd]
        return AttackResult(best_x.detach(), best_succ, best_obj)
