"""Thread choice (data_loaders.runtime) and the ``--threads`` option every compute command carries."""

from __future__ import annotations

import os

import click
import pytest
import torch
from click.testing import CliRunner

from cli import main
from data_loaders import runtime

# Commands that do no torch / parallel-Numba work, so they need no --threads. Every other command must have it.
NOT_COMPUTE = {("data", "inspect"), ("data", "check"), ("lob", "table"), ("lob", "report")}


def _commands(cmd: click.Command, path: tuple[str, ...] = ()):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield path, cmd


@pytest.fixture
def machine(monkeypatch):
    """Pretend the process may run on ``cores`` CPUs with 1-minute load ``load``."""

    def set_(cores: int, load: float) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load), raising=False)

    return set_


@pytest.mark.parametrize(("cores", "load", "free"), [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.57, 1), (2, 8.0, 1), (16, 3.2, 13), (16, 0.0, 16), (1, 0.0, 1),
])
def test_free_cores_are_cores_minus_rounded_load_at_least_one(machine, cores, load, free):
    machine(cores, load)
    assert runtime.available_cores() == cores
    assert runtime.free_cores() == free  # the table above is worked out by hand
    assert runtime.choose_threads(0) == free


def test_explicit_threads_are_capped_at_the_available_cores(machine):
    machine(4, 9.0)
    assert runtime.choose_threads(3) == 3
    assert runtime.choose_threads(64) == 4
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        runtime.choose_threads(-1)


def test_set_threads_sets_torch_and_numba(machine):
    """torch must keep the count even though Numba's first set_num_threads launches its pool (which resets the
    shared OpenMP thread count when done after torch's)."""
    import numba

    machine(2, 1.7)
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(0) == 1 and torch.get_num_threads() == 1 and numba.get_num_threads() == 1
        want = min(2, numba.config.NUMBA_NUM_THREADS)
        assert runtime.set_threads(2) == 2 and torch.get_num_threads() == 2 and numba.get_num_threads() == want
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_every_compute_command_has_threads_and_says_what_auto_does():
    seen = []
    for path, cmd in _commands(main):
        if path in NOT_COMPUTE:
            continue
        seen.append(path)
        opt = next((p for p in cmd.params if p.name == "threads"), None)
        assert opt is not None, f"advsim {' '.join(path)} lacks --threads (add @threads_option)"
        assert opt.default == 0 and "automatic" in opt.help and "load average" in opt.help
    assert {("lob", "demo"), ("lob", "attack"), ("vision", "train"), ("vision", "evaluate")} <= set(seen)
    res = CliRunner().invoke(main, ["lob", "attack", "--help"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "--threads" in text and "0 (the default) = automatic" in text
