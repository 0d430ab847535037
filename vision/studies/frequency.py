"""SGD vs adaptive optimisers through the frequency lens (spec-002 chapter 4).

DCT machinery (eq. 4.4): the orthonormal type-II matrix C (x~ = C x C^T per channel, x = C^T x~ C), ten radial
bands with equal numbers of bases grouped by distance to the DC corner (Sec. 4.3.2), band energies that sum to the
total energy (Parseval), band-limited Gaussian noise C^T (M_i * N(0, s^2)) C, the accuracy drop per band (4.5), the
energy of input gradients per band and per DCT basis, and the accuracy drop along each single DCT basis.

The linear theory (Sec. 4.4, App. 4.D) on its synthetic problem: d = 3, X~ ~ N(0, diag(0.01, 0.0025, 0)), target
y = <x~, w~*> with w~* = (5, 10, 0), common start w~(0) = (0.01, -0.01, 0.02), learning rate 0.01, eps = sqrt(2).
GD never moves the irrelevant frequency; signGD moves it, and the ratio of adversarial risks
R_a(signGD) / R_a(GD) falls in the interval of eq. (4.19) ([1.04, 1.15] for this setting; thesis: 1.146).
Population gradients are exact (Sigma e); GD uses its closed form e~(t) = (I - eta Sigma~)^t e~(0).

:func:`run_frequency_study` trains one network per optimiser (SGD, Adam, RMSProp with PyTorch defaults, the
learning rates of Table 4.2) and measures Table 4.3's Gaussian / L2 / Linf columns (APGD-CE then targeted
APGD-DLR, the two gradient components of AutoAttack), the Lipschitz upper bound of Table 4.1, and the frequency
sensitivity maps and curves.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from data_loaders.rundir import finish_run, load_weights, make_run_dir, resolve_device, save_weights
from vision.attacks import APGD
from vision.attacks.apgd import APGDT
from vision.defenses.standard import StandardTraining
from vision.models import Normalize, NormalizedModel, build_model
from vision.studies.common import (
    accuracy,
    as_float,
    attacked_correct,
    config_matches,
    fit,
    heatmaps,
    input_gradients,
    line_plot,
    load_subset,
    make_optimizer,
    pct,
    predict,
    write_table,
)

# ---------------------------------------------------------------------------------------------------------------------
# DCT


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Tensor:
    """Orthonormal type-II DCT matrix: C[k, j] = sqrt(a_k / n) cos(pi (j + 1/2) k / n), a_0 = 1, a_k = 2."""
    if n < 1:
        raise ValueError(f"DCT size must be >= 1, got {n}")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    a = torch.full_like(k, 2.0)
    a[0] = 1.0
    c = torch.sqrt(a / n) * torch.cos(math.pi * (j + 0.5) * k / n)
    return c.to(dtype=dtype, device=device)


def dct2(x: Tensor) -> Tensor:
    """2-D DCT over the last two axes (C x C^T; square images)."""
    n = x.shape[-1]
    if x.shape[-2] != n:
        raise ValueError(f"the DCT helpers need square images, got {tuple(x.shape[-2:])}")
    c = dct_matrix(n, x.dtype, x.device)
    return c @ x @ c.T


def idct2(x: Tensor) -> Tensor:
    """Inverse 2-D DCT over the last two axes (C^T x C)."""
    c = dct_matrix(x.shape[-1], x.dtype, x.device)
    return c.T @ x @ c


def radial_bands(n: int, n_bands: int = 10) -> np.ndarray:
    """(n, n) band index of each DCT basis: bases sorted by distance to the DC corner (ties by row, then column)
    and cut into ``n_bands`` groups of equal size (sizes differ by at most one)."""
    if not 1 <= n_bands <= n * n:
        raise ValueError(f"need 1 <= n_bands <= {n * n}, got {n_bands}")
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    order = np.lexsort((j.ravel(), i.ravel(), np.hypot(i, j).ravel()))
    band = np.empty(n * n, dtype=np.int64)
    for b, idx in enumerate(np.array_split(order, n_bands)):
        band[idx] = b
    return band.reshape(n, n)


def band_energies(coeffs: Tensor, bands: np.ndarray) -> Tensor:
    """Sum of squared DCT coefficients per band, over every leading axis: shape (n_bands,)."""
    sq = (coeffs.double() ** 2).reshape(-1, *coeffs.shape[-2:]).sum(dim=0)
    b = torch.as_tensor(bands, device=sq.device)
    return torch.zeros(int(bands.max()) + 1, dtype=sq.dtype, device=sq.device).index_add_(0, b.ravel(), sq.ravel())


def spectral_energy_map(x: Tensor) -> Tensor:
    """Mean |DCT coefficient| per basis over images and channels (Fig. 4.2); x (N, C, n, n)."""
    return dct2(as_float(x).double()).abs().mean(dim=(0, 1))


def band_limited_noise(shape: tuple[int, ...], band_mask: Tensor, sigma: float,
                       generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> Tensor:
    """C^T (M * delta) C with delta ~ N(0, sigma^2) per DCT coefficient and per channel; ``shape`` (..., n, n)."""
    delta = torch.randn(shape, generator=generator, dtype=torch.float64, device=device) * sigma
    return idct2(delta * band_mask.to(device=device, dtype=torch.float64)).float()


def band_accuracy_drop(model: nn.Module, x: Tensor, y: Tensor, bands: np.ndarray, sigma: float, draws: int = 10,
                       seed: int = 0) -> list[float]:
    """Eq. (4.5) per band: clean accuracy minus the mean accuracy under ``draws`` band-limited noises (the same
    draws for every input; the noisy images are not clipped, as in the thesis' code)."""
    xf = as_float(x)
    base = accuracy(model, xf, y)
    gen = torch.Generator(device=xf.device).manual_seed(int(seed))
    drops = []
    for b in range(int(bands.max()) + 1):
        mask = torch.as_tensor(bands == b)
        accs = [accuracy(model, xf + band_limited_noise(tuple(xf.shape[1:]), mask, sigma, gen, xf.device), y)
                for _ in range(draws)]
        drops.append(base - float(np.mean(accs)))
    return drops


def gradient_energy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean squared DCT coefficient of the input gradient per basis, (n, n) (channels summed)."""
    g = input_gradients(model, x, y).double()
    return (dct2(g) ** 2).sum(dim=1).mean(dim=0)


def basis_sensitivity(model: nn.Module, x: Tensor, y: Tensor, eps: float, batch: int = 500) -> Tensor:
    """Accuracy drop (n, n) when adding +-eps times each unit-L2 DCT basis image (all channels), worst sign."""
    xf = as_float(x)
    n = xf.shape[-1]
    c = dct_matrix(n, torch.float32, xf.device)
    base_ok = predict(model, xf).argmax(1) == y
    out = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            basis = torch.outer(c[i], c[j])  # unit Frobenius norm
            hurt = torch.zeros_like(base_ok)
            for s in (1.0, -1.0):
                hurt |= predict(model, xf + s * eps * basis, batch).argmax(1) != y
            out[i, j] = float((base_ok & hurt).float().mean())
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Lipschitz upper bound (Table 4.1)


def _conv_norm(conv: nn.Conv2d, in_shape: tuple[int, ...], iters: int = 100, seed: int = 0) -> float:
    """Largest singular value of the (bias-free) convolution as a linear map on inputs of ``in_shape``."""
    g = torch.Generator().manual_seed(seed)
    w = conv.weight.detach().double().cpu()

    def op(v: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(v, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    v = torch.randn((1, *in_shape), generator=g, dtype=torch.float64)
    sigma = 0.0
    for _ in range(iters):
        v = v / v.norm()
        v.requires_grad_(True)
        out = op(v)
        (u,) = torch.autograd.grad(out, v, out)  # C^T C v
        sigma = float(out.detach().norm())
        v = u.detach()
    return sigma


def lipschitz_upper_bound(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Product of per-layer L2 operator norms (Gouk et al.) of a sequential network (normalisation included).

    Supports Normalize, Conv2d, Linear, ReLU, Tanh, Flatten, Identity inside a plain ``nn.Sequential``.
    """
    layers: list[nn.Module] = []
    if isinstance(model, NormalizedModel):
        layers.append(model.normalize)
        model = model.net
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"the Lipschitz bound needs a sequential network, got {type(model).__name__}")
    layers += list(model)
    shape = tuple(input_shape)
    norms = []
    x = torch.zeros((1, *shape))
    for layer in layers:
        if isinstance(layer, Normalize):
            norms.append(float((1.0 / layer.std).max()))
        elif isinstance(layer, nn.Conv2d):
            norms.append(_conv_norm(layer, tuple(x.shape[1:])))
        elif isinstance(layer, nn.Linear):
            norms.append(float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2)))
        elif isinstance(layer, (nn.ReLU, nn.Tanh, nn.Flatten, nn.Identity)):
            pass
        else:
            raise ValueError(f"no operator norm for layer {type(layer).__name__}")
        with torch.no_grad():
            x = layer(x)
    return {"bound": float(np.prod(norms)), "layer_norms": norms}


