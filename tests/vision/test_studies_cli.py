"""``advsim vision study ...``: a tiny CLI round trip (run directory, printed table) and one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main


def test_hierarchy_command_round_trip(tmp_path):
    out = tmp_path / "h"
    args = ["vision", "study", "hierarchy", "--dataset", "digits", "--hierarchy", "low:0,1,2,3,4;high:5,6,7,8,9",
            "--families", "flat", "--defenses", "standard", "--n-train", "300", "--n-test", "40", "--epochs", "2",
            "--eps", "26/255", "--attack-steps", "3", "--device", "cpu", "--out", str(out), "--quiet",
            "--threads", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "hier. PGD-3 meta %" in res.output and "| flat | standard |" in res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eps"] == pytest.approx(26 / 255) and cfg["families"] == ["flat"] and cfg["n_train"] == 300
    res = CliRunner().invoke(main, args)  # a finished run is not overwritten silently
    assert res.exit_code == 1 and "already holds a finished run" in res.output


@pytest.mark.parametrize("args,msg", [
    (["soar", "--methods", "standard,mart"], "unknown method"),
    (["hierarchy", "--dataset", "digits"], "no built-in hierarchy"),
    (["hierarchy", "--dataset", "digits", "--hierarchy", "a:0,1"], "is in no group"),
    (["frequency", "--optimizers", "lion"], "unknown optimizer"),
    (["frequency", "--l2-eps", "0.1,x"], "comma list"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, msg):
    res = CliRunner().invoke(main, ["vision", "study", *args, "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert res.exit_code != 0
    assert msg in res.output and "Traceback" not in res.output
