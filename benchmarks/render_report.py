"""Render a stress report.html in headless Chromium (no network) and save a full-page screenshot to look at.

    python benchmarks/render_report.py runs/stress/report.html --out runs/stress/report.png
    python benchmarks/render_report.py --demo --out /tmp/stress-report.png   # makes a small report first

The page must render on its own: the browser runs with networking off, so anything not embedded would be missing.
Needs the Debian package ``chromium`` (/usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--hide-scrollbars", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("render_report: no chromium on PATH (apt-get install chromium)")


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 6000, timeout: float = 120.0) -> Path:
    """Screenshot ``html`` (a local file) into ``png`` with headless Chromium."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png.resolve()}", html.resolve().as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or not png.is_file():
        raise SystemExit(f"render_report: chromium failed ({res.returncode}): {res.stderr[-2000:]}")
    return png


def demo_report(out: Path) -> Path:
    """A small stress run of the shipped regressor on two synthetic half-hours (about a minute on a 2-core CPU)."""
    import torch

    from data_loaders.synthetic import write_days
    from lobsim.dataset import Market
    from lobsim.stress import load_config, stress
    from lobsim.stress.run import market_features

    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    cfg_path = root / "examples" / "stress" / "microprice_regressor.toml"
    cfg = load_config(cfg_path)
    paths = write_days(out / "data", "thick", days=2, hours=0.25, seed=0)
    market = Market.from_paths(paths, dt=cfg.input.dt, features=market_features(cfg))
    stress(cfg.model_path(), market, cfg, out=out, n=24, budgets=[1e3, 3e3, 1e4, 3e4, 1e5], max_iter=30,
           search_iter=100, universal_steps=60, universal_n=32)
    return out / "report.html"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", nargs="?", type=Path, help="the report.html to render")
    ap.add_argument("--demo", action="store_true", help="make a small stress report first (into a temp folder)")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=6000)
    a = ap.parse_args(argv)
    if a.demo == (a.html is not None):
        ap.error("give a report.html or --demo")
    with tempfile.TemporaryDirectory() as tmp:
        html = demo_report(Path(tmp)) if a.demo else a.html
        print(screenshot(html, a.out, a.width, a.height))


if __name__ == "__main__":
    sys.exit(main())
