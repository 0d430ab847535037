"""The small provable-robustness studies of spec-003 chapter 3 (checklist C7, C8, C9), each one command.

- ``toy``: the 2-D toy (12 points in [0, 1]^2 at least 0.16 apart in l_inf, random labels, FC 2-100-100-100-100-2,
  Adam 1e-3, full batch, eps = 0.08); target: zero certified robust error. Writes the decision regions with the
  eps-boxes as a figure.
- ``har``: the HAR-sized 561-500-6 MLP trained normally and with the robust loss, reporting clean, FGSM, PGD and
  certified error (Table 3.1's HAR rows). HAR itself is not available here: the data are a synthetic stand-in
  with HAR's shapes (561 features in [-1, 1], 6 classes, 7,352 / 2,947 examples) drawn from a seeded
  class-conditional model (a 20-dimensional latent class mean plus noise, through a random linear map and tanh).
- ``tightness``: the dual bound against the exact LP relaxation (scipy HiGHS) on small networks: fixed slopes
  (what training and certification use), optimised slopes (which reach the LP with the same layer bounds), the LP
  with LP-tightened layer bounds, and the best attack; plus the naive layer-wise interval bounds against the dual
  bounds and the true output range on the random 2-100-100-100-2 network of Fig. 3.4.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders.rundir import atomic_write_text, finish_run, make_run_dir, write_json

from .dual import DualNetwork
from .loss import certify_batch, robust_loss

__all__ = ["StudyConfig", "STUDIES", "run_study", "toy_points", "har_standin", "mlp", "interval_bounds"]

STUDIES = ("toy", "har", "tightness")


@dataclass
class StudyConfig:
    """One study run. ``extra`` overrides study-specific settings (see each study's defaults in the code)."""

    study: str = "toy"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Fully connected ReLU network with the given layer sizes (input first, logits last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FromUnit(nn.Module):
    """``net(lo + (hi - lo) * u)``: lets [0, 1]-box attacks run on data that lives in [lo, hi]."""

    def __init__(self, net: nn.Module, lo: float, hi: float) -> None:
        super().__init__()
        self.net, self.lo, self.scale = net, float(lo), float(hi - lo)

    def forward(self, u: Tensor) -> Tensor:
        return self.net(self.scale * u + self.lo)


def toy_points(n: int = 12, sep: float = 0.16, seed: int = 0, norm: str = "linf") -> tuple[Tensor, Tensor]:
    """``n`` points in [0, 1]^2 at least ``sep`` apart in ``norm`` ("linf" or "l1"; rejection sampling), random labels.

    The thesis' toy (C8) draws points more than 2r = 0.32 apart in l1 and certifies at eps = r/2 = 0.08: l1 > 4 eps
    keeps the l_inf boxes of any two points apart (or touching only at a corner), which zero robust error needs.
    """
    if norm not in ("linf", "l1"):
        raise ValueError(f"toy_points: norm must be 'linf' or 'l1', got {norm!r}")
    dist = (lambda d: d.max()) if norm == "linf" else (lambda d: d.sum())
    g = torch.Generator().manual_seed(seed)
    pts: list[Tensor] = []
    tries = 0
    while len(pts) < n:
        tries += 1
        if tries > 100000:
            raise ValueError(f"cannot place {n} points {sep} apart in the unit square")
        p = torch.rand(2, generator=g)
        if all(float(dist((p - q).abs())) >= sep for q in pts):
            pts.append(p)
    y = torch.randint(0, 2, (n,), generator=g)
    return torch.stack(pts), y


def har_standin(n_train: int = 7352, n_test: int = 2947, dim: int = 561, classes: int = 6, latent: int = 20,
                noise: float = 1.5, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Synthetic data with HAR's shapes: x = tanh(A (mu_y + noise * s) + 0.1 e) in [-1, 1]^dim."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, latent, generator=g) / latent ** 0.5
    mu = torch.randn(classes, latent, generator=g)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, classes, (n,), generator=g)
        s = mu[y] + noise * torch.randn(n, latent, generator=g)
        x = torch.tanh(s @ a.T + 0.1 * torch.randn(n, dim, generator=g))
        return x, y

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return xtr, ytr, xte, yte


def interval_bounds(net: nn.Sequential, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Naive layer-wise interval bounds (eq. 3.30/3.31) through Linear/ReLU layers."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            c, r = (lo + hi) / 2, (hi - lo) / 2
            c = F.linear(c, layer.weight, layer.bias)
            r = F.linear(r, layer.weight.abs())
            lo, hi = c - r, c + r
        elif isinstance(layer, nn.ReLU):
            lo, hi = lo.clamp_min(0), hi.clamp_min(0)
        else:
            raise ValueError(f"interval bounds support Linear and ReLU layers, got {type(layer).__name__}")
    return lo, hi


def _attack_errors(net: nn.Module, x: Tensor, y: Tensor, eps: float, lo: float, hi: float, steps: int,
                   restarts: int, seed: int) -> dict[str, float]:
    """FGSM and PGD error of ``net`` on data in [lo, hi] at radius eps (attacks run in [0, 1] coordinates)."""
    from vision.evaluate import build_attack, robust_accuracy

    wrapped = FromUnit(net, lo, hi)
    u = (x - lo) / (hi - lo)
    e = eps / (hi - lo)
    fgsm = robust_accuracy(wrapped, build_attack("fgsm", e), u, y, 512)
    pgd = robust_accuracy(wrapped, build_attack("pgd", e, steps=steps, restarts=restarts, seed=seed), u, y, 512)
    return {"clean_err": 1 - fgsm["clean_acc"], "fgsm_err": 1 - fgsm["robust_acc"], "pgd_err": 1 - pgd["robust_acc"]}


def _certified_err(net: nn.Module, x: Tensor, y: Tensor, eps: float, batch: int = 200) -> float:
    ok = [certify_batch(net, x[s: s + batch], y[s: s + batch], eps).certified for s in range(0, len(x), batch)]
    ok_all = torch.cat(ok)
    return 1 - int(ok_all.sum()) / len(ok_all)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


# ---- toy ----
def study_toy(out: Path, seed: int, extra: dict[str, Any], progress: bool) -> dict[str, Any]:
    p = {"n_points": 12, "sep": 0.32, "sep_norm": "l1", "eps": 0.08, "sizes": [2, 100, 100, 100, 100, 2], "iters": 3000,
         "lr": 1e-3, "ramp_iters": 0, "eps_start": 0.0, **extra}
    x, y = toy_points(p["n_points"], p["sep"], seed, p["sep_norm"])
    torch.manual_seed(seed)
    net = mlp(p["sizes"])
    opt = torch.optim.Adam(net.parameters(), lr=p["lr"])
    curve = []
    t0 = time.perf_counter()
    from .training import eps_ramp

    ramp = eps_ramp(p["eps_start"], p["eps"], p["ramp_iters"])
    for it in range(p["iters"]):
        loss, not_cert = robust_loss(net, x, y, ramp(it))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 50 == 0 or it == p["iters"] - 1:
            curve.append({"iter": it, "robust_loss": float(loss.detach()),
                          "robust_err": float(not_cert.float().mean())})
    seconds = time.perf_counter() - t0
    cert = certify_batch(net, x, y, p["eps"])
    errs = _attack_errors(net, x, y, p["eps"], 0.0, 1.0, 50, 10, seed)
    metrics = {"params": p, "train_seconds": seconds, "certified_err": 1 - int(cert.certified.sum()) / len(y),
               "min_margin": float(cert.margin.min()), **errs, "curve": curve}
    _toy_figure(net, x, y, p["eps"], out / "toy.png")
    rows = [[p["n_points"], p["eps"], p["iters"], _pct(errs["clean_err"]), _pct(errs["pgd_err"]),
             _pct(metrics["certified_err"]), f"{metrics['min_margin']:.4f}"]]
    atomic_write_text(out / "toy.md", _table(["points", "eps", "Adam iterations", "clean error", "PGD error",
                                              "certified robust error", "smallest certified margin"], rows))
    return metrics


def _toy_figure(net: nn.Module, x: Tensor, y: Tensor, eps: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    g = torch.linspace(0, 1, 300)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        z = net(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)).argmax(1).reshape(300, 300)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.contourf(gx.numpy(), gy.numpy(), z.numpy(), levels=[-0.5, 0.5, 1.5], colors=["#9ecae1", "#fdae6b"],
                alpha=0.6)
    for p, lab in zip(x.tolist(), y.tolist()):
        color = "#08519c" if lab == 0 else "#a63603"
        ax.add_patch(Rectangle((p[0] - eps, p[1] - eps), 2 * eps, 2 * eps, fill=False, ec=color, lw=1.2))
        ax.plot(p[0], p[1], "o", color=color, ms=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"2-D toy: robust decision regions, eps = {eps}")
    fig.tight_layout()
    import io

    from data_loaders.rundir import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---- HAR-style ----
def _train_mlp(net: nn.Module, x: Tensor, y: Tensor, epochs: int, batch: int, lr: float, eps: float | None,
               eps_start: float, ramp_epochs: float, proj: int | None, seed: int, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    from .training import eps_ramp

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = (len(x) + batch - 1) // batch
    ramp = eps_ramp(eps_start, eps or 0.0, int(ramp_epochs * steps))
    hist, it = [], 0
    for epoch in tqdm(range(epochs), disable=not progress, desc="train", unit="epoch"):
        perm = torch.randperm(len(x), generator=g)
        tot, err, t0 = 0.0, 0, time.perf_counter()
        for s in range(0, len(x), batch):
            idx = perm[s: s + batch]
            if eps is None:
                loss = F.cross_entropy(net(x[idx]), y[idx])
            else:
                loss, nc = robust_loss(net, x[idx], y[idx], ramp(it), proj=proj, generator=g)
                err += int(nc.sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            it += 1
        hist.append({"epoch": epoch + 1, "loss": tot / len(x), "robust_err_estimate": err / len(x),
                     "seconds": time.perf_counter() - t0})
    return hist


def study_har(out: Path, seed: int, extra: dict[str, Any], progress: bool) -> dict[str, Any]:
    p = {"eps": 0.05, "epochs": 20, "batch": 50, "lr": 1e-3, "eps_start": 0.005, "ramp_epochs": 5, "proj": None,
         "noise": 1.5, "pgd_steps": 50, "pgd_restarts": 10, "n_train": 7352, "n_test": 2947, **extra}
    xtr, ytr, xte, yte = har_standin(p["n_train"], p["n_test"], noise=p["noise"], seed=seed)
    rows, runs = [], {}
    for name, eps in (("standard", None), ("robust", p["eps"])):
        torch.manual_seed(seed)
        net = mlp([561, 500, 6])
        t0 = time.perf_counter()
        hist = _train_mlp(net, xtr, ytr, p["epochs"], p["batch"], p["lr"], eps, p["eps_start"], p["ramp_epochs"],
                          p["proj"], seed, progress)
        train_s = time.perf_counter() - t0
        net.eval()
        errs = _attack_errors(net, xte, yte, p["eps"], -1.0, 1.0, p["pgd_steps"], p["pgd_restarts"], seed)
        t1 = time.perf_counter()
        cert_err = _certified_err(net, xte, yte, p["eps"])
        runs[name] = {**errs, "certified_err": cert_err, "train_seconds": train_s,
                      "certify_seconds": time.perf_counter() - t1, "history": hist}
        rows.append([name, p["eps"], _pct(errs["clean_err"]), _pct(errs["fgsm_err"]), _pct(errs["pgd_err"]),
                     _pct(cert_err), f"{100 * (cert_err - errs['pgd_err']):.2f}"])
    atomic_write_text(out / "har.md", _table(["training", "eps", "clean error", "FGSM error", "PGD error",
                                              "certified robust error", "bound - PGD (points)"], rows))
    return {"params": p, "data": "synthetic HAR-shaped stand-in (see module docstring)", "runs": runs}


# ---- tightness ----
def study_tightness(out: Path, seed: int, extra: dict[str, Any], progress: bool) -> dict[str, Any]:
    from .lp import lp_bound, optimise_alpha

    p = {"n_examples": 4, "eps": 0.1, "alpha_steps": 300, "grid": 401, "train_iters": 300, **extra}
    torch.manual_seed(seed)
    rows, records = [], []
    # (a) a robustly trained small MLP on the toy points and a random MLP
    x, y = toy_points(12, 0.16, seed)
    trained = mlp([2, 20, 20, 2])
    opt = torch.optim.Adam(trained.parameters(), lr=3e-3)
    for _ in range(p["train_iters"]):
        loss, _ = robust_loss(trained, x, y, 0.08)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rand = mlp([2, 20, 20, 2])
    for name, net, eps in (("robust-trained 2-20-20-2", trained, 0.08), ("random 2-20-20-2", rand, p["eps"])):
        net = net.double().eval()
        xs = x[: p["n_examples"]].double()
        ys = net(xs).argmax(1)
        dn = DualNetwork(net, xs, eps)
        c = (torch.eye(2, dtype=torch.float64)[ys] - torch.eye(2, dtype=torch.float64)[1 - ys]).unsqueeze(1)
        fixed = dn.objective(c).detach()[:, 0]
        best, _ = optimise_alpha(dn, c, steps=p["alpha_steps"])
        grid = _grid_min(net, xs, eps, c[:, 0], p["grid"])
        for b in range(len(xs)):
            lp_same = float(lp_bound(dn, c[b], b)[0])
            lp_tight = float(lp_bound(dn, c[b], b, tighten=True)[0])
            rec = {"net": name, "example": b, "eps": eps, "dual_fixed": float(fixed[b]),
                   "dual_optimised": float(best[b, 0]), "lp_same_bounds": lp_same, "lp_tightened": lp_tight,
                   "true_min_grid": float(grid[b])}
            records.append(rec)
            rows.append([name, b, f"{rec['dual_fixed']:.5f}", f"{rec['dual_optimised']:.5f}", f"{lp_same:.5f}",
                         f"{lp_tight:.5f}", f"{rec['true_min_grid']:.5f}"])
    # (b) naive layer-wise bounds vs dual vs the true range (Fig. 3.4 setting)
    torch.manual_seed(seed)
    fig_net = mlp([2, 100, 100, 100, 2]).double()
    with torch.no_grad():
        for layer in fig_net:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0, 1 / layer.in_features ** 0.5)
                layer.bias.normal_(0, 1)
    x0 = torch.rand(1, 2, dtype=torch.float64)
    eps4 = 0.05
    with torch.no_grad():
        lo_i, hi_i = interval_bounds(fig_net, x0 - eps4, x0 + eps4)
        lo_d, hi_d = DualNetwork(fig_net, x0, eps4).output_bounds()
    g = torch.linspace(-eps4, eps4, p["grid"], dtype=torch.float64)
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        vals = fig_net(x0 + torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
    naive = {"interval": [[float(lo_i[0, k]), float(hi_i[0, k])] for k in range(2)],
             "dual": [[float(lo_d[0, k]), float(hi_d[0, k])] for k in range(2)],
             "grid_range": [[float(vals[:, k].min()), float(vals[:, k].max())] for k in range(2)]}
    rows2 = [[f"z_{k + 1}", f"[{naive['grid_range'][k][0]:.3f}, {naive['grid_range'][k][1]:.3f}]",
              f"[{naive['dual'][k][0]:.3f}, {naive['dual'][k][1]:.3f}]",
              f"[{naive['interval'][k][0]:.3f}, {naive['interval'][k][1]:.3f}]"] for k in range(2)]
    text = ("Lower bounds of the margin f_pred - f_other over the l_inf ball (higher is tighter; all must be <= the "
            "true minimum):\n\n" +
            _table(["network", "example", "dual, fixed slopes", "dual, optimised slopes", "LP (same layer bounds)",
                    "LP (LP-tightened bounds)", "true min (grid)"], rows) +
            f"\nOutput ranges of the random 2-100-100-100-2 network at eps = {eps4} (Fig. 3.4 setting):\n\n" +
            _table(["output", "true range (grid)", "dual bounds", "layer-wise interval bounds"], rows2))
    # (c) quality of the median estimator (Fig. 3.19): one conv layer, l1 norms of the input term per unit
    est = _projection_quality(seed)
    rows3 = [[r, f"{v['mean']:+.4f}", f"{v['std']:.4f}", f"{v['p05']:+.4f}", f"{v['p95']:+.4f}"]
             for r, v in est.items()]
    text += ("\nRelative error of the median estimator of ||nu_1||_1 (Theorem 4) for the 3,136 units of a random "
             "Conv(1->16, 4x4, stride 2) layer on a 28 x 28 input:\n\n" +
             _table(["projections r", "mean", "std", "5th percentile", "95th percentile"], rows3))
    atomic_write_text(out / "tightness.md", text)
    return {"params": p, "margins": records, "fig34": naive, "projection_quality": est}


def _projection_quality(seed: int, rs: tuple[int, ...] = (10, 50, 100)) -> dict[int, dict[str, float]]:
    """Relative error of the projected l1 norm of the input term at a conv layer's output, per unit."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 2))
    x = torch.rand(1, 1, 28, 28)
    eps = 0.1
    with torch.no_grad():
        lo, up = DualNetwork(net, x, eps).bounds[1]
        exact = (up - lo) / 2
        out = {}
        for r in rs:
            lo_r, up_r = DualNetwork(net, x, eps, proj=r, generator=torch.Generator().manual_seed(seed)).bounds[1]
            rel = (((up_r - lo_r) / 2 - exact) / exact).flatten()
            q = torch.quantile(rel, torch.tensor([0.05, 0.95]))
            out[r] = {"mean": float(rel.mean()), "std": float(rel.std()), "p05": float(q[0]), "p95": float(q[1])}
    return out


def _grid_min(net: nn.Module, xs: Tensor, eps: float, c: Tensor, n: int) -> Tensor:
    """min over an n x n grid of the l_inf box of c^T f (2-D inputs): an upper estimate of the true minimum."""
    g = torch.linspace(-eps, eps, n, dtype=xs.dtype)
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    d = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    with torch.no_grad():
        return torch.stack([(net(xs[b] + d) @ c[b]).min() for b in range(len(xs))])


def run_study(cfg: StudyConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Run one study into the run directory ``out`` (config.json, metrics.json, a markdown table, figures)."""
    if cfg.study not in STUDIES:
        raise ValueError(f"unknown study {cfg.study!r}; choose one of {', '.join(STUDIES)}")
    out = make_run_dir(out, asdict(cfg), overwrite=overwrite)
    t0 = time.perf_counter()
    fn = {"toy": study_toy, "har": study_har, "tightness": study_tightness}[cfg.study]
    metrics = fn(out, cfg.seed, dict(cfg.extra), progress)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["torch_threads"] = torch.get_num_threads()
    write_json(out / f"{cfg.study}.json", metrics)
    finish_run(out, metrics)
    return metrics