# ---------------------------------------------------------------------------------------------------------------------
# the linear theory (Sec. 4.4)


@dataclass
class LinearProblem:
    """The synthetic frequency-domain regression of Fig. 4.7 (defaults: the thesis' setting)."""

    sigma2: tuple[float, ...] = (0.01, 0.0025, 0.0)
    w_star: tuple[float, ...] = (5.0, 10.0, 0.0)
    w0: tuple[float, ...] = (0.01, -0.01, 0.02)
    lr: float = 0.01
    eps: float = math.sqrt(2.0)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(C, Sigma~, w~*, w~(0)) as float64 arrays."""
        d = len(self.sigma2)
        if not (len(self.w_star) == len(self.w0) == d):
            raise ValueError("sigma2, w_star and w0 must have the same length")
        return (dct_matrix(d).numpy(), np.diag(self.sigma2).astype(float), np.array(self.w_star, float),
                np.array(self.w0, float))


def standard_risk(w_f: np.ndarray, p: LinearProblem) -> float:
    """R_s = 1/2 sum_i s_i^2 (w~_i - w~*_i)^2."""
    _, s, ws, _ = p.arrays()
    e = w_f - ws
    return 0.5 * float(e @ s @ e)


def adversarial_risk(w_f: np.ndarray, p: LinearProblem) -> float:
    """Eq. (4.9): R_a = R_s + eps sqrt((2/pi) sum s_i^2 e_i^2) ||w~|| + (eps^2 / 2) ||w~||^2 (L2 ball)."""
    _, s, ws, _ = p.arrays()
    e = w_f - ws
    q = float(e @ s @ e)
    nw = float(np.linalg.norm(w_f))
    return 0.5 * q + p.eps * math.sqrt(2.0 / math.pi * q) * nw + 0.5 * p.eps ** 2 * nw ** 2


def gd_closed_form(p: LinearProblem, steps: int) -> np.ndarray:
    """w~(steps) of GD on the population risk: e~(t) = (I - eta Sigma~)^t e~(0) (eq. 4.12)."""
    _, s, ws, w0 = p.arrays()
    return ws + np.power(1.0 - p.lr * np.diag(s), steps) * (w0 - ws)


def linear_dynamics(p: LinearProblem, method: str, steps: int, record_every: int = 0, samples: int | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """Train the linear model in the *spatial* domain with ``method`` (gd, signgd, adam, rmsprop).

    ``samples`` None: exact population gradient Sigma (w - w*); else a fresh batch of that many samples per
    iteration (the thesis' Fig. 4.7 used 1000). Adam/RMSProp follow PyTorch's defaults (bias-corrected Adam with
    betas 0.9/0.999, RMSProp alpha 0.99; eps 1e-8). Returns the final w~ (frequency domain), the trajectory of
    e~ every ``record_every`` steps, and the risks.
    """
    if method not in ("gd", "signgd", "adam", "rmsprop"):
        raise ValueError(f"unknown method {method!r}; choose gd, signgd, adam or rmsprop")
    c, s_f, ws_f, w0_f = p.arrays()
    sig = c.T @ s_f @ c                       # spatial covariance
    w_star, w = c.T @ ws_f, c.T @ w0_f        # spatial weights
    rng = np.random.default_rng(seed)
    std_f = np.sqrt(np.diag(s_f))
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    traj, ts = [], []
    for t in range(steps):
        if record_every and t % record_every == 0:
            traj.append(c @ w - ws_f)
            ts.append(t)
        if samples is None:
            g = sig @ (w - w_star)
        else:
            xs = (rng.standard_normal((samples, len(w))) * std_f) @ c  # spatial samples: x = C^T x~
            g = xs.T @ (xs @ (w - w_star)) / samples
        if method == "gd":
            w = w - p.lr * g
        elif method == "signgd":
            w = w - p.lr * np.sign(g)
        elif method == "adam":
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            mh, vh = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
            w = w - p.lr * mh / (np.sqrt(vh) + 1e-8)
        else:
            v = 0.99 * v + 0.01 * g * g
            w = w - p.lr * g / (np.sqrt(v) + 1e-8)
    w_f = c @ w
    return {"method": method, "steps": steps, "w": w_f, "trajectory": np.array(traj), "t": np.array(ts),
            "standard_risk": standard_risk(w_f, p), "adversarial_risk": adversarial_risk(w_f, p)}


def signgd_frequency_recursion(p: LinearProblem, steps: int) -> tuple[np.ndarray, int]:
    """signGD written in the frequency domain for d = 3 with s~_2 = 0 (eq. 4.16), the derivation's form.

    Returns (e~ after ``steps``, number of iterations with |A(t)| <= |B(t)|), with A = (sqrt3/3) s0 e0 and
    B = (sqrt2/2) s1 e1. An independent check of the spatial-domain signGD and of the DCT matrix.
    """
    _, s, ws, w0 = p.arrays()
    if len(ws) != 3 or s[2, 2] != 0:
        raise ValueError("the closed-form recursion is for d = 3 with an irrelevant third frequency")
    e = w0 - ws
    r3, r2, r6 = math.sqrt(3), math.sqrt(2), math.sqrt(6)
    count = 0
    for _ in range(steps):
        a, b = r3 / 3 * s[0, 0] * e[0], r2 / 2 * s[1, 1] * e[1]
        count += abs(a) <= abs(b)
        sp, s0, sm = np.sign(a + b), np.sign(a), np.sign(a - b)
        e = e - p.lr * np.array([r3 / 3 * (sp + s0 + sm), r2 / 2 * (sp - sm), r6 / 6 * sp - r6 / 3 * s0 + r6 / 6 * sm])
    return e, count


def theory_ratio_interval(p: LinearProblem) -> dict[str, Any]:
    """Eq. (4.19): the predicted range of R_a(signGD) / R_a(GD), from |A(0)| vs |B(0)|."""
    _, s, ws, w0 = p.arrays()
    e0 = w0 - ws
    a0 = math.sqrt(3) / 3 * s[0, 0] * e0[0]
    b0 = math.sqrt(2) / 2 * s[1, 1] * e0[1]
    share0 = ws[0] ** 2 / (ws[0] ** 2 + ws[1] ** 2)
    share1 = ws[1] ** 2 / (ws[0] ** 2 + ws[1] ** 2)
    if abs(a0) < abs(b0):
        lo, hi, case = 1 + 0.5 * share0, 1 + 2.0 * share0, "|A(0)| < |B(0)|"
    else:
        q = (s[1, 1] / s[0, 0]) ** 2
        lo, hi, case = 1 + 0.75 * q * share1, 1 + 3.0 * q * share1, "|A(0)| > |B(0)|"
    return {"A0": abs(a0), "B0": abs(b0), "case": case, "low": lo, "high": hi}


def linear_study(p: LinearProblem | None = None, signgd_steps: int = 20000, adaptive_steps: int = 300000,
                 gd_steps: int = 3000000, samples: int | None = None, seed: int = 0) -> dict[str, Any]:
    """GD (closed form), signGD, Adam and RMSProp on the linear problem, with the theory's ratio interval."""
    p = p or LinearProblem()
    _, _, _, w0 = p.arrays()
    out: dict[str, Any] = {"problem": p, "theory": theory_ratio_interval(p), "runs": {}}
    w_gd = gd_closed_form(p, gd_steps)
    out["runs"]["gd"] = {"w": w_gd, "steps": gd_steps, "standard_risk": standard_risk(w_gd, p),
                         "adversarial_risk": adversarial_risk(w_gd, p)}
    steps = {"signgd": signgd_steps, "adam": adaptive_steps, "rmsprop": adaptive_steps}
    for method, n in steps.items():
        r = linear_dynamics(p, method, n, record_every=max(n // 400, 1), samples=samples, seed=seed)
        out["runs"][method] = r
    ra_gd = out["runs"]["gd"]["adversarial_risk"]
    for r in out["runs"].values():
        r["ratio_to_gd"] = r["adversarial_risk"] / ra_gd
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the study

TABLE_4_2_LR = {"mnist": {"sgd": 0.1, "adam": 5e-4, "rmsprop": 5e-4},
                "fashion-mnist": {"sgd": 0.1, "adam": 5e-4, "rmsprop": 5e-4},
                "digits": {"sgd": 0.1, "adam": 5e-4, "rmsprop": 5e-4},
                "cifar10": {"sgd": 0.2, "adam": 2e-4, "rmsprop": 5e-4}}


@dataclass
class FrequencyStudyConfig:
    """Optimisers x frequencies: one model per optimiser and seed, evaluated alike; plus the linear theory."""

    dataset: str = "fashion-mnist"
    root: str | None = None
    model: str = "mnist_small"                             # paper preset: mnist_cnn (Table 4.2's net)
    optimizers: tuple[str, ...] = ("sgd", "adam", "rmsprop")
    lrs: dict[str, float] = field(default_factory=dict)   # default: Table 4.2 for the dataset
    seeds: tuple[int, ...] = (0,)
    n_train: int | None = 10000
    n_test: int = 1000
    n_attack: int = 300                                    # test images attacked (APGD) and probed per band
    n_basis: int = 200                                     # test images probed along each single DCT basis
    epochs: int = 10
    batch_size: int = 128
    augment: bool | None = None                            # auto: on (flip only in the thesis) for cifar10
    gauss_var: tuple[float, ...] = (0.001, 0.005, 0.01)    # Table 4.3, Fashion-MNIST row
    l2_eps: tuple[float, ...] = (0.1, 0.5, 0.7)
    linf_eps: tuple[float, ...] = (0.01, 0.03, 0.05)
    apgd_steps: int = 50
    n_target_classes: int = 3
    n_bands: int = 10
    band_sigma: float = 0.5
    band_draws: int = 10
    basis_eps: float = 2.0                                 # L2 size of the single-basis perturbation
    linear: bool = True
    linear_adaptive_steps: int = 300000
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def _robust_columns(cfg: FrequencyStudyConfig) -> list[str]:
    return ([f"gauss {v:g} %" for v in cfg.gauss_var] + [f"L2 {e:g} %" for e in cfg.l2_eps]
            + [f"Linf {e:g} %" for e in cfg.linf_eps])


def _evaluate(model: nn.Module, cfg: FrequencyStudyConfig, test, seed: int, device: str) -> dict[str, Any]:
    row: dict[str, Any] = {"clean %": pct(accuracy(model, test.x, test.y))}
    xf = as_float(test.x)
    gen = torch.Generator(device=device).manual_seed(seed + 100)
    for var in cfg.gauss_var:
        noisy = (xf + math.sqrt(var) * torch.randn(xf.shape, generator=gen, device=device)).clamp(0, 1)
        row[f"gauss {var:g} %"] = pct(accuracy(model, noisy, test.y))
    xa, ya = test.x[: cfg.n_attack], test.y[: cfg.n_attack]
    for norm, radii in (("l2", cfg.l2_eps), ("linf", cfg.linf_eps)):
        for e in radii:
            ok = None
            for atk in (APGD(e, cfg.apgd_steps, norm, seed=seed),
                        APGDT(e, cfg.apgd_steps, norm, n_targets=cfg.n_target_classes, seed=seed)):
                r = attacked_correct(model, atk, xa, ya)[1]
                ok = r if ok is None else ok & r
            row[f"{'L2' if norm == 'l2' else 'Linf'} {e:g} %"] = pct(float(ok.float().mean()))
    return row


def run_frequency_study(cfg: FrequencyStudyConfig, out: str | Path, *, overwrite: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and probe one model per optimiser and seed; write tables and heat-maps into ``out``."""
    bad = [o for o in cfg.optimizers if o not in ("sgd", "adam", "rmsprop")]
    if bad:
        raise ValueError(f"unknown optimizer(s) {bad}; choose from sgd, adam, rmsprop")
    if cfg.n_bands < 1 or cfg.n_attack < 1 or not cfg.seeds:
        raise ValueError("need n_bands >= 1, n_attack >= 1 and at least one seed")
    device = resolve_device(cfg.device)
    out = Path(out)
    reuse = config_matches(out, cfg)
    lrs = {**TABLE_4_2_LR.get(cfg.dataset, TABLE_4_2_LR["mnist"]), **cfg.lrs}
    test = load_subset(cfg.dataset, cfg.root, "test", cfg.n_test, None, device)
    c, n, _ = test.shape
    build_model(cfg.model, len(test.classes), c, n)
    out = make_run_dir(out, cfg, overwrite=overwrite)
    bands = radial_bands(n, cfg.n_bands)
    metrics: dict[str, Any] = {"device": device, "lrs": lrs, "models": {}}

    rows, band_rows, grad_rows = [], [], []
    grad_maps, sens_maps, drops, genergy = {}, {}, {}, {}
    xa, ya = test.x[: cfg.n_attack], test.y[: cfg.n_attack]
    for opt_name in cfg.optimizers:
        for seed in cfg.seeds:
            tag = f"{opt_name}-seed{seed}"
            train = load_subset(cfg.dataset, cfg.root, "train", cfg.n_train, seed, device)
            torch.manual_seed(seed)
            model = build_model(cfg.model, len(train.classes), c, n).to(device)
            wpath = out / f"{tag}.safetensors"
            t0 = time.perf_counter()
            if reuse and wpath.is_file():
                model.load_state_dict(load_weights(wpath, device))
                hist: Any = "reused"
            else:
                opt = make_optimizer(model, opt_name, lrs[opt_name])  # PyTorch defaults: no momentum, no wd
                hist = fit(model, StandardTraining(), train, epochs=cfg.epochs, batch_size=cfg.batch_size,
                           optimizer=opt, schedule="piecewise", seed=seed, progress=progress, desc=tag,
                           augment=bool(cfg.augment if cfg.augment is not None else cfg.dataset == "cifar10"))
                save_weights(wpath, model.state_dict(), {"model": cfg.model, "optimizer": opt_name})
            model.eval()
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            row = {"optimizer": opt_name, "seed": seed, "lr": lrs[opt_name], **_evaluate(model, cfg, test, seed,
                                                                                         device)}
            rob = [row[k] for k in _robust_columns(cfg)]
            row["mean robust %"] = round(float(np.mean(rob)), 2)
            lip = lipschitz_upper_bound(model, (c, n, n)) if isinstance(model.net, nn.Sequential) else None
            row["Lipschitz bound"] = round(lip["bound"], 2) if lip else None
            d = band_accuracy_drop(model, xa, ya, bands, cfg.band_sigma, cfg.band_draws, seed)
            ge = gradient_energy(model, xa, ya)
            be = band_energies(ge[None], bands)
            frac = (be / be.sum()).tolist()
            rows.append(row)
            band_rows.append({"model": tag, **{f"band {b}": round(100 * v, 2) for b, v in enumerate(d)}})
            grad_rows.append({"model": tag, **{f"band {b}": round(100 * v, 2) for b, v in enumerate(frac)}})
            drops.setdefault(opt_name, []).append(d)
            genergy.setdefault(opt_name, []).append(frac)
            grad_maps.setdefault(opt_name, []).append(ge.cpu().numpy())
            sens_maps.setdefault(opt_name, []).append(
                basis_sensitivity(model, test.x[: cfg.n_basis], test.y[: cfg.n_basis], cfg.basis_eps).numpy())
            metrics["models"][tag] = {"history": hist, "train_seconds": train_s,
                                      "eval_seconds": time.perf_counter() - t0,
                                      "lipschitz_layers": lip["layer_norms"] if lip else None}

    cols = ["optimizer", "seed", "lr", "clean %", *_robust_columns(cfg), "mean robust %", "Lipschitz bound"]
    write_table(out, "robustness", rows, f"Optimisers on {cfg.dataset} ({cfg.model}, {cfg.epochs} epochs): "
                f"Gaussian noise, L2 / Linf APGD-CE + APGD-T on {cfg.n_attack} test images", cols)
    write_table(out, "band_noise_drop", band_rows, f"Accuracy drop (%) under band-limited noise (sigma "
                f"{cfg.band_sigma:g}, {cfg.band_draws} draws), band 0 = lowest frequencies (eq. 4.5)")
    write_table(out, "gradient_band_energy", grad_rows, "Share (%) of input-gradient energy per DCT band")
    xb = list(range(cfg.n_bands))
    line_plot(out / "band_noise_drop.png", xb, {k: np.mean(v, axis=0) * 100 for k, v in drops.items()},
              "accuracy drop under band-limited noise", "band (low -> high frequency)", "drop (%)")
    line_plot(out / "gradient_band_energy.png", xb, {k: np.mean(v, axis=0) * 100 for k, v in genergy.items()},
              "input-gradient energy per band", "band (low -> high frequency)", "share of energy (%)", logy=True)
    heatmaps(out / "gradient_energy_dct.png", {k: np.mean(v, axis=0) for k, v in grad_maps.items()},
             "mean squared DCT coefficient of the input gradient", log=True)
    heatmaps(out / "basis_sensitivity.png", {k: 100 * np.mean(v, axis=0) for k, v in sens_maps.items()},
             f"accuracy drop (%) along each DCT basis (L2 size {cfg.basis_eps:g})", cbar_label="%")
    train_all = load_subset(cfg.dataset, cfg.root, "train", cfg.n_train, 0, device)
    heatmaps(out / "data_spectrum.png", {cfg.dataset: spectral_energy_map(train_all.x).cpu().numpy()},
             "mean |DCT coefficient| of the training images (Fig. 4.2)", log=True)
    if cfg.linear:
        metrics["linear"] = _write_linear(out, cfg)
    metrics["rows"] = rows
    metrics["band_drop"] = band_rows
    metrics["gradient_band_energy"] = grad_rows
    finish_run(out, metrics)
    return metrics


def _write_linear(out: Path, cfg: FrequencyStudyConfig) -> dict[str, Any]:
    res = linear_study(adaptive_steps=cfg.linear_adaptive_steps)
    th = res["theory"]
    rows = []
    for m, r in res["runs"].items():
        w = np.asarray(r["w"])
        rows.append({"method": m, "steps": r["steps"], "w~0": round(float(w[0]), 4), "w~1": round(float(w[1]), 4),
                     "w~2": round(float(w[2]), 4), "||w~||^2": round(float(w @ w), 3),
                     "standard risk": float(f"{r['standard_risk']:.3g}"),
                     "adversarial risk": round(r["adversarial_risk"], 3), "ratio to GD": round(r["ratio_to_gd"], 4)})
    write_table(out, "linear_theory", rows, f"Linear model (Sec. 4.4): eps = sqrt(2); theory for signGD/GD "
                f"({th['case']}, |A(0)|={th['A0']:.4f}, |B(0)|={th['B0']:.4f}): [{th['low']:.3f}, {th['high']:.3f}]"
                "; thesis: 1.146")
    _linear_figure(out / "linear_dynamics.png", res)
    return {"theory": th, "rows": rows}


def _linear_figure(path: Path, res: dict[str, Any]) -> Path:
    """Fig. 4.7 analogue: |e~_i(t)| per method (log-x) and the adversarial risk of each final model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vision.studies.common import _save_figure

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    p = res["problem"]
    for m in ("signgd", "adam", "rmsprop"):
        r = res["runs"][m]
        for i in range(3):
            axes[i].plot(np.asarray(r["t"]) + 1, np.abs(r["trajectory"][:, i]) + 1e-12, label=m)
    t_gd = np.unique(np.logspace(0, math.log10(res["runs"]["gd"]["steps"]), 200).astype(int))
    e_gd = np.array([gd_closed_form(p, int(t)) for t in t_gd]) - np.array(p.w_star)
    for i in range(3):
        axes[i].plot(t_gd, np.abs(e_gd[:, i]) + 1e-12, label="gd", color="k", lw=1)
        axes[i].set_xscale("log")
        axes[i].set_yscale("log")
        axes[i].set_title(f"|e~{i}(t)|" + (" (irrelevant frequency)" if i == 2 else ""), fontsize=9)
        axes[i].set_xlabel("iteration")
        axes[i].legend(fontsize=7)
    names = list(res["runs"])
    axes[3].bar(names, [res["runs"][k]["adversarial_risk"] for k in names])
    axes[3].set_title("adversarial risk of the final model (eps = sqrt 2)", fontsize=9)
    return _save_figure(fig, path)
