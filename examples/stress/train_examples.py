"""Train and export the two example user models that `advsim lob stress` attacks (run from the repository root):

    python examples/stress/train_examples.py          # ~1-2 minutes on a 2-core CPU; needs the onnx extra + skl2onnx

1. gbm_ofi.onnx: a scikit-learn GradientBoostingClassifier on order-flow-imbalance features (gbm_ofi.toml),
   exported with skl2onnx (pip install skl2onnx). Its tree ensemble has no torch equivalent, so advsim runs it in
   onnxruntime and attacks it gradient-free.
2. microprice_regressor.onnx: a small torch MLP forecasting the microprice log return (basis points) from microprice
   returns and the best-level imbalance (microprice_regressor.toml), exported with torch.onnx.export.

Both read exactly what the stress test feeds them: the inputs come from lobsim.stress.model_inputs with the same
config. Training data: a synthetic thick market (3 days x 30 min, seed 1), not the days the README tour attacks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def training_data(config: Path, market_paths: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from lobsim.dataset import Market
    from lobsim.stress import load_config, model_inputs
    from lobsim.stress.run import market_features, targets

    cfg = load_config(config)
    market = Market.from_paths(market_paths, dt=cfg.input.dt, features=market_features(cfg))
    day, start = Market.refs_in(market.train_regions, n, seed=seed)
    return model_inputs(cfg, market, day, start), targets(market, cfg, day, start)


def train_gbm(paths: list[str]) -> None:
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier

    from lobsim.stress import load_config
    from lobsim.stress.run import classes_of

    cfg_path = HERE / "gbm_ofi.toml"
    x, change = training_data(cfg_path, paths, 20_000, seed=0)
    y = classes_of(change, load_config(cfg_path))
    clf = GradientBoostingClassifier(n_estimators=60, max_depth=3, learning_rate=0.1, random_state=0)
    clf.fit(x, y)
    print(f"gbm: train accuracy {clf.score(x, y):.3f}, class shares {np.bincount(y, minlength=3) / len(y)}")
    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=15)
    (HERE / "gbm_ofi.onnx").write_bytes(onx.SerializeToString())


def train_regressor(paths: list[str]) -> None:
    x, y = training_data(HERE / "microprice_regressor.toml", paths, 20_000, seed=0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x.shape[1] * x.shape[2], 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 1))
    X, Y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)[:, None]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx = torch.randint(0, X.shape[0], (256,), generator=gen)
        loss = torch.nn.functional.mse_loss(net(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(X)[:, 0].numpy()
    base = float(np.mean(np.abs(y - y.mean())))
    print(f"regressor: train MAE {np.mean(np.abs(pred - y)):.3f} bp (constant forecast {base:.3f} bp)")
    torch.onnx.export(net, (X[:2],), str(HERE / "microprice_regressor.onnx"), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)


def main() -> None:
    from data_loaders.synthetic import write_days

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(p) for p in write_days(tmp, "thick", days=3, hours=0.5, seed=1, start_date="2019-10-01")]
        train_gbm(paths)
        train_regressor(paths)


if __name__ == "__main__":
    main()
