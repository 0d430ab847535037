"""``advsim vision distill ...`` (robust distillation: ARD, Fast-ARD, baselines, the A1-A5 table) and
``advsim vision fewshot ...`` (meta-training with adversarial querying, robust few-shot evaluation)."""

from __future__ import annotations

import click

from cli.app import threads_option, vision


class _Radius(click.ParamType):
    """A radius as a float or a fraction such as 8/255."""

    name = "radius"

    def convert(self, value, param, ctx):  # noqa: ANN001 - click's signature
        from vision.evaluate import parse_eps

        if isinstance(value, float):
            return value
        try:
            return parse_eps(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


RADIUS = _Radius()


def _bool_opt(name: str, help_text: str):
    return click.option(f"--{name}/--no-{name}", default=None, help=help_text)


# ---- distillation ----------------------------------------------------------------------------------------------


@vision.group("distill")
def distill() -> None:
    """Robust distillation: ARD, Fast-ARD, KD, AT and free-AT students; the A1-A5 table (spec-000 chapter 4)."""


@distill.command("train")
@click.option("--preset", type=click.Choice(["cpu", "cifar10-paper"]), default=None,
              help="Starting settings (explicit options override): cpu = Fashion-MNIST-size defaults, "
                   "cifar10-paper = spec-000 4.7 (MobileNetV2, 200 epochs, t=30, PGD-10 8/255).")
@click.option("--method", type=click.Choice(["standard", "kd", "at", "ard", "fast-ard", "free"]), default=None,
              help="How the student is trained [default: ard]. kd/ard/fast-ard need --teacher.")
@click.option("--teacher", type=click.Path(exists=True, file_okay=False), default=None,
              help="Teacher run directory (from advsim vision train or vision distill train).")
@click.option("--dataset", default=None, help="digits, mnist, fashion-mnist, cifar10, folder [default: mnist].")
@click.option("--root", type=click.Path(), default=None, help="Dataset root (see advsim vision train --root).")
@click.option("--student", default=None, help="Student architecture from vision.models [default: mnist_small].")
@click.option("--eps", type=RADIUS, default=None, help="Linf radius of training and evaluation [default: 0.3].")
@click.option("--step-size", type=RADIUS, default=None, help="Training attack step [default: eps/4].")
@click.option("--attack-steps", type=int, default=None, help="PGD steps of ARD / AT [default: 10].")
@click.option("--attack-loss", type=click.Choice(["ce", "kl"]), default=None,
              help="ARD attack objective: ce = CE with the label (Def. 4.1), kl = KL to the teacher [default: ce].")
@click.option("--replays", type=int, default=None, help="m of Fast-ARD / free training [default: 4].")
@_bool_opt("carry", "Fast-ARD/free: keep the perturbation across batches [default: on].")
@click.option("--temperature", type=float, default=None, help="Distillation temperature t [default: 30].")
@click.option("--alpha", type=float, default=None, help="Weight of the KL term (1 - alpha on CE) [default: 1].")
@click.option("--epochs", type=int, default=None, help="Epochs (Fast-ARD/free: the thesis uses 200/m).")
@click.option("--batch-size", type=int, default=None, help="Minibatch size [default: 128].")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None, help="[default: sgd].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: 0.1].")
@click.option("--schedule", type=click.Choice(["cyclic", "piecewise", "cosine", "constant"]), default=None,
              help="piecewise = /10 at 50% and 75% of training [default: piecewise].")
