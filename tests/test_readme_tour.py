"""The README's tour runs end to end, in order, at a tiny size (issue 19: every README command runs when pasted).

How it works (extend it when you add tour lines):

- Every fenced ```bash block of README.md that directly follows a line starting with ``<!-- tour`` is a tour
  block. Each of its lines (``# ...`` comments stripped, ``\\`` continuations joined) must be an ``advsim ...``
  command; the lines run in order through click's CliRunner, in one fresh temporary folder (the "fresh clone":
  README.md and examples/ are copied there), with the parquet cache in that folder too.
- Globs (``*``, ``?``) in arguments are expanded as the shell would, in that folder, after the earlier lines ran.
- ``TINY`` below maps a command (its words after ``advsim``) to flags that make it tiny: a flag already on the
  line gets the tiny value, a missing one is appended (a value of None: a switch such as ``--dry-run``).
  ``--threads 1`` and ``--device cpu`` are added to every command that accepts them. A new tour command without
  an entry runs at its full size: give it one (the whole test should stay within ~30 s on a 2-core CPU).
- Everything else stays as written, so the README's flag names and paths are what is tested.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
from pathlib import Path

import click
import torch
from click.testing import CliRunner

from cli import main

REPO = Path(__file__).resolve().parents[1]

TINY: dict[tuple[str, ...], dict[str, str | None]] = {
    ("lob", "synth"): {"--days": "2", "--hours": "0.1"},
    ("lob", "train"): {"--dt": "0.1", "--window": "20", "--horizon": "5", "--steps": "4", "--batch": "16",
                       "--eval-n": "40"},
    ("lob", "evaluate"): {"--n": "40"},
    ("lob", "attack"): {"--n": "4", "--max-iter": "3", "--step-shares": "3", "--steps": "3", "--train-n": "8"},
    ("lob", "demo"): {"--preset": "tiny"},
    ("lob", "sweep"): {"--dry-run": None},  # a real sweep cell takes ~40 s here; tests/lobsim cover the runs
    ("lob", "stress"): {"--n": "4", "--max-iter": "3", "--restarts": "1", "--search-iter": "20",
                        "--universal-steps": "3", "--universal-n": "4"},
    ("lob", "certify"): {"--n": "4", "--iterations": "4"},
    ("vision", "train"): {"--epochs": "1", "--n-train": "256", "--n-test": "30", "--batch-size": "64"},
    ("vision", "evaluate"): {"--n": "10", "--steps": "2", "--restarts": "1"},
}


def tour_lines(readme: str) -> list[str]:
    """The commands of the tour blocks (see the module docstring)."""
    lines: list[str] = []
    for block in re.findall(r"^<!-- tour[^\n]*\n```bash\n(.*?)^```", readme, flags=re.S | re.M):
        text = block.replace("\\\n", " ")
        for raw in text.splitlines():
            cmd = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
            if cmd:
                lines.append(cmd)
    return lines


def _command(words: list[str]) -> tuple[tuple[str, ...], click.Command]:
    cmd: click.Command = main
    path: list[str] = []
    for w in words:
        if not isinstance(cmd, click.Group) or w not in cmd.commands:
            break
        cmd = cmd.commands[w]
        path.append(w)
    return tuple(path), cmd


def tiny_args(line: str) -> list[str]:
    """The CLI arguments of one tour line at the tiny size (globs expanded in the current folder)."""
    words = shlex.split(line)
    assert words[0] == "advsim", f"tour line is not an advsim command: {line}"
    args: list[str] = []
    for w in words[1:]:
        hits = sorted(glob.glob(w)) if any(c in w for c in "*?") else []
        args += hits or [w]
    path, cmd = _command(args)
    assert not isinstance(cmd, click.Group), f"tour line names no command: {line}"
    params = {opt for p in cmd.params for opt in p.opts}
    for flag, value in TINY.get(path, {}).items():
        if flag not in params:
            continue
        if value is None:
            args += [] if flag in args else [flag]
        elif flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    for flag, value in (("--threads", "1"), ("--device", "cpu")):
        if flag in params and flag not in args:
            args += [flag, value]
    return args


def test_tour_parser_finds_the_readme_lines():
    lines = tour_lines((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(lines) >= 10 and all(ln.startswith("advsim ") for ln in lines)
    words = [tuple(shlex.split(ln)[1:3]) for ln in lines]
    for needed in [("lob", "synth"), ("lob", "train"), ("lob", "table"), ("lob", "report"), ("vision", "train")]:
        assert needed in words, needed
    assert not any("PATH" in ln or "..." in ln for ln in lines)  # no placeholders
    sample = tour_lines("x\n<!-- tour -->\n```bash\nadvsim lob evaluate runs/a  # comment\n# only a comment\n"
                        "advsim lob table a \\\n  b --out t\n```\n```bash\nadvsim not a tour line\n```\n")
    assert sample == ["advsim lob evaluate runs/a", "advsim lob table a    b --out t"]


def test_readme_tour_runs_in_order_at_a_tiny_size(tmp_path, monkeypatch):
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    if (REPO / "examples").is_dir():
        shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVSIM_CACHE", str(tmp_path / ".cache"))
    threads = torch.get_num_threads()
    runner = CliRunner()
    try:
        for line in tour_lines((tmp_path / "README.md").read_text(encoding="utf-8")):
            args = tiny_args(line)
            res = runner.invoke(main, args)
            assert res.exit_code == 0, f"tour line failed: {line}\n(ran: advsim {' '.join(args)})\n{res.output}"
    finally:
        torch.set_num_threads(threads)
    # the tour's outputs exist where the README says
    assert sorted(p.name for p in (tmp_path / "data" / "thick").glob("*_message_10.csv"))
    for f in ("runs/mlp/metrics.json", "runs/table/table-3.1.md", "runs/report/report.md",
              "runs/digits-fast/weights.safetensors"):
        assert (tmp_path / f).is_file(), f
    report = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "Transfer" in report and "fooled / eligible" in report and "![" in report
    assert os.listdir(tmp_path / "runs" / "digits-fast")
