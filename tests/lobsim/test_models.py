"""Model shapes and presets, the pooling layer, and attack_mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lobsim.models import AvgPool, ModelConfig, attack_mode, build_model, count_parameters


@pytest.mark.parametrize("kind", ["linear", "mlp", "lstm"])
def test_small_models_map_windows_to_three_logits(kind: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, preset="small", window=6000))
    x = torch.randn(4, 6000)
    assert model(x).shape == (4, 3)


def test_paper_preset_sizes() -> None:
    assert ModelConfig(kind="mlp", preset="paper").resolved().hidden == [8000] * 4
    with torch.device("meta"):  # no memory: just the parameter count of the thesis MLP
        mlp = build_model(ModelConfig(kind="mlp", preset="paper", window=6000))
    assert count_parameters(mlp) == 6000 * 8000 + 8000 + 3 * (8000 * 8000 + 8000) + 8000 * 3 + 3
    lin = build_model(ModelConfig(kind="linear", preset="paper", window=6000))
    assert count_parameters(lin) == 6000 * 3 + 3
    lstm = build_model(ModelConfig(kind="lstm", preset="paper", window=6000))
    assert (lstm.lstm.hidden_size, lstm.lstm.num_layers, lstm.pool.factor) == (100, 3, 1)
    small = ModelConfig(kind="lstm", preset="small", window=6000).resolved()
    assert (small.pool, small.hidden, small.layers) == (20, [32], 1)


def test_avg_pool_drops_oldest_steps_and_averages() -> None:
    x = torch.arange(2 * 23, dtype=torch.float64).reshape(2, 23)
    out = AvgPool(23, 5)(x)
    assert out.shape == (2, 4)
    expected = torch.stack([x[:, 3 + 5 * k : 8 + 5 * k].mean(1) for k in range(4)], dim=1)
    torch.testing.assert_close(out, expected)
    assert AvgPool(23, 1)(x) is x


def test_lstm_reads_the_window_and_gradients_reach_kept_steps() -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(kind="lstm", preset="small", window=105, pool=10))
    x = torch.randn(3, 105, requires_grad=True)
    model(x).sum().backward()
    assert torch.all(x.grad[:, :5] == 0)  # dropped by pooling
    assert torch.all(x.grad[:, 5:].abs().sum(0) > 0)
    # The readout depends on the whole (pooled) sequence, not just its last step.
    y = x.detach().clone()
    y[:, 10:20] += 3.0
    assert not torch.allclose(model(y), model(x.detach()))


def test_attack_mode_zeroes_dropout_and_restores() -> None:
    torch.manual_seed(2)
    mlp = build_model(ModelConfig(kind="mlp", preset="small", window=40, hidden=[16, 16], dropout=0.5))
    lstm = build_model(ModelConfig(kind="lstm", preset="small", window=40, pool=4, hidden=[8], layers=2, dropout=0.3))
    x = torch.randn(5, 40)
    for model in (mlp, lstm):
        model.eval()
        ref = model(x)
        with attack_mode(model) as m:
            assert m.training and all(mod.training for mod in m.modules())
            assert all(d.p == 0 for d in m.modules() if isinstance(d, nn.Dropout))
            assert all(r.dropout == 0 for r in m.modules() if isinstance(r, nn.LSTM))
            torch.testing.assert_close(m(x), ref)  # same function as eval mode
            xi = x.clone().requires_grad_(True)
            m(xi).sum().backward()
            assert xi.grad is not None
        assert not model.training and not any(mod.training for mod in model.modules())
    assert [d.p for d in mlp.modules() if isinstance(d, nn.Dropout)] == [0.5, 0.5]
    assert lstm.lstm.dropout == 0.3
    mlp.train()
    with attack_mode(mlp):
        pass
    assert mlp.training


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(kind="cnn")
    with pytest.raises(ValueError, match="preset"):
        ModelConfig(preset="huge")
    with pytest.raises(ValueError, match="pool"):
        build_model(ModelConfig(kind="lstm", window=10, pool=20))
    cfg = ModelConfig(kind="mlp", window=30, hidden=[7])
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