@click.option("--weight-decay", type=float, default=None, help="[default: 2e-4].")
@_bool_opt("augment", "Random crop (pad 4) + flip [default: on for cifar10].")
@click.option("--n-train", type=int, default=None, help="Use the first N shuffled training images.")
@click.option("--n-test", type=int, default=None, help="Test images for the final PGD-20 check [default: 1000].")
@click.option("--eval-steps", type=int, default=None, help="PGD steps of the final check [default: 20].")
@click.option("--amp", type=click.Choice(["auto", "bf16", "off"]), default=None, help="[default: auto].")
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option("--device", default=None, help="auto, cpu, cuda [default: auto].")
@click.option("--out", type=click.Path(), required=True, help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def distill_train(preset, out, overwrite, quiet, **opts) -> None:
    """Train one student (ARD, Fast-ARD, KD, AT, free AT or natural) and write a run directory.

    \b
    Example (CPU, minutes):
      advsim vision train --dataset fashion-mnist --model mnist_large --defense pgd --eps 0.1 --attack-steps 5 \\
          --optimizer adam --lr-max 1e-3 --schedule cosine --weight-decay 0 --epochs 3 --n-train 10000 --out runs/t
      advsim vision distill train --preset cpu --dataset fashion-mnist --eps 0.1 --method ard --teacher runs/t \\
          --out runs/ard
    """
    from vision.distill.run import config_from_preset, distill_run

    m = distill_run(config_from_preset(preset, **opts), out, overwrite=overwrite, progress=not quiet)
    click.echo(f"{out}: {m['method']} {m['model_name']} ({m['params']:,} params, {m['madds'] / 1e6:.2f}M MAdds), "
               f"{m['epochs_run']} epochs, {m['seconds_per_epoch']:.1f} s/epoch on {m['device']}; test clean "
               f"{m['test_clean_acc']:.4f}, {m['test_pgd']}: {m['test_pgd_acc']:.4f}")


@distill.command("table")
@click.option("--dataset", default=None, help="[default: fashion-mnist].")
@click.option("--root", type=click.Path(), default=None, help="Dataset root.")
@click.option("--teacher-model", default=None, help="[default: mnist_large].")
@click.option("--student-model", default=None, help="[default: mnist_small].")
@click.option("--eps", type=RADIUS, default=None, help="[default: 0.1].")
@click.option("--attack-steps", type=int, default=None, help="PGD steps of AT / ARD students [default: 10].")
@click.option("--teacher-attack-steps", type=int, default=None, help="PGD steps of the AT teacher [default: 5].")
@click.option("--temperature", type=float, default=None, help="[default: 30].")
@click.option("--replays", type=int, default=None, help="m of Fast-ARD / free [default: 4].")
@click.option("--teacher-epochs", type=int, default=None, help="[default: 3].")
@click.option("--student-epochs", type=int, default=None, help="[default: 4]; replay methods run this / m.")
@click.option("--batch-size", type=int, default=None, help="[default: 100].")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None, help="[default: adam].")
@click.option("--lr", type=float, default=None, help="[default: 1e-3].")
@click.option("--schedule", type=click.Choice(["cyclic", "piecewise", "cosine", "constant"]), default=None,
              help="[default: cosine].")
