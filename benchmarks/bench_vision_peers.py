"""Our attacks side by side with published implementations on one trained model, in ONE process: speed (each side
timed in turn, rounds alternated, same threads) and strength (robust accuracy on the same images).

    python benchmarks/bench_vision_peers.py --run runs/mnist-fast --n 1000 --rounds 3 --threads 1

Peers are used when installed (never project dependencies): torchattacks, adversarial-robustness-toolbox (ART),
foolbox, and AutoAttack (git only: put a checkout on PYTHONPATH). Install them with torch pinned, e.g.
``pip install --no-deps torchattacks adversarial-robustness-toolbox foolbox eagerpy gitpython``.

Timed groups (``--groups``):

- ``apgd``: APGD-CE, Linf, 100 iterations, 1 restart (ours with and without early stop; torchattacks; AutoAttack;
  ART).
- ``pgd``: PGD-50, Linf, step eps/4... as ``--pgd-alpha``, ``--pgd-restarts`` restarts (ours; torchattacks; ART).
- ``l1``: L1 at ``--l1-eps``: ours PGD-L1 (50 steps), ours APGD-L1 (100 iterations, the default L1 attack);
  AutoAttack's APGD-L1 (100 iterations, its staged radii); foolbox's SLIDE (50 steps).
- ``square``: Square, Linf, ``--queries`` queries (ours; AutoAttack; torchattacks).
- ``l1-stages``: ours APGD-L1 with and without the staged radii (not in the default groups).

Prints a markdown table: per side the median wall time and median CPU time (process time) over the rounds, and
the robust accuracy (the model's accuracy at the returned points, re-checked here, inside the ball).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vision.attacks import APGD, PGD, Square
from vision.evaluate import load_run_model


def _norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    f = d.flatten(1)
    return {"linf": f.abs().amax(1), "l2": f.norm(dim=1), "l1": f.abs().sum(1)}[norm]


def _robust(model, x, y, xa, norm, eps) -> float:
    xa = xa.detach().to(x.dtype)
    if bool((_norm(xa - x, norm) > eps * (1 + 1e-4) + 1e-5).any()) or float(xa.min()) < -1e-6 or float(xa.max()) > 1:
        return float("nan")  # outside the threat model: not a valid result
    with torch.no_grad():
        return float((model(xa).argmax(1) == y).float().mean())


def sides(group: str, model, eps: float, args) -> dict[str, Callable]:
    """name -> callable(x, y) returning adversarial inputs, for the sides available here."""
    s: dict[str, Callable] = {}
    if group == "apgd":
        s["ours APGD-CE"] = lambda x, y: APGD(eps, 100, "linf", seed=0)(model, x, y).x_adv
        s["ours APGD-CE (no early stop)"] = lambda x, y: APGD(eps, 100, "linf", seed=0, early_stop=False)(
            model, x, y).x_adv
        try:
            import torchattacks

            s["torchattacks APGD"] = lambda x, y: torchattacks.APGD(model, norm="Linf", eps=eps, steps=100,
                                                                    n_restarts=1, seed=0, loss="ce")(x, y)
        except ImportError:
            pass
        try:
            from autoattack.autopgd_base import APGDAttack

            s["AutoAttack APGD-CE"] = lambda x, y: APGDAttack(model, n_iter=100, norm="Linf", eps=eps, seed=0,
                                                              device=str(x.device)).perturb(x, y)
        except ImportError:
            pass
        art = _art(model, x_shape=args.shape)
        if art is not None:
            from art.attacks.evasion import AutoProjectedGradientDescent

            s["ART AutoPGD"] = lambda x, y: torch.from_numpy(AutoProjectedGradientDescent(
                art, norm="inf", eps=eps, eps_step=2 * eps, max_iter=100, nb_random_init=1, batch_size=x.shape[0],
                loss_type="cross_entropy", verbose=False).generate(x.numpy(), y.numpy()))
    elif group == "pgd":
        alpha, restarts = args.pgd_alpha, args.pgd_restarts
        s["ours PGD-50"] = lambda x, y: PGD(eps, alpha, 50, restarts=restarts, seed=0)(model, x, y).x_adv
        try:
            import torchattacks

            s["torchattacks PGD-50"] = lambda x, y: _ta_pgd_restarts(torchattacks, model, x, y, eps, alpha, restarts)
        except ImportError:
            pass
        art = _art(model, x_shape=args.shape)
        if art is not None:
            from art.attacks.evasion import ProjectedGradientDescent

            s["ART PGD-50"] = lambda x, y: torch.from_numpy(ProjectedGradientDescent(
                art, norm="inf", eps=eps, eps_step=alpha, max_iter=50, num_random_init=restarts,
                batch_size=x.shape[0], verbose=False).generate(x.numpy(), y.numpy()))
    elif group == "l1":
        e1 = args.l1_eps
        s["ours PGD-L1 (50 steps)"] = lambda x, y: PGD(e1, None, 50, norm="l1", seed=0)(model, x, y).x_adv
        s["ours APGD-L1"] = lambda x, y: APGD(e1, 100, "l1", seed=0)(model, x, y).x_adv
        try:
            from autoattack.autopgd_base import APGDAttack

            def aa_l1(x, y):
                a = APGDAttack(model, n_iter=100, norm="L1", eps=e1, seed=0, device=str(x.device),
                               use_largereps=True)
                return a.perturb(x, y)

            s["AutoAttack APGD-L1"] = aa_l1
        except ImportError:
            pass
        try:
            import foolbox as fb

            def slide(x, y):
                _, xa, _ = fb.attacks.SparseL1DescentAttack(steps=50)(fb.PyTorchModel(model, bounds=(0, 1)), x, y,
                                                                       epsilons=e1)
                return xa

            s["foolbox SLIDE (50 steps)"] = slide
        except ImportError:
            pass
    elif group == "l1-stages":
        e1 = args.l1_eps
        s["ours APGD-L1 (radii 3, 2, 1 eps)"] = lambda x, y: APGD(e1, 100, "l1", seed=0)(model, x, y).x_adv
        s["ours APGD-L1 (one stage)"] = lambda x, y: APGD(e1, 100, "l1", seed=0, l1_eps_schedule=None)(
            model, x, y).x_adv
    elif group == "square":
        q = args.queries
        s["ours Square"] = lambda x, y: Square(eps, q, "linf", seed=0)(model, x, y).x_adv
        try:
            from autoattack.square import SquareAttack

            s["AutoAttack Square"] = lambda x, y: SquareAttack(model, p_init=0.8, n_queries=q, eps=eps, norm="Linf",
                                                               seed=0, device=str(x.device)).perturb(x, y)
        except ImportError:
            pass
        try:
            import torchattacks

            s["torchattacks Square"] = lambda x, y: torchattacks.Square(model, norm="Linf", eps=eps, n_queries=q,
                                                                        n_restarts=1, p_init=0.8, seed=0)(x, y)
        except ImportError:
            pass
    return s


def _ta_pgd_restarts(torchattacks, model, x, y, eps, alpha, restarts):
    """torchattacks' PGD has no restarts: run it ``restarts`` times and keep, per image, a successful point."""
    best = None
    for r in range(restarts):
        torch.manual_seed(r)
        xa = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=50, random_start=True)(x, y)
        if best is None:
            best = xa
        else:
            with torch.no_grad():
                ok = model(best).argmax(1) == y
            best[ok] = xa[ok]
    return best


