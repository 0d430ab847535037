"""``advsim vision robust-overfitting`` and ``advsim vision fast-ablation`` (issue 15: robust overfitting, the
R+FGSM ablation of fast adversarial training). The attack suite itself is ``advsim vision evaluate --suite``."""

from __future__ import annotations

import click

from cli.app import threads_option, vision
from cli.vision_cmds import _Radius


@vision.command("robust-overfitting")
@click.option("--preset", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
              help="cpu: 2,000 MNIST images, small conv net, eps 0.1, 40 epochs (minutes). paper: CIFAR-10, "
                   "PreAct ResNet-18, eps 8/255, 200 epochs with decays at 100 and 150 (GPU).")
@click.option("--dataset", default=None, help="Override the preset's dataset (mnist, fashion-mnist, cifar10, ...).")
@click.option("--root", type=click.Path(), default=None, help="Where the dataset lives (see vision train --root).")
@click.option("--model", default=None, help="Override the preset's model.")
@click.option("--eps", type=_Radius(), default=None, help="Linf radius (training and evaluation).")
@click.option("--alpha", type=_Radius(), default=None, help="PGD step (default eps/4).")
@click.option("--attack-steps", type=click.IntRange(min=1), default=None, help="PGD steps in training.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (lr /10 at 50% and 75%).")
@click.option("--lr-max", type=click.FloatRange(min=0, min_open=True), default=None, help="Initial learning rate.")
@click.option("--n-train", type=click.IntRange(min=1), default=None, help="Training images (after the split).")
@click.option("--val-size", type=click.IntRange(min=1), default=None, help="Held-out validation images.")
@click.option("--n-test", type=click.IntRange(min=1), default=None, help="Test images evaluated every epoch.")
@click.option("--eval-steps", type=click.IntRange(min=1), default=None, help="PGD steps of the per-epoch check.")
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option("--device", default=None, help="auto (CUDA when present), cpu, cuda.")
@click.option("--out", type=click.Path(), required=True, help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def vision_robust_overfitting(preset, out, overwrite, quiet, **opts) -> None:
    """PGD training with per-epoch robust test error: best vs final checkpoint, validation-based early stopping,
    and the curve as a figure (OUT/robust_overfitting.png).

    \b
    Example (CPU, about 10 minutes):
      advsim vision robust-overfitting --out runs/ro-mnist
    """
    from vision.robust_overfitting import preset_config, run_robust_overfitting

    cfg = preset_config(preset, **opts)
    m = run_robust_overfitting(cfg, out, overwrite=overwrite, progress=not quiet)
    click.echo(f"{out}: robust test error best {m['best_test_robust_err']:.4f} (epoch {m['best_test_epoch']}), "
               f"final {m['final_test_robust_err']:.4f} (epoch {m['final_epoch']}), validation-selected "
               f"{m['val_selected_test_robust_err']:.4f} (epoch {m['val_selected_epoch']}); "
               f"figure {out}/robust_overfitting.png")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers such as 0,1,2; got {text!r}") from exc


@vision.command("fast-ablation")
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Seeds, comma-separated (thesis: 10).")
@click.option("--rows", default="rfgsm,rfgsm-full-step,rfgsm-uniform,uniform-full", show_default=True,
              help="Which rows of Table 4.3 to run.")
@click.option("--n-train", type=click.IntRange(min=1), default=12000, show_default=True,
              help="MNIST training images (0 < N <= 60000; the thesis uses all 60,000).")
@click.option("--full-train", is_flag=True, help="Use all training images (the thesis' setting).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Epochs per run.")
@click.option("--eps", type=_Radius(), default=0.3, show_default=True, help="Linf radius.")
@click.option("--n-test", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Test images for the PGD evaluation.")
@click.option("--eval-steps", type=click.IntRange(min=1), default=50, show_default=True, help="PGD steps.")
@click.option("--eval-restarts", type=click.IntRange(min=1), default=1, show_default=True, help="PGD restarts.")
@click.option("--root", type=click.Path(), default=None, help="MNIST folder (default: the shared data folder).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--out", type=click.Path(), required=True, help="Folder for the table and one run per (row, seed).")
@click.option("--overwrite", is_flag=True, help="Redo a finished ablation in --out (finished runs are reused).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def vision_fast_ablation(seeds, rows, full_train, out, overwrite, quiet, **opts) -> None:
    """Table 4.3: FGSM training on MNIST with R+FGSM's hypercube start vs a uniform start, half vs full step,
    over several seeds; writes OUT/table.md.

    \b
    Example (CPU, about 15 minutes):
      advsim vision fast-ablation --out runs/rfgsm-ablation
    """
    from vision.defenses.fast_ablation import FastAblationConfig, run_fast_ablation

    n_train = None if full_train else opts.pop("n_train")
    opts.pop("n_train", None)
    cfg = FastAblationConfig(seeds=_ints(seeds), rows=[r.strip() for r in rows.split(",") if r.strip()],
                             n_train=n_train, **opts)
    m = run_fast_ablation(cfg, out, overwrite=overwrite, progress=not quiet)
    for r in m["rows"]:
        click.echo(f"{r['label']}: robust {100 * r['robust_mean']:.2f} +- {100 * r['robust_std']:.2f}% "
                   f"over seeds {r['seeds']}")
    click.echo(f"table: {out}/table.md")
