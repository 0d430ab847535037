"""``advsim vision theory teacher-student|regularisation|properties``: the theory experiments of spec-001, spec-004
and spec-000 chapter 6, one run directory each.

``--preset cpu`` (the default) runs on Fashion-MNIST subsets with small networks on a CPU; ``--preset paper`` picks
the source's dataset (CIFAR-10) and schedule sizes and needs a GPU. The flags shown set the common fields;
``--set FIELD=VALUE`` (repeatable) sets any field of the experiment's config (comma lists for tuples, fractions such
as 8/255 for numbers, ``none`` for an optional value); ``--fields`` lists them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import click

from cli.app import threads_option, vision

PRESET = click.option("--preset", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
                      help="cpu: small, minutes on a CPU; paper: the source's dataset and sizes (GPU).")

TS_PAPER = dict(dataset="cifar10", n_train=None, n_test=1000, teacher_widths=(64, 64, 64, 64),
                pruned_widths=(45, 32, 32, 20), teacher_epochs=100, teacher_finetune_epochs=10,
                st_epochs=(50, 100, 150, 200, 300), at_epochs=(50, 100, 150, 200, 300), plane_epochs=150,
                ccat_epochs=150, eps=10 / 255, train_steps=40, train_alpha=0.01, eval_steps=40, eval_repeats=5,
                l2_eps=0.5, l1_eps=10.0, batch_size=128, pca_components=17)
REG_PAPER = dict(dataset="cifar10", n_train=None, n_test=1000, nets=("cnn", "resnet10-nobn"), cnn_width=32,
                 epochs=100, lr=0.05, eps=(0.0, 4 / 255, 8 / 255, 16 / 255), at_steps=10, at_alpha=2 / 255)
PROP_PAPER = dict(dataset="cifar10", n_test=1000, l61_n_train=50000, l61_pool=1, l61_widths=(512, 512, 512),
                  l61_linear_steps=3000, l61_steps=3000, hessian_iters=500, nb_n_train=None, nb_width=512,
                  nb_epochs=300, nb_seeds=10, rank_n_train=None, rank_width=64, rank_epochs=100, rank_extra_epochs=15,
                  rank_every=100, rank_attack_steps=7, rank_eval_steps=20, ntk_n_train=None, ntk_epochs=30,
                  ntk_mlp_widths=(64, 256, 1024, 2048), ntk_max_entries=4_000_000_000,
                  ntk_conv_widths=(16, 32, 64, 128), ntk_wrn_widths=(1, 2, 4, 8), batch_size=128)


def _common(fn):
    for opt in reversed([
        click.option("--dataset", default=None, help="fashion-mnist (cpu preset), mnist, digits, cifar10, folder."),
        click.option("--root", type=click.Path(), default=None, help="Dataset root (see vision train --root)."),
        click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
                     help="Set any config field (repeatable), e.g. --set eps=8/255 --set st_epochs=5,10."),
        click.option("--fields", is_flag=True, help="List the config fields and their defaults, then exit."),
        click.option("--seed", type=int, default=None, help="Random seed (same seed => same numbers)."),
        click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda."),
        click.option("--out", type=click.Path(), default=None, help="Run directory to create (required)."),
        click.option("--overwrite", is_flag=True, help="Replace a finished run in --out (weights whose config is "
                     "unchanged are reused where the experiment saves them)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        threads_option,
    ]):
        fn = opt(fn)
    return fn


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_scalar(text: str, kind: Any, field: str) -> Any:
    from vision.evaluate import parse_eps

    text = text.strip()
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {field}: expected true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {field}: expected an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(parse_eps(text))
        except ValueError:
            raise ValueError(f"--set {field}: expected a number (or a fraction like 8/255), got {text!r}") from None
    return text


def _parse_value(text: str, kind: Any, field: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() == "none" and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_parse_scalar(t, item, field) for t in text.split(",") if t.strip())
    if origin is dict:
        raise ValueError(f"--set {field}: this field cannot be set from the command line")
    return _parse_scalar(text, kind, field)


def _config(cls: type, preset: dict[str, Any], opts: dict[str, Any], sets: tuple[str, ...]) -> Any:
    """``cls(**preset)``, then the flags given, then every ``--set FIELD=VALUE``."""
    values = dict(preset)
    values.update({k: v for k, v in opts.items() if v is not None})
    kinds = _field_types(cls)
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in kinds:
            raise ValueError(f"--set {key}: no such field; see --fields for the list")
        values[key] = _parse_value(text, kinds[key], key)
    return cls(**values)


def _show_fields(cls: type, preset: dict[str, Any]) -> None:
    base = cls()
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        v = preset.get(f.name, getattr(base, f.name))
        click.echo(f"{f.name} = {v!r}")


def _run(cls: type, runner: Any, preset: dict[str, Any], opts: dict[str, Any], sets: tuple[str, ...],
         fields: bool, out: str | None, overwrite: bool, quiet: bool) -> None:
    if fields:
        _show_fields(cls, preset)
        return
    if out is None:
        raise click.UsageError("missing option '--out'")
    cfg = _config(cls, preset, opts, sets)
    runner(cfg, out, overwrite=overwrite, progress=not quiet)
    click.echo((Path(out) / "claims.md").read_text(encoding="utf-8").rstrip())


@vision.group("theory")
def theory() -> None:
    """Theory experiments: teacher-student robustness (spec-001), regularisation of robustness (spec-004),
    properties of networks (spec-000 ch. 6)."""


@theory.command("teacher-student")
@PRESET
@click.option("--parts", default=None, help="Comma list of synthetic, images (default both).")
@_common
def teacher_student(preset, parts, sets, fields, out, overwrite, quiet, **opts) -> None:
    """Specialisation of students to a teacher, and Tables 1-4 of spec-001 (oracle-adversarial robust accuracy).

    \b
    Example (CPU preset, Fashion-MNIST subsets):
      advsim vision theory teacher-student --out runs/theory-ts --threads 1
    """
    from vision.theory.teacher_student import TeacherStudentConfig, run_teacher_student

    if parts:
        opts["parts"] = tuple(p.strip() for p in parts.split(",") if p.strip())
    _run(TeacherStudentConfig, run_teacher_student, TS_PAPER if preset == "paper" else {}, opts, sets, fields, out,
         overwrite, quiet)


@theory.command("regularisation")
@PRESET
@click.option("--at", type=click.Choice(["pgd", "fgsm"]), default=None, help="PGD-AT (default) or FGSM-AT (B.6).")
@_common
def regularisation(preset, sets, fields, out, overwrite, quiet, **opts) -> None:
    """Spec-004's statistics of adversarially trained vs standard networks (gaps, margins, singular values).

    \b
    Example (CPU preset):
      advsim vision theory regularisation --out runs/theory-reg --threads 1
    """
    from vision.theory.regularisation import RegularisationConfig, run_regularisation

    _run(RegularisationConfig, run_regularisation, REG_PAPER if preset == "paper" else {}, opts, sets, fields, out,
         overwrite, quiet)


@theory.command("properties")
@PRESET
@click.option("--parts", default=None, help="Comma list of lemma61, norm-bias, rank, ntk (default all).")
@_common
def properties(preset, parts, sets, fields, out, overwrite, quiet, **opts) -> None:
    """Spec-000 chapter 6: Lemma 6.1 minima and Hessians, norm-bias vs weight decay, effective rank with
    RankMin/RankMax, NTK change across widths.

    \b
    Example (CPU preset):
      advsim vision theory properties --out runs/theory-props --threads 1
    """
    from vision.theory.properties import PropertiesConfig, run_properties

    if parts:
        opts["parts"] = tuple(p.strip() for p in parts.split(",") if p.strip())
    _run(PropertiesConfig, run_properties, PROP_PAPER if preset == "paper" else {}, opts, sets, fields, out,
         overwrite, quiet)
