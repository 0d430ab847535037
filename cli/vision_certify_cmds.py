"""``advsim vision certified-train``, ``certify``, ``certify-study`` and ``wasserstein ...``: provable robustness
(the Wong & Kolter dual network) and Wasserstein adversarial examples (spec-003 chapters 3 and 5)."""

from __future__ import annotations

import click

from cli.app import threads_option, vision
from cli.vision_cmds import _Radius


def _explicit(ctx: click.Context) -> set[str]:
    """The options the user typed (not defaults), so a preset fills only the others."""
    src = click.core.ParameterSource
    return {k for k in ctx.params if ctx.get_parameter_source(k) not in (src.DEFAULT, src.DEFAULT_MAP, None)}


@vision.command("certified-train")
@click.option("--dataset", type=click.Choice(["digits", "mnist", "fashion-mnist", "cifar10", "folder"]),
              default="mnist", show_default=True, help="Image dataset (see docs/vision.md).")
@click.option("--root", type=click.Path(), default=None, help="Where the dataset lives (see vision train --root).")
@click.option("--model", default="mnist_small", show_default=True,
              help="Network from vision.models (mnist_small is the WK17 conv net, mnist_large the large one).")
@click.option("--preset", type=click.Choice(["wk17", "scaled"]), default=None,
              help="wk17: 100 epochs, eps 0.05->eps over 50, exact bounds; scaled: 60 epochs, eps 0.01->eps over "
                   "20, lr x0.5 every 10, 50 projections. Flags you give override the preset.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True,
              help="Threat model (the l2 variant uses the l2 dual norm and Gaussian projections).")
