"""``advsim vision ...``: train and evaluate image classifiers under attack."""

from __future__ import annotations

import click

from cli.app import threads_option, vision


# ---- vision commands (issue: vision) ----
class _Radius(click.ParamType):
    """A radius given as a float or a fraction such as 8/255."""

    name = "radius"

    def convert(self, value, param, ctx):  # noqa: ANN001 - click's signature
        from vision.evaluate import parse_eps

        if isinstance(value, float):
            return value
        try:
            eps = parse_eps(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not eps >= 0 or eps == float("inf"):
            self.fail(f"a radius must be a finite number >= 0, got {value!r}", param, ctx)
        return eps


@vision.command("train")
@click.option("--dataset", type=click.Choice(["digits", "mnist", "fashion-mnist", "cifar10", "folder"]),
              default="digits", show_default=True, help="Image dataset (digits is built in; see docs/vision.md).")
@click.option("--root", type=click.Path(), default=None,
              help="Where the dataset lives: IDX folder, CIFAR-10 batches/PNG subset/image folder/tar. "
                   "Default: the shared data folder (mnist, cifar10) or /usr/share/datasets (fashion-mnist).")
@click.option("--model", default="auto", show_default=True,
              help="mnist_small, mnist_large, preact18, resnet10, resnet18, wrn-34-10, wrn-28-10 (any wrn-D-W); "
                   "auto = mnist_small for grey images, preact18 for colour.")
@click.option("--defense", type=click.Choice(["standard", "pgd", "fast", "trades"]), default="standard",
              show_default=True, help="Training procedure: clean, PGD adversarial, FGSM+random start, TRADES.")
@click.option("--eps", type=_Radius(), default="8/255", show_default=True, help="Linf training radius (0.3, 8/255).")
@click.option("--alpha", type=_Radius(), default=None,
              help="Attack step during training. Default: 1.25*eps (fast), eps/4 (pgd, trades).")
@click.option("--attack-steps", type=click.IntRange(min=1), default=7, show_default=True,
              help="PGD / TRADES inner steps.")
@click.option("--trades-beta", type=click.FloatRange(min=0), default=6.0, show_default=True,
              help="TRADES weight of the KL term.")
@click.option("--fast-init", type=click.Choice(["uniform", "hypercube", "zero"]), default="uniform",
              show_default=True, help="Fast training: random start U(-r, r), r*sign(N(0,1)) (R+FGSM), or none.")
@click.option("--fast-init-radius", type=_Radius(), default=None,
              help="Fast training: radius r of the random start (default eps; R+FGSM uses eps/2).")
@click.option("--fast-clip-init/--no-fast-clip-init", default=False, show_default=True,
              help="Fast training: clip x + start to [0, 1] before the gradient (CIFAR reference code; on MNIST "
                   "this overfits catastrophically, see docs/reproduction.md).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True, help="Minibatch size.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True,
              help="SGD (momentum 0.9) or Adam.")
@click.option("--lr-max", type=click.FloatRange(min=0, min_open=True), default=0.2, show_default=True,
              help="Peak learning rate.")
@click.option("--schedule", type=click.Choice(["cyclic", "piecewise", "cosine", "constant"]), default="cyclic",
              show_default=True, help="Learning-rate schedule, stepped every iteration.")
@click.option("--lr-peak", type=click.FloatRange(min=0, max=1), default=0.5, show_default=True,
              help="Cyclic schedule: fraction of training where the rate peaks (0.4 for the MNIST recipe).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True, help="Weight decay.")
@click.option("--augment/--no-augment", default=None,
              help="Random crop (pad 4) + flip on the device. Default: on for cifar10 only.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default="auto", show_default=True,
              help="Mixed precision: auto = bf16 autocast on CUDA, off on CPU.")
@click.option("--guard/--no-guard", default=None,
              help="Catastrophic-overfitting guard (PGD-5 on one training batch per epoch). Default: on for fast.")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Per-channel mean/std normalisation inside the model; --no-normalize feeds [0, 1] pixels as is.")
@click.option("--val-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hold out this many training images and keep the epoch with the best PGD accuracy on them.")
@click.option("--n-train", type=click.IntRange(min=1), default=None,
              help="Train on the first N (shuffled) training images only.")
@click.option("--n-test", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Test images for the quick final check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed => same numbers).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1.")
@click.option("--out", type=click.Path(), required=True, help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def vision_train(out, overwrite, quiet, **opts) -> None:
    """Train an image classifier with a defense and write a run directory.

    \b
    Example (CPU, seconds):
      advsim vision train --dataset digits --defense fast --eps 0.1 --optimizer adam --lr-max 5e-3 --out runs/d
    """
    from vision.train import VisionTrainConfig, train_run

    cfg = VisionTrainConfig(**opts)
    try:
        m = train_run(cfg, out, overwrite=overwrite, progress=not quiet)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    check = ("no final test check (--n-test 0)" if m["test_clean_acc"] is None else
             f"test clean {m['test_clean_acc']:.4f}, {m['test_pgd']}: {m['test_pgd_acc']:.4f}")
    click.echo(f"{out}: {m['defense']} {m['model_name']}, {m['epochs_run']} epochs in {m['train_seconds']:.1f} s "
               f"on {m['device']}; {check}")
    if m["stopped_early"]:
        click.echo(f"stopped early: {m['stopped_early']}")


@vision.command("evaluate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--attack", type=click.Choice(["fgsm", "pgd", "apgd", "apgd-t", "square", "msd"]), default=None,
              help="Attack from vision.attacks. Default: pgd for linf/l2, apgd for l1 (the strongest l1 attack; "
                   "docs/vision-attacks.md). square: --steps is the number of queries.")
@click.option("--suite", type=click.Choice(["standard"]), default=None,
              help="Run the attack suite instead of one attack: APGD-CE, APGD-T and Square (linf/l2), worst case "
                   "per image, gradient-masking flags; writes RUN/eval-suite-*.json.")
@click.option("--queries", type=click.IntRange(min=0), default=5000, show_default=True,
              help="--suite: Square attack queries per image (0 leaves Square out).")
@click.option("--eps", type=_Radius(), default=None, help="Radius (default: the run's training eps).")
@click.option("--norm", type=click.Choice(["linf", "l2", "l1"]), default="linf", show_default=True,
              help="Threat model of pgd/apgd (msd attacks the union of all three).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Attack iterations. Default: 50 for pgd/msd, 100 for apgd/apgd-t and --suite (AutoAttack's "
                   "budget), 5000 queries for square.")
@click.option("--restarts", type=click.IntRange(min=1), default=None,
              help="Random restarts (best kept). Default: 10 for pgd/fgsm/msd (the thesis' evaluation), 1 for "
                   "apgd, apgd-t and square (AutoAttack's setting).")
@click.option("--alpha", type=_Radius(), default=None,
              help="PGD step. Default: eps/4 for linf, 2.5*eps/steps for l2/l1.")
@click.option("--msd-eps", default=None, help="MSD radii linf,l2,l1 (default 0.3,2,10).")
@click.option("--n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Attack the first N test images.")
@click.option("--dataset", default=None, help="Evaluate on another dataset than the run's (same image shape).")
@click.option("--root", type=click.Path(), default=None, help="Root of --dataset (see vision train --root).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Which split to attack.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per attack batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random starts.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def vision_evaluate(run, quiet, **opts) -> None:
    """Attack a trained run's model and record clean and robust accuracy in RUN/eval-*.json."""
    from vision.evaluate import evaluate_run, evaluate_suite_run

    suite, queries = opts.pop("suite"), opts.pop("queries")
    if suite is not None:
        if opts["attack"] is not None:
            raise click.UsageError("--suite runs its own attacks; leave out --attack")
        keep = ("eps", "norm", "n", "dataset", "root", "split", "batch_size", "device", "seed")
        r = evaluate_suite_run(run, suite, steps=opts["steps"] or 100, queries=queries, progress=not quiet,
                               **{k: opts[k] for k in keep})
        click.echo(f"{run}: suite {suite} {r['norm']} eps={r['eps']:.4g} n={r['n']}: clean {r['clean_acc']:.4f}, "
                   f"worst case robust {r['robust_acc']:.4f} ({r['seconds']:.1f} s)")
        for m in r["members"]:
            click.echo(f"  {m['name']}: attacked {m['attacked']}, new breaks {m['new_breaks']}, "
                       f"robust after {m['robust_acc_after']:.4f} ({m['seconds']:.1f} s)")
        for name, f in r["flags"].items():
            if f["flag"]:
                click.echo(f"  WARNING gradient masking suspected ({name}): {f['meaning']}")
        return
    opts["attack"] = opts["attack"] or ("apgd" if opts["norm"] == "l1" else "pgd")
    if opts["steps"] is None:
        opts["steps"] = {"apgd": 100, "apgd-t": 100, "square": 5000}.get(opts["attack"], 50)
    if opts["restarts"] is None:
        opts["restarts"] = 1 if opts["attack"] in ("apgd", "apgd-t", "square") else 10
    try:
        r = evaluate_run(run, progress=not quiet, **opts)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    eps = r["eps"] if isinstance(r["eps"], dict) else f"{r['eps']:.4g}"
    click.echo(f"{run}: {r['attack']} {r['norm']} eps={eps} steps={r['steps']} restarts={r['restarts']} "
               f"n={r['n']}: clean {r['clean_acc']:.4f}, robust {r['robust_acc']:.4f} ({r['seconds']:.1f} s)")


# ---- end vision commands ----