@click.option("--weight-decay", type=float, default=None, help="[default: 0].")
@_bool_opt("augment", "Random crop (pad 4) + flip [default: on for cifar10].")
@click.option("--n-train", type=int, default=None, help="[default: 10000]; 0 = all training images.")
@click.option("--n-test", type=int, default=None, help="[default: 1000].")
@click.option("--eval-steps", type=int, default=None, help="PGD steps of the evaluation [default: 20].")
@click.option("--rows", default=None, help="Comma-separated subset of rows (e.g. student-at,ard-at-teacher).")
@click.option("--seed", type=int, default=None, help="[default: 0].")
@click.option("--device", default=None, help="auto, cpu, cuda [default: auto].")
@click.option("--out", type=click.Path(), required=True, help="Study directory (finished sub-runs are reused).")
@click.option("--overwrite", is_flag=True, help="Redo every run and the table.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def distill_table(out, overwrite, quiet, rows, n_train, **opts) -> None:
    """Teachers (natural, AT) and eight students on one dataset: the A1-A5 table with PGD-20, params, MAdds, time.

    \b
    Example (the CPU table of docs/vision-distill.md, about 40 CPU-minutes):
      advsim vision distill table --out runs/ard-fashion --threads 1
    """
    from dataclasses import fields

    from vision.distill.study import ARDStudyConfig, ard_study

    cfg = ARDStudyConfig(**{k: v for k, v in opts.items() if v is not None})
    if n_train is not None:
        cfg.n_train = None if n_train == 0 else n_train
    if rows:
        cfg.rows = tuple(r.strip() for r in rows.split(",") if r.strip())
    assert {f.name for f in fields(cfg)} >= set(opts)
    res = ard_study(cfg, out, overwrite=overwrite, progress=not quiet)
    click.echo(res["markdown"].rstrip())
    click.echo(f"written: {out}/ard_table.md, .csv, .json, claims.json, ard_table.png")


# ---- few-shot --------------------------------------------------------------------------------------------------


@vision.group("fewshot")
def fewshot() -> None:
    """Robust few-shot learning: meta-training with adversarial querying, robust evaluation (spec-000 chapter 5)."""


@fewshot.command("train")
@click.option("--preset", type=click.Choice(["cpu", "cifar-fs-paper"]), default=None,
              help="Starting settings (explicit options override): cpu = the stand-in defaults, cifar-fs-paper = "
                   "the adversarial-querying code's R2-D2 setting (needs --root of CIFAR-FS).")
@click.option("--dataset", type=click.Choice(["mnist-fashion", "cifar10-6-4", "cifar-fs", "mini-imagenet",
                                              "omniglot"]), default=None,
              help="mnist-fashion / cifar10-6-4 are documented stand-ins; the benchmarks need --root "
                   "[default: mnist-fashion].")
@click.option("--root", type=click.Path(), default=None, help="Folder of cifar-fs / mini-imagenet / omniglot.")
@click.option("--per-class", type=int, default=None, help="Images kept per class, 0 = all [default: 600].")
@click.option("--backbone", type=click.Choice(["conv4", "r2d2", "resnet12"]), default=None, help="[default: conv4].")
@click.option("--width", type=int, default=None, help="conv4 channels [default: 32].")
@click.option("--head", type=click.Choice(["ridge", "proto", "svm", "maml"]), default=None,
              help="R2-D2 ridge, ProtoNet, MetaOptNet SVM, MAML with an FC-only inner loop [default: ridge].")
@click.option("--training", type=click.Choice(["natural", "aq", "trades"]), default=None,
              help="natural, adversarial querying, meta-TRADES [default: natural].")
@click.option("--way", type=int, default=None, help="[default: 5].")
@click.option("--shot", type=int, default=None, help="Training shots [default: 5].")
@click.option("--query", type=int, default=None, help="Training queries per class [default: 6].")
@click.option("--episodes-per-batch", type=int, default=None, help="[default: 4].")
@click.option("--batches", type=int, default=None, help="Batches per epoch [default: 100].")
@click.option("--epochs", type=int, default=None, help="[default: 4].")
@click.option("--eps", type=RADIUS, default=None, help="Linf radius of the query attack [default: 0.2].")
@click.option("--step-size", type=RADIUS, default=None, help="[default: eps/4].")
@click.option("--attack-steps", type=int, default=None, help="PGD steps on the queries [default: 7].")
@click.option("--trades-coef", type=float, default=None, help="meta-TRADES 1/lambda [default: 1].")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None, help="[default: adam].")
@click.option("--lr", type=float, default=None, help="[default: 1e-3].")
@click.option("--schedule", type=click.Choice(["cosine", "constant", "metaoptnet"]), default=None,
              help="[default: cosine].")