@click.option("--eps", type=_Radius(), default="0.1", show_default=True, help="Target radius.")
@click.option("--eps-start", type=_Radius(), default="0.01", show_default=True, help="First radius of the ramp.")
@click.option("--ramp-epochs", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Epochs of the linear eps ramp (stepped every iteration).")
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(min=2), default=50, show_default=True, help="Minibatch size.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              help="Adam, or SGD with momentum 0.9.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Learning rate.")
@click.option("--lr-step", type=click.IntRange(min=0), default=10, show_default=True,
              help="After the ramp, multiply the lr by --lr-gamma every this many epochs (0: constant lr).")
@click.option("--lr-gamma", type=click.FloatRange(min=0, max=1), default=0.5, show_default=True,
              help="Learning-rate decay factor.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Weight decay.")
@click.option("--grad-clip", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clip the gradient norm (the thesis' CIFAR recipe uses 1).")
@click.option("--proj", type=click.IntRange(min=1), default=50, show_default=True,
              help="Random projections for the training bound (median estimator).")
@click.option("--exact", is_flag=True, help="Exact bounds in training (no projections; quadratic cost).")
@click.option("--clip-input/--no-clip-input", default=False, show_default=True,
              help="Intersect the l_inf ball with the [0, 1] pixel box in the bound (tighter; off in the thesis).")
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="Per-channel normalisation inside the model (the thesis feeds raw [0, 1] pixels).")
@click.option("--n-train", type=click.IntRange(min=2), default=None, help="Train on the first N shuffled images.")
@click.option("--n-test", type=click.IntRange(min=0), default=500, show_default=True,
              help="Exact certificates on this many test images at the end (0: skip; see vision certify).")
@click.option("--cascade", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train a cascade of this many stages (Algorithm 4).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--out", type=click.Path(), required=True, help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
@click.pass_context
def certified_train(ctx, out, overwrite, quiet, exact, preset, **opts) -> None:
    """Train a provably robust network with the robust (dual-network) loss and an epsilon ramp.

    \b
    Example (CPU, minutes; the thesis recipe is --preset scaled, or --preset wk17):
      advsim vision certified-train --dataset mnist --eps 0.1 --epochs 4 --ramp-epochs 2 --lr-step 1 \\
          --proj 10 --n-train 10000 --out runs/mnist-cert
    """
    from vision.certify.training import CertifiedTrainConfig, apply_preset, train_certified_run

    explicit = _explicit(ctx)
    if exact:
        opts["proj"] = None
        explicit.add("proj")
    cfg = apply_preset(CertifiedTrainConfig(**opts), preset, explicit)
    m = train_certified_run(cfg, out, overwrite=overwrite, progress=not quiet)
    click.echo(f"{out}: certified {m['model_name']} ({cfg.norm} eps={cfg.eps:.4g}), {m['epochs_run']} epochs in "
               f"{m['train_seconds']:.1f} s on {m['device']}")
    if "test_certified_err" in m:
        click.echo(f"test (n={m['test_n']}): clean error {100 * m['test_clean_err']:.2f}%, certified robust error "
                   f"{100 * m['test_certified_err']:.2f}%  (full table: advsim vision certify {out})")


@vision.command("certify")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--eps", type=_Radius(), default=None, help="Radius (default: the run's training eps).")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None, help="Threat model (default: the run's).")
@click.option("--n", type=click.IntRange(min=1), default=1000, show_default=True, help="First N test images.")
@click.option("--pgd-steps", type=click.IntRange(min=0), default=50, show_default=True,
              help="PGD iterations for the PGD error (0: skip PGD).")
@click.option("--pgd-restarts", type=click.IntRange(min=1), default=10, show_default=True, help="PGD restarts.")
@click.option("--clip-input/--no-clip-input", default=None,
              help="Certify the ball intersected with [0, 1] (default: as trained).")
@click.option("--batch-size", type=click.IntRange(min=1), default=50, show_default=True,
              help="Images per certification batch (exact bounds need memory ~ batch x input size x layer size).")
@click.option("--dataset", default=None, help="Certify on another dataset than the run's (same image shape).")
@click.option("--root", type=click.Path(), default=None, help="Root of --dataset.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the PGD random starts.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def certify(run, quiet, **opts) -> None:
    """Clean, FGSM, PGD and certified robust error of a run (exact dual bound; cascades per Algorithm 4).

    Works on any `vision train` or `vision certified-train` run; writes RUN/certify-<norm>-<eps>.json and .md.
    """
    from vision.certify.evaluate import certify_run, certify_table

    rec = certify_run(run, progress=not quiet, **opts)
    click.echo(f"{run}:")
    click.echo(certify_table(rec).rstrip())


@vision.command("certify-study")
@click.argument("study", type=click.Choice(["toy", "har", "tightness"]))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a study setting, e.g. --set iters=3000 --set eps=0.05 (see docs/vision-certify.md).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--out", type=click.Path(), required=True, help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def certify_study(study, overrides, seed, out, overwrite, quiet) -> None:
    """Small provable-robustness studies: the 2-D toy, the HAR-sized MLP, and the dual bound vs the exact LP.

    \b
    Examples (CPU):
      advsim vision certify-study toy --out runs/toy              # zero certified error target
      advsim vision certify-study tightness --out runs/tight      # dual vs LP (scipy HiGHS) vs interval
      advsim vision certify-study har --out runs/har              # bound vs PGD gap, synthetic HAR stand-in
    """
    import json

    from vision.certify.studies import StudyConfig, run_study

    extra = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    run_study(StudyConfig(study, seed, extra), out, overwrite=overwrite, progress=not quiet)
    from pathlib import Path

    click.echo(f"{out}:")
    click.echo((Path(out) / f"{study}.md").read_text().rstrip())


@vision.group("wasserstein")
def wasserstein() -> None:
    """Wasserstein adversarial examples: projected Sinkhorn attack and adversarial training."""


@wasserstein.command("attack")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--n", type=click.IntRange(min=1), default=500, show_default=True, help="First N test images.")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=0.3, show_default=True,
              help="Initial radius (transport cost in fractions of the image's mass times pixels).")
@click.option("--eps-factor", type=click.FloatRange(min=1), default=1.1, show_default=True,
              help="Grow the radius of unbroken examples by this factor ...")
@click.option("--eps-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="... every this many iterations.")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Maximum iterations.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="l_inf step (pixel units).")
@click.option("--kernel", type=click.IntRange(min=1), default=5, show_default=True,
              help="Side of the local transport window (odd).")
@click.option("--lam", type=click.FloatRange(min=0, min_open=True), default=1000.0, show_default=True,
              help="Entropy regularisation of the projection.")
@click.option("--p", "p", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Cost exponent: (di^2 + dj^2)^(p/2).")
@click.option("--sinkhorn-iters", type=click.IntRange(min=1), default=50, show_default=True,
              help="Projected Sinkhorn iterations per step.")
@click.option("--clamp", is_flag=True,
              help="The reference code's behaviour, for comparison: no pixel ceiling in the projection, clamp to "
                   "[0, 1] after it (removes mass: results can leave the ball).")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True, help="Images per batch.")
@click.option("--dataset", default=None, help="Attack another dataset than the run's (same image shape).")
@click.option("--root", type=click.Path(), default=None, help="Root of --dataset.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def wasserstein_attack(run, quiet, **opts) -> None:
    """Success-vs-radius curve of Wasserstein PGD on a trained run (RUN/wasserstein-*.json, .md, .png)."""
    from vision.wasserstein.runs import attack_run

    rec = attack_run(run, progress=not quiet, **opts)
    click.echo(f"{run}: n={rec['n']}, clean accuracy {100 * rec['clean_acc']:.2f}%, success within eps <= "
               f"{rec['max_eps']:.3g}: {100 * rec['success_rate']:.1f}% ({rec['seconds']:.0f} s)")
    click.echo("  " + ", ".join(f"eps {r['eps']:g}: {100 * r['success']:.0f}%" for r in rec["curve"]))


@wasserstein.command("train")
@click.option("--dataset", type=click.Choice(["digits", "mnist", "fashion-mnist", "cifar10", "folder"]),
              default="mnist", show_default=True, help="Image dataset.")
@click.option("--root", type=click.Path(), default=None, help="Where the dataset lives.")
@click.option("--model", default="mnist_small", show_default=True, help="Network from vision.models.")
@click.option("--init", type=click.Path(exists=True, file_okay=False), default=None,
              help="Start from this run's weights (e.g. a standard model) instead of from scratch.")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="Initial radius of the training attack.")
@click.option("--eps-factor", type=click.FloatRange(min=1), default=1.4, show_default=True,
              help="Radius growth factor of the training attack ...")
@click.option("--eps-every", type=click.IntRange(min=1), default=5, show_default=True,
              help="... every this many iterations.")
@click.option("--attack-steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="Maximum attack iterations per batch.")
@click.option("--kernel", type=click.IntRange(min=1), default=5, show_default=True, help="Transport window.")
@click.option("--lam", type=click.FloatRange(min=0, min_open=True), default=1000.0, show_default=True,
              help="Entropy regularisation.")
@click.option("--sinkhorn-iters", type=click.IntRange(min=1), default=50, show_default=True,
              help="Projected Sinkhorn iterations per step.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True, help="Training epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="SGD learning rate (momentum 0.9) ...")
@click.option("--lr-drop-epoch", type=click.IntRange(min=0), default=10, show_default=True,
              help="... times 0.1 from this epoch on.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True, help="Minibatch size.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True, help="Weight decay.")
@click.option("--n-train", type=click.IntRange(min=2), default=None, help="Train on the first N shuffled images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--out", type=click.Path(), required=True, help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def wasserstein_train(out, overwrite, quiet, **opts) -> None:
    """Wasserstein adversarial training (adaptive radius; the thesis' MNIST recipe by default)."""
    from vision.wasserstein.runs import WassersteinTrainConfig, train_wasserstein_run

    m = train_wasserstein_run(WassersteinTrainConfig(**opts), out, overwrite=overwrite, progress=not quiet)
    click.echo(f"{out}: Wasserstein-trained {m['model_name']}, {m['epochs_run']} epochs in {m['train_seconds']:.1f} s "
               f"on {m['device']}  (curve: advsim vision wasserstein attack {out})")