def _art(model, x_shape):
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x_shape),
                             nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a vision run directory (advsim vision train)")
    ap.add_argument("--n", type=int, default=1000, help="test images")
    ap.add_argument("--eps", type=float, default=None, help="Linf radius (default: the run's)")
    ap.add_argument("--l1-eps", type=float, default=5.0)
    ap.add_argument("--pgd-alpha", type=float, default=0.01)
    ap.add_argument("--pgd-restarts", type=int, default=3)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds; the sides alternate within each round")
    ap.add_argument("--groups", default="apgd,pgd,l1,square")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_run_model(args.run, "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    from data_loaders.images import load_images

    data = load_images(cfg["dataset"], cfg.get("root"), "test").subset(slice(0, args.n))
    x, y = data.float(), data.y
    args.shape = tuple(x.shape[1:])
    eps = args.eps if args.eps is not None else float(cfg["eps"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} torch thread(s), "
          f"load {load:.1f} at start; torch {torch.__version__}; run {args.run}; n={args.n}; eps={eps}; "
          f"rounds={args.rounds}")
    results = {}
    for group in args.groups.split(","):
        ss = sides(group, model, eps, args)
        norm, e = ("l1", args.l1_eps) if group.startswith("l1") else ("linf", eps)
        wall: dict[str, list[float]] = {k: [] for k in ss}
        cpu: dict[str, list[float]] = {k: [] for k in ss}
        acc: dict[str, float] = {}
        names = list(ss)
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                t0, c0 = time.perf_counter(), time.process_time()
                xa = ss[name](x.clone(), y.clone())
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                acc[name] = _robust(model, x, y, xa, norm, e)
        print(f"\n{group} ({norm}, eps {e})\n\n| side | robust acc | wall s (median) | CPU s (median) | x fastest |\n"
              "|---|---|---|---|---|")
        fastest = min(statistics.median(cpu[k]) for k in names)
        for k in names:
            c = statistics.median(cpu[k])
            print(f"| {k} | {100 * acc[k]:.1f}% | {statistics.median(wall[k]):.1f} | {c:.1f} | {c / fastest:.2f} |")
        results[group] = {k: {"robust_acc": acc[k], "wall": wall[k], "cpu": cpu[k]} for k in names}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "shape"},
                                               "load": load, "results": results}, indent=2))


if __name__ == "__main__":
    main()
