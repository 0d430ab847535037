"""``advsim lob stress``: stress-test the user's own model file against order-book manipulation (issue 12)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.app import lob, threads_option

SYNTHETIC_MARKETS = ["thick", "thin", "thick-zi", "thin-zi"]


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated dollar amounts, e.g. 1e3,1e4,1e5") from None
    if not vals or any(v <= 0 for v in vals):
        raise click.BadParameter(f"{text!r}: budgets must be positive dollar amounts")
    return vals


@lob.command("stress")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("model", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", "data_paths", multiple=True, type=click.Path(exists=True),
              help="LOBSTER day(s): a message csv, a LOBSTER .zip, a folder or a glob; repeatable. Several days split "
                   "by day (first 80% train), one day by time; the test part is attacked.")
@click.option("--synthetic", type=click.Choice(SYNTHETIC_MARKETS), default=None,
              help="Instead of --data: simulate this synthetic market into OUT/data first.")
@click.option("--days", type=click.IntRange(min=1), default=2, show_default=True, help="Synthetic days.")
@click.option("--hours", type=click.FloatRange(min=0, max=6.5, min_open=True), default=0.5, show_default=True,
              help="Synthetic hours per day, from 09:30.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory: report.html, results.json, snippets.csv, curve.csv, figures.")
@click.option("--n", "n", type=click.IntRange(min=1), default=64, show_default=True, help="Test snippets attacked.")
@click.option("--budgets", default="1e3,1e4,1e5", show_default=True,
              help="Capital budgets in dollars for the curve (the attack runs once at the largest).")
@click.option("--attacks", default="random,capital,universal", show_default=True,
              help="Comma-separated: random (random orders), capital (the attack ensemble), universal (one pattern).")
@click.option("--max-iter", type=click.IntRange(min=1), default=100, show_default=True,
              help="Gradient-attack iterations (differentiable models).")
@click.option("--restarts", type=click.IntRange(min=1), default=2, show_default=True, help="Gradient-attack starts.")
@click.option("--search-iter", type=click.IntRange(min=1), default=400, show_default=True,
              help="Proposals of the gradient-free search (every model).")
@click.option("--universal-steps", type=click.IntRange(min=1), default=200, show_default=True,
              help="Optimisation steps of the universal pattern.")
@click.option("--universal-n", type=click.IntRange(min=1), default=64, show_default=True,
              help="Training snippets the universal pattern is fitted on.")
@click.option("--fill-model", type=click.Choice(["touch", "queue"]), default="touch", show_default=True,
              help="When the attacker's resting orders are filled (docs/threat-model.md).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the snippets and the attacks.")
@click.option("--device", default="cpu", show_default=True, help="cpu (user models run on the CPU), cuda ...")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in OUT.")
@threads_option
def lob_stress(config, model, data_paths, synthetic, days, hours, out_dir, n, budgets, attacks, max_iter, restarts,
               search_iter, universal_steps, universal_n, fill_model, seed, device, overwrite) -> None:
    """Stress-test YOUR model: CONFIG (TOML/JSON) says what it reads and returns; MODEL is a TorchScript (.pt),
    torch.export (.pt2) or ONNX (.onnx) file (default: the config's [model] file). Pickles are refused.

    Checks the model's input shape against CONFIG, then attacks the test snippets with random orders, the capital
    ensemble (gradient-free when the model has no gradients) and a universal pattern; writes OUT/report.html
    (self-contained) with the JSON/CSV it is built from. See docs/stress.md.
    """
    from data_loaders.rundir import finish_run, make_run_dir
    from lobsim.dataset import Market
    from lobsim.stress import load_config, stress_file
    from lobsim.stress.report import write_stress_report
    from lobsim.stress.run import StressSettings, market_features, run_stress

    if bool(data_paths) == bool(synthetic):
        raise click.UsageError("give either --data PATH (repeatable) or --synthetic MARKET")
    cfg = load_config(config)
    settings = StressSettings(n=n, budgets=_floats(budgets), attacks=[a.strip() for a in attacks.split(",")
                                                                       if a.strip()],
                              max_iter=max_iter, restarts=restarts, search_iter=search_iter,
                              universal_steps=universal_steps, universal_n=universal_n, fill_model=fill_model,
                              seed=seed, device=device)
    out = Path(out_dir)
    run_cfg = {"config": cfg.to_dict(), "model": str(model or cfg.model_path()), "settings": settings,
               "data": list(data_paths), "synthetic": synthetic}
    make_run_dir(out, run_cfg, overwrite=overwrite)
    if synthetic:
        from data_loaders.synthetic import write_days

        data_paths = tuple(str(p) for p in write_days(out / "data", synthetic, days=days, hours=hours, seed=seed,
                                                       progress=True))
    market = Market.from_paths(list(data_paths), dt=cfg.input.dt, features=market_features(cfg), progress=True)
    user = stress_file(model, cfg, market)
    click.echo(f"model: {user.loaded.source}; input {user.describe_input()}"
               + "".join(f"\n  note: {x}" for x in user.loaded.notes))
    result = run_stress(user, market, settings, progress=True)
    write_stress_report(out, result)
    finish_run(out, result.summary)
    for line in result.summary["summary"]:
        click.echo(line)
    click.echo(f"report: {out / 'report.html'}")
