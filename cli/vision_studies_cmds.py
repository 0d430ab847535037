"""``advsim vision study soar|frequency|hierarchy|alignment``: the four studies of spec-002, one run directory each.

Every command has ``--preset cpu`` (the default: Fashion-MNIST subsets, small nets, minutes on a laptop CPU) and
``--preset paper`` (the thesis' dataset, network and schedule; needs a GPU); any flag given explicitly overrides
the preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.app import threads_option, vision
from cli.vision_cmds import _Radius

PRESET = click.option("--preset", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
                      help="cpu: small, minutes on a CPU; paper: the thesis' setting (GPU).")


def _common(fn):
    for opt in reversed([
        click.option("--seed", type=int, default=None, help="Random seed (same seed => same numbers)."),
        click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda."),
        click.option("--out", type=click.Path(), required=True, help="Run directory to create."),
        click.option("--overwrite", is_flag=True, help="Replace a finished run in --out (its weights are reused "
                     "when the config is unchanged)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        threads_option,
    ]):
        fn = opt(fn)
    return fn


def _config(cls: type, preset: dict[str, Any], opts: dict[str, Any]) -> Any:
    """``cls(**preset)`` with every option the user gave (not None) on top."""
    values = dict(preset)
    values.update({k: v for k, v in opts.items() if v is not None})
    return cls(**values)


def _show_table(path) -> None:
    click.echo(path.read_text(encoding="utf-8").rstrip())


# ---- soar ----
SOAR_PRESETS = {
    "cpu": {},
    "paper": dict(dataset="cifar10", model="resnet10-nobn", n_train=None, n_test=1000, eps=8 / 255,
                  pretrain_epochs=200, pretrain_lr=0.1, epochs=200, lr=0.004, weight_decay=2e-4, batch_size=128,
                  eval_apgd_steps=100, n_target_classes=9),
}


@vision.group("study")
def study() -> None:
    """The studies of spec-002: SOAR/FOAR, optimisers and frequencies, hierarchical robustness, model alignment."""


@study.command("soar")
@PRESET
@click.option("--dataset", default=None, help="fashion-mnist (cpu preset), mnist, digits, cifar10 (paper).")
@click.option("--root", type=click.Path(), default=None, help="Dataset root (see vision train --root).")
@click.option("--model", default=None, help="A BN-free model: mnist_small (cpu), resnet10-nobn (paper), ...")
@click.option("--n-train", type=int, default=None, help="Training images (a seeded subset).")
@click.option("--n-test", type=int, default=None, help="Test images attacked (the first N).")
@click.option("--eps", type=_Radius(), default=None, help="Linf radius (cpu 0.1, paper 8/255).")
@click.option("--methods", default=None,
              help="Comma list of standard, pgd-at, foar, soar, soar-zero, soar-rescale (default: all six).")
@click.option("--pretrain-epochs", type=int, default=None, help="Epochs of the standard model.")
@click.option("--pretrain-lr", type=float, default=None, help="Learning rate of the standard model (SGD m 0.9).")
@click.option("--epochs", type=int, default=None, help="Epochs of every method continued from the standard model.")
@click.option("--lr", type=float, default=None, help="Learning rate of those methods (thesis: 0.004).")
@click.option("--batch-size", type=int, default=None, help="Minibatch size.")
@click.option("--h", "h", type=float, default=None, help="Finite-difference step of SOAR (0.01).")
@click.option("--clip", type=float, default=None, help="Clip of the regulariser value (10).")
@click.option("--clip-mode", type=click.Choice(["clamp", "rescale", "none"]), default=None,
              help="clamp (default): hard min(R, clip); rescale: same value, gradient scaled by clip/R; none.")
@click.option("--lam", type=float, default=None, help="Weight of the regulariser (1).")
@click.option("--grad-clip", type=float, default=None, help="Clip the parameter-gradient norm of the regulariser.")
@click.option("--eval-apgd-steps", type=int, default=None, help="APGD-CE / APGD-DLR iterations (100).")
@click.option("--n-target-classes", type=int, default=None, help="Targets of APGD-T (9).")
@_common
def study_soar(preset, methods, out, overwrite, quiet, **opts) -> None:
    """SOAR and FOAR (Algorithm 3.1) vs PGD-AT, under PGD-20, APGD-CE, APGD-DLR and APGD-T.

    \b
    Example (CPU, about 15 minutes):
      advsim vision study soar --out runs/soar --threads 1
    """
    from vision.studies.soar import SoarStudyConfig, run_soar_study

    if methods:
        opts["methods"] = tuple(m.strip() for m in methods.split(",") if m.strip())
    cfg = _config(SoarStudyConfig, SOAR_PRESETS[preset], opts)
    run_soar_study(cfg, out, overwrite=overwrite, progress=not quiet)
    _show_table(Path(out) / "robustness.md")


def _tuple(text: str | None, cast=str) -> tuple | None:
    """``"a,b"`` -> ("a", "b") (None stays None)."""
    if text is None:
        return None
    try:
        return tuple(cast(t.strip()) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise click.BadParameter(f"cannot read {text!r} as a comma list: {exc}") from None


# ---- frequency ----
FREQ_PRESETS = {
    "cpu": {},
    "paper": dict(dataset="mnist", model="mnist_cnn", n_train=None, n_test=10000, n_attack=1000, n_basis=1000,
                  epochs=200, seeds=(0, 1, 2), gauss_var=(0.01, 0.05, 0.1), l2_eps=(0.5, 0.7, 1.0),
                  linf_eps=(0.05, 0.07, 0.1), apgd_steps=100, n_target_classes=9),
}


@study.command("frequency")
@PRESET
@click.option("--dataset", default=None, help="fashion-mnist (cpu preset), mnist (paper), digits, cifar10.")
@click.option("--root", type=click.Path(), default=None, help="Dataset root (see vision train --root).")
@click.option("--model", default=None, help="mnist_small (cpu), mnist_cnn (paper, Table 4.2), preact18-nobn, ...")
@click.option("--optimizers", default=None, help="Comma list of sgd, adam, rmsprop (default all three).")
@click.option("--seeds", default=None, help="Comma list of seeds (paper: 0,1,2).")
@click.option("--n-train", type=int, default=None, help="Training images (a seeded subset).")
@click.option("--n-test", type=int, default=None, help="Test images for clean and Gaussian-noise accuracy.")
@click.option("--n-attack", type=int, default=None, help="Test images attacked and probed per band.")
@click.option("--n-basis", type=int, default=None, help="Test images probed along each DCT basis.")
@click.option("--epochs", type=int, default=None, help="Training epochs (lr x0.1 at 50% and 75%).")
@click.option("--gauss-var", default=None, help="Comma list of Gaussian noise variances.")
@click.option("--l2-eps", default=None, help="Comma list of L2 radii.")
@click.option("--linf-eps", default=None, help="Comma list of Linf radii.")
@click.option("--apgd-steps", type=int, default=None, help="APGD-CE / APGD-T iterations.")
@click.option("--band-sigma", type=float, default=None, help="Std of the band-limited DCT noise (0.5).")
@click.option("--linear/--no-linear", default=None, help="Also run the linear-model theory (default on).")
@_common
def study_frequency(preset, optimizers, seeds, gauss_var, l2_eps, linf_eps, out, overwrite, quiet, **opts) -> None:
    """SGD vs Adam vs RMSProp: robustness, DCT-band sensitivity, gradient energy, the linear theory (ch. 4).

    \b
    Example (CPU):
      advsim vision study frequency --out runs/frequency --threads 1
    """
    from vision.studies.frequency import FrequencyStudyConfig, run_frequency_study

    opts.update(optimizers=_tuple(optimizers), seeds=_tuple(seeds, int), gauss_var=_tuple(gauss_var, float),
                l2_eps=_tuple(l2_eps, float), linf_eps=_tuple(linf_eps, float))
    seed = opts.pop("seed", None)
    if seed is not None and opts["seeds"] is None:
        opts["seeds"] = (seed,)
    cfg = _config(FrequencyStudyConfig, FREQ_PRESETS[preset], opts)
    run_frequency_study(cfg, out, overwrite=overwrite, progress=not quiet)
    _show_table(Path(out) / "robustness.md")
    if cfg.linear:
        _show_table(Path(out) / "linear_theory.md")


# ---- hierarchy ----
HIER_PRESETS = {
    "cpu": {},
    "paper": dict(dataset="cifar10", model="resnet10", n_train=None, n_test=1000, eps=8 / 255, epochs=200,
                  lr=0.1, defenses=("standard", "pgd", "trades")),
}


@study.command("hierarchy")
@PRESET
@click.option("--dataset", default=None, help="fashion-mnist (cpu preset), cifar10 (paper), or any with --hierarchy.")
@click.option("--root", type=click.Path(), default=None, help="Dataset root (see vision train --root).")
@click.option("--hierarchy", default=None,
              help="Coarse classes as 'name:0,1,2;other:3,4' (default: the dataset's built-in grouping).")
@click.option("--model", default=None, help="Flat model and every HAR component (mnist_small; paper resnet10).")
@click.option("--families", default=None, help="Comma list of flat, har.")
@click.option("--defenses", default=None, help="Comma list of standard, pgd, pgd-t (flat only), trades.")
@click.option("--n-train", type=int, default=None, help="Training images (a seeded subset).")
@click.option("--n-test", type=int, default=None, help="Test images attacked (the first N).")
@click.option("--eps", type=_Radius(), default=None, help="Radius (cpu 0.1, paper 8/255).")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None, help="Threat model (linf).")
@click.option("--train-steps", type=int, default=None, help="PGD steps of adversarial training (10).")
@click.option("--attack-steps", type=int, default=None, help="Steps of untargeted and hierarchical PGD (20).")
@click.option("--epochs", type=int, default=None, help="Epochs of every model.")
@click.option("--lr", type=float, default=None, help="SGD learning rate (momentum 0.9).")
@_common
def study_hierarchy(preset, families, defenses, out, overwrite, quiet, **opts) -> None:
    """Flat vs HAR models: meta-class accuracy clean, under untargeted PGD, PGD-Meta and hierarchical PGD (ch. 5).

    \b
    Example (CPU):
      advsim vision study hierarchy --out runs/hierarchy --threads 1
    """
    from vision.studies.hierarchy import HierarchyStudyConfig, run_hierarchy_study

    opts.update(families=_tuple(families), defenses=_tuple(defenses))
    cfg = _config(HierarchyStudyConfig, HIER_PRESETS[preset], opts)
    run_hierarchy_study(cfg, out, overwrite=overwrite, progress=not quiet)
    _show_table(Path(out) / "meta_robustness.md")


# ---- alignment ----
ALIGN_PRESETS = {
    "cpu": {},
    "paper": dict(dataset="cifar10", archs=("resnet18", "preact18", "mobilenetv2"), n_train=40000, n_align=10000,
                  n_eval=1000, epochs=30, optimizer="sgd", lr=0.1, eps=4 / 255),
}


@study.command("alignment")
@PRESET
@click.option("--dataset", default=None, help="fashion-mnist (cpu preset), cifar10 (paper), mnist, digits.")
@click.option("--root", type=click.Path(), default=None, help="Dataset root (see vision train --root).")
@click.option("--archs", default=None, help="Comma list of source = target architectures.")
@click.option("--witnesses", default=None, help="Comma list of witness architectures (default: --archs).")
@click.option("--n-train", type=int, default=None, help="Labelled training images of every model.")
@click.option("--n-align", type=int, default=None, help="Further training images used unlabeled for alignment.")
@click.option("--n-eval", type=int, default=None, help="Test images attacked.")
@click.option("--epochs", type=int, default=None, help="Training epochs of every model.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd", "rmsprop"]), default=None,
              help="Optimizer of the models (cpu: adam lr 1e-3; paper: sgd lr 0.1).")
@click.option("--lr", type=float, default=None, help="Learning rate of the models.")
@click.option("--align-epochs", type=int, default=None, help="Alignment epochs (1).")
@click.option("--align-lr", type=float, default=None, help="Alignment learning rate (SGD m 0.9, cosine).")
@click.option("--temperature", type=float, default=None, help="Softmax temperature of the KL (4).")
@click.option("--eps", type=_Radius(), default=None, help="Linf radius of the transfer attack (0.1; paper 4/255).")
@click.option("--attack-steps", type=int, default=None, help="PGD steps (20, step eps/4).")
@_common
def study_alignment(preset, archs, witnesses, out, overwrite, quiet, **opts) -> None:
    """Align surrogates to witness models, then measure PGD transfer before and after (ch. 6).

    \b
    Example (CPU):
      advsim vision study alignment --out runs/alignment --threads 1
    """
    from vision.studies.alignment import AlignmentStudyConfig, run_alignment_study

    opts.update(archs=_tuple(archs), witnesses=_tuple(witnesses))
    cfg = _config(AlignmentStudyConfig, ALIGN_PRESETS[preset], opts)
    run_alignment_study(cfg, out, overwrite=overwrite, progress=not quiet)
    _show_table(Path(out) / "transfer_error.md")
    _show_table(Path(out) / "transfer_change.md")