@click.option("--weight-decay", type=float, default=None, help="[default: 0].")
@click.option("--ridge-lambda", type=float, default=None, help="R2-D2 regulariser [default: 50].")
@click.option("--svm-cost", type=float, default=None, help="SVM C [default: 0.1].")
@click.option("--maml-steps", type=int, default=None, help="MAML inner steps [default: 10].")
@click.option("--maml-lr", type=float, default=None, help="MAML inner step size [default: 0.01].")
@click.option("--seed", type=int, default=None, help="[default: 0].")
@click.option("--device", default=None, help="auto, cpu, cuda [default: auto].")
@click.option("--out", type=click.Path(), required=True, help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def fewshot_train(preset, out, overwrite, quiet, per_class, **opts) -> None:
    """Meta-train a few-shot learner on base-class episodes (natural, AQ or meta-TRADES).

    \b
    Example (CPU stand-in, minutes):
      advsim vision fewshot train --head ridge --training aq --out runs/aq-ridge
      advsim vision fewshot evaluate runs/aq-ridge --episodes 100
    """
    from vision.fewshot.train import config_from_preset, fewshot_train_run

    cfg = config_from_preset(preset, **opts)
    if per_class is not None:
        cfg.per_class = None if per_class == 0 else per_class
    m = fewshot_train_run(cfg, out, overwrite=overwrite, progress=not quiet)
    last = m["history"][-1]
    click.echo(f"{out}: {cfg.training} {cfg.head} on {m['data']['source']}, {m['epochs_run']} epochs in "
               f"{m['train_seconds']:.1f} s on {m['device']}; last epoch query loss {last['loss']:.4f}, "
               f"accuracy {last['query_acc']:.4f}")


@fewshot.command("evaluate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--shots", default="1,5", show_default=True, help="Comma-separated shots to evaluate.")
@click.option("--way", type=int, default=None, help="Classes per episode (default: the run's).")
@click.option("--query", type=int, default=15, show_default=True, help="Query images per class.")
@click.option("--episodes", type=int, default=200, show_default=True, help="Test episodes per shot.")
@click.option("--batch", type=int, default=10, show_default=True, help="Episodes attacked together.")
@click.option("--attack", "attacks", default="pgd,mifgsm", show_default=True,
              help="Comma-separated query attacks: pgd, mifgsm (none = clean only).")
@click.option("--eps", type=RADIUS, default=None, help="Linf radius (default: the run's training eps).")
@click.option("--steps", type=int, default=20, show_default=True, help="Attack iterations (PGD-20, MI-FGSM-20).")
@click.option("--step-size", type=RADIUS, default=None, help="Default: eps/4 (PGD), eps/steps (MI-FGSM).")
@click.option("--restarts", type=int, default=1, show_default=True, help="PGD random restarts.")
@click.option("--split", default="novel", show_default=True, help="Class split to draw episodes from.")
@click.option("--seed", type=int, default=0, show_default=True, help="Episode and attack seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def fewshot_evaluate(run, shots, attacks, quiet, **opts) -> None:
    """Natural and robust accuracy on test episodes; the queries are attacked after the head is fitted."""
    from vision.fewshot.evaluate import evaluate_fewshot_run

    try:
        shot_list = tuple(int(s) for s in shots.split(",") if s.strip())
    except ValueError as exc:
        raise click.BadParameter(f"--shots must be comma-separated integers, got {shots!r}") from exc
    atk = tuple(a.strip() for a in attacks.split(",") if a.strip())
    for r in evaluate_fewshot_run(run, shots=shot_list, attacks=atk, progress=not quiet, **opts):
        parts = [f"clean {100 * r['clean_acc']:.2f} ± {100 * r['clean_ci95']:.2f}"]
        parts += [f"{a} {100 * r[f'{a}_acc']:.2f} ± {100 * r[f'{a}_ci95']:.2f}" for a in atk if a != "none"]
        click.echo(f"{run}: {r['way']}-way {r['shot']}-shot, {r['episodes']} episodes, eps={r['eps']:.4g}: "
                   + ", ".join(parts) + f" ({r['seconds']:.1f} s)")


@fewshot.command("table")
@click.option("--dataset", type=click.Choice(["mnist-fashion", "cifar10-6-4", "cifar-fs", "mini-imagenet",
                                              "omniglot"]), default="mnist-fashion", show_default=True,
              help="Dataset (mnist-fashion / cifar10-6-4 are stand-ins; the benchmarks need --root).")
@click.option("--root", type=click.Path(), default=None, help="Folder of cifar-fs / mini-imagenet / omniglot.")
@click.option("--heads", default="ridge,proto,svm,maml", show_default=True, help="Heads to train (natural + AQ).")
@click.option("--trades", "trades_coefs", default="1", show_default=True,
              help="meta-TRADES 1/lambda values for the ridge head (empty: none).")
@click.option("--backbone", type=click.Choice(["conv4", "r2d2", "resnet12"]), default="conv4", show_default=True)
@click.option("--width", type=int, default=32, show_default=True, help="conv4 channels.")
@click.option("--eps", type=RADIUS, default="0.2", show_default=True, help="Linf radius (training and evaluation).")
@click.option("--attack-steps", type=int, default=7, show_default=True, help="PGD steps on training queries.")
@click.option("--way", type=int, default=5, show_default=True)
@click.option("--train-shot", type=int, default=5, show_default=True)
@click.option("--train-query", type=int, default=6, show_default=True)
@click.option("--episodes-per-batch", type=int, default=4, show_default=True)
@click.option("--batches", type=int, default=40, show_default=True, help="Batches per epoch.")
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="adam", show_default=True,
              help="sgd = Nesterov SGD, momentum 0.9.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--schedule", type=click.Choice(["cosine", "constant", "metaoptnet"]), default="cosine",
              show_default=True, help="metaoptnet = x1 / 0.06 / 0.012 / 0.0024 from epochs 0 / 20 / 40 / 50.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--per-class", type=int, default=600, show_default=True, help="Images per class, 0 = all.")
@click.option("--shots", default="1,5", show_default=True, help="Evaluation shots.")
@click.option("--query", type=int, default=10, show_default=True, help="Evaluation queries per class.")
@click.option("--episodes", type=int, default=25, show_default=True, help="Novel episodes per shot.")
@click.option("--steps", type=int, default=20, show_default=True, help="PGD / MI-FGSM iterations.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(), required=True, help="Study directory (finished runs are reused).")
@click.option("--overwrite", is_flag=True, help="Redo every run and evaluation.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
def fewshot_table(out, overwrite, quiet, heads, trades_coefs, shots, train_shot, train_query, per_class, query,
                  episodes, steps, **opts) -> None:
    """Natural and AQ meta-learners for each head (+ meta-TRADES), evaluated on novel episodes: Q1 and the AQ table.

    \b
    Example (the CPU table of docs/vision-fewshot.md):
      advsim vision fewshot table --out runs/fewshot-mnist --threads 1
    """
    from vision.fewshot.study import FewShotStudyConfig, fewshot_study
    from vision.fewshot.train import FewShotConfig

    def ints(text: str, flag: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError as exc:
            raise click.BadParameter(f"{flag} must be comma-separated integers, got {text!r}") from exc

    try:
        coefs = tuple(float(v) for v in trades_coefs.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"--trades must be comma-separated numbers, got {trades_coefs!r}") from exc
    train = FewShotConfig(shot=train_shot, query=train_query, per_class=None if per_class == 0 else per_class,
                          **opts)
    cfg = FewShotStudyConfig(train=train, heads=tuple(h.strip() for h in heads.split(",") if h.strip()),
                             trades_coefs=coefs, shots=ints(shots, "--shots"), query=query, episodes=episodes,
                             steps=steps)
    res = fewshot_study(cfg, out, overwrite=overwrite, progress=not quiet)
    click.echo(res["markdown"].rstrip())
    click.echo(f"written: {out}/fewshot_table.md, .csv, .json, claims.json, fewshot_table.png")
