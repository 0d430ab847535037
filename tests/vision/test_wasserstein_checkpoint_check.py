"""benchmarks/wasserstein_checkpoint_check.py reads only weights-only checkpoints of the WK17 layout, with clear
errors for anything else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "wasserstein_checkpoint_check.py"
_spec = importlib.util.spec_from_file_location("wasserstein_checkpoint_check", _PATH)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def test_loads_the_published_layouts_and_refuses_others(tmp_path):
    torch.manual_seed(0)
    ref = check.wk17_net()
    x = torch.rand(3, 1, 28, 28)
    for name, blob in (("plain", ref.state_dict()),
                       ("net", {"net": {f"module.{k}": v for k, v in ref.state_dict().items()}, "acc": 99.0}),
                       ("sd", {"state_dict": [ref.state_dict()], "epoch": 3})):
        torch.save(blob, tmp_path / f"{name}.pth")
        net = check.load_checkpoint(tmp_path / f"{name}.pth")
        assert torch.equal(net(x), ref.eval()(x))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="junk.pth: not a weights-only"):
        check.load_checkpoint(tmp_path / "junk.pth")
    torch.save({"0.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(SystemExit, match="other.pth: not the WK17 MNIST network"):
        check.load_checkpoint(tmp_path / "other.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"net": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(SystemExit, match="evil.pth: not a weights-only"):
        check.load_checkpoint(tmp_path / "evil.pth")
