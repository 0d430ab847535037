"""Regularisation of adversarial robustness (spec-004): the statistics the source measures on adversarially
trained vs standard networks, on small nets and image subsets.

For each network and each adversarial-robustness (AR) strength eps (0 = standard training, then the source's
4/8/16 in /255 units), train with PGD-AT (10 steps of 2/255 in the source; the CPU preset takes 5 steps of
2.5 eps / 5) or FGSM-AT (B.6), then measure:

- train / test loss and error and their gaps (Fig 3, Tables 3-6), PGD accuracy on the clean-correct test examples
  (D.2);
- margins M = f_y - max_{i != y} f_i on train and test (Fig 4), the estimated probability p_y and the per-example
  test loss (Fig 5a, b); margins in input space (linearised distance to the boundary) and in feature space (exact
  distance in the last linear layer's input space), and the singular values of the logit Jacobian
  (:func:`margin_geometry`);
- per-layer singular values of every weight (exact for linear layers; for convolutions both the exact circular-
  operator spectrum by FFT and the reshaped (C_out, C_in k k) matrix), their STD per layer (Fig 1a, 5c, d), the B.2
  group sums between the weakest and strongest AR, and the spectral complexity prod ||W_i|| (Def 7);
- the maximal loss variation max_{||d|| <= eps_a} l(x + d) - l(x) by PGD, mean and STD over the test set per
  (attack, defensive) strength (B.5, Table 1, Fig 8);
- Lemma 3.1 on the MLPs: along segments from test points to their PGD points the layer map is a sum of masked-
  matrix products (checked to float64 precision), with the Cauchy interlacing of the masked matrices.

The source lost every number of Tables 1-6 in its text extraction; only the B.2 sums survive (CIFAR-10 ResNet-56:
4.7465 over ~41 layers vs 0.4372 over ~14). Claims are therefore checked as trends.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders.rundir import finish_run, load_weights, make_run_dir, resolve_device, save_weights
from vision.attacks import PGD
from vision.defenses.fast import FastTraining
from vision.defenses.pgd_training import PGDTraining
from vision.defenses.standard import StandardTraining
from vision.models import build_model
from vision.studies.common import attacked_correct, config_matches, fit, line_plot, load_subset, predict, write_table
from vision.theory.conv_spectrum import conv_singular_values, layer_singular_values
from vision.theory.lemma31 import check_lemma31, interlacing_holds, segment_pieces
from vision.theory.nets import MLP, SmallConvNet, conv_layers, wrap
from vision.theory.plots import histograms, scatter_identity

__all__ = ["RegularisationConfig", "run_regularisation", "margins", "b2_groups", "skewness", "PAPER_B2"]

NETS = ("mlp", "cnn")  # plus any vision.models name
AT_METHODS = ("pgd", "fgsm")
PAPER_B2 = {"cifar10": {"group1_sum": 4.7465, "group1_mean": 0.1158, "group2_sum": 0.4372, "group2_mean": 0.0312},
            "cifar100": {"group1_sum": 3.7511, "group1_mean": 0.09618, "group2_sum": 0.4372,
                         "group2_mean": 0.1103}}


@dataclass
class RegularisationConfig:
    """One spec-004 study. Defaults: the CPU preset (Fashion-MNIST subsets, a 4-layer MLP and a small CNN)."""

    dataset: str = "fashion-mnist"
    root: str | None = None
    n_train: int | None = 2000
    n_test: int = 1000
    nets: tuple[str, ...] = ("mlp", "cnn")
    mlp_width: int = 256
    mlp_depth: int = 4
    cnn_width: int = 8
    eps: tuple[float, ...] = (0.0, 4 / 255, 8 / 255, 16 / 255)
    at: str = "pgd"
    at_steps: int = 5
    at_alpha: float | None = None
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    eval_eps: float = 8 / 255
    eval_steps: int = 10
    variation_eps: tuple[float, ...] = (4 / 255, 8 / 255, 16 / 255)
    lemma_pairs: int = 10
    n_geometry: int = 500
    margin_band: float = 1.0
    figures: bool = True
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """M(f(x), y) = f(x)_y - max_{i != y} f(x)_i per example."""
    z = logits.double()
    fy = z.gather(1, y[:, None]).squeeze(1)
    return fy - z.scatter(1, y[:, None], -torch.inf).amax(dim=1)


def skewness(v: Tensor) -> float:
    """Sample skewness E[(v - mean)^3] / std^3 (0 for a constant vector)."""
    v = v.double()
    sd = float(v.std(unbiased=False))
    return float(((v - v.mean()) ** 3).mean()) / sd ** 3 if sd > 0 else 0.0


def b2_groups(std_weak: dict[str, float], std_strong: dict[str, float]) -> dict[str, float | int]:
    """B.2: layers where STD shrinks from weak to strong AR (group 1) or grows (group 2), with the sum and mean of
    |STD_weak - STD_strong| per group."""
    g1 = [std_weak[k] - std_strong[k] for k in std_weak if std_weak[k] > std_strong[k]]
    g2 = [std_strong[k] - std_weak[k] for k in std_weak if std_weak[k] <= std_strong[k]]
    return {"group1_layers": len(g1), "group1_sum": float(sum(g1)), "group1_mean": float(np.mean(g1)) if g1 else 0.0,
            "group2_layers": len(g2), "group2_sum": float(sum(g2)), "group2_mean": float(np.mean(g2)) if g2 else 0.0}


def _build(cfg: RegularisationConfig, kind: str, c: int, n: int, k: int) -> nn.Module:
    """``mlp`` / ``cnn`` (the theory nets) or any :func:`vision.models.build_model` name (e.g. resnet10-nobn)."""
    if kind == "mlp":
        return wrap(MLP(c * n * n, k, cfg.mlp_width, cfg.mlp_depth), c)
    if kind == "cnn":
        return wrap(SmallConvNet(cfg.cnn_width, c, k, n), c)
    return build_model(kind, k, c, n)


def _defense(cfg: RegularisationConfig, eps: float) -> Any:
    if eps == 0:
        return StandardTraining()
    if cfg.at == "pgd":
        return PGDTraining(eps, cfg.at_alpha if cfg.at_alpha is not None else 2.5 * eps / cfg.at_steps, cfg.at_steps)
    return FastTraining(eps, eps, init="zero")


def _loss_acc(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    logits = predict(model, x)
    return logits, F.cross_entropy(logits.float(), y, reduction="none")


def _loss_variation(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, seed: int) -> Tensor:
    """l(x_adv) - l(x) per example, x_adv the last iterate of PGD on the loss (step 2.5 eps / steps)."""
    atk = PGD(eps, None, steps, select="last", seed=seed)
    out = []
    for s in range(0, x.shape[0], 250):
        xb, yb = x[s: s + 250].float().div(255.0), y[s: s + 250]
        xa = atk(model, xb, yb).x_adv
        with torch.no_grad():
            out.append(F.cross_entropy(model(xa), yb, reduction="none") - F.cross_entropy(model(xb), yb,
                                                                                           reduction="none"))
    return torch.cat(out)


def margin_geometry(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 250) -> dict[str, Tensor]:
    """Per example (eval mode), with j over the classes other than y:

    - ``input``: the linearised distance to the decision boundary in input (pixel) space,
      min_j (f_y - f_j) / ||grad_x (f_y - f_j)||_2 (DeepFool's first step; exact inside one linear region of a
      ReLU net), negative when misclassified;
    - ``feature``: the exact distance to the decision boundary in the space of the last linear layer's inputs,
      min_j (f_y - f_j) / ||w_y - w_j||_2;
    - ``jac_sv_std``: the STD of the singular values of the logit Jacobian d f / d x (C x D).
    """
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    w = head.weight.detach().double()
    was = model.training
    model.eval()
    out: dict[str, list[Tensor]] = {"input": [], "feature": [], "jac_sv_std": []}
    try:
        for s in range(0, x.shape[0], batch_size):
            xb = x[s: s + batch_size].float().div(255.0).requires_grad_(True)
            yb = y[s: s + batch_size]
            logits = model(xb)
            c = logits.shape[1]
            rows = [torch.autograd.grad(logits[:, k].sum(), xb, retain_graph=k < c - 1)[0].flatten(1).double()
                    for k in range(c)]
            jac = torch.stack(rows, dim=1)  # (B, C, D)
            z = logits.detach().double()
            fy = z.gather(1, yb[:, None])
            gap = fy - z  # (B, C): f_y - f_j
            jy = jac[torch.arange(len(yb)), yb]  # (B, D)
            d_in = gap / (jy[:, None, :] - jac).norm(dim=2).clamp_min(1e-12)
            d_feat = gap / (w[yb][:, None, :] - w[None]).norm(dim=2).clamp_min(1e-12)
            other = torch.ones_like(gap, dtype=torch.bool).scatter(1, yb[:, None], False)
            out["input"].append(d_in.masked_fill(~other, torch.inf).amin(dim=1))
            out["feature"].append(d_feat.masked_fill(~other, torch.inf).amin(dim=1))
            out["jac_sv_std"].append(torch.linalg.svdvals(jac).std(dim=1, unbiased=False))
    finally:
        model.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def _spectra(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, dict[str, Any]]:
    layers = conv_layers(model, shape)
    fft = layer_singular_values(layers, "fft")
    rsh = layer_singular_values(layers, "reshape")
    out = {}
    for name, layer, _ in layers:
        out[name] = {"type": "conv" if isinstance(layer, nn.Conv2d) else "linear",
                     "std": float(fft[name].std(unbiased=False)), "mean": float(fft[name].mean()),
                     "min": float(fft[name].min()), "max": float(fft[name].max()),
                     "std_reshape": float(rsh[name].std(unbiased=False)), "max_reshape": float(rsh[name].max())}
    return out


def _lemma31(model: nn.Module, x: Tensor, y: Tensor, cfg: RegularisationConfig) -> dict[str, Any]:
    """Lemma 3.1 along segments from ``lemma_pairs`` test points to their PGD points (the MLP in float64)."""
    mlp = copy.deepcopy(model.net).double()
    norm = model.normalize
    xb = x[: cfg.lemma_pairs].float().div(255.0)
    xa = PGD(cfg.eval_eps, None, cfg.eval_steps, seed=cfg.seed)(model, xb, y[: cfg.lemma_pairs]).x_adv
    errs, pieces, inter = [], [], True
    with torch.no_grad():
        za, zb = norm(xb).double().flatten(1), norm(xa).double().flatten(1)
    for i in range(za.shape[0]):
        res = check_lemma31(mlp, za[i], zb[i])
        errs.append(res["max_abs_error"] / max(res["scale"], 1e-12))
        pieces.append(res["pieces"])
        for p in segment_pieces(mlp, za[i], zb[i])[:5]:
            for j, m in enumerate(p.masks):
                inter &= interlacing_holds(mlp.layers[j].weight, m)
    return {"pairs": int(za.shape[0]), "pieces mean": float(np.mean(pieces)), "pieces max": int(max(pieces)),
            "max relative error": float(max(errs)), "interlacing holds": bool(inter)}


def run_regularisation(cfg: RegularisationConfig, out: str | Path, *, overwrite: bool = False,
                       progress: bool = True) -> dict[str, Any]:
    """Train every (net, eps), measure the spec-004 statistics, write tables, figures and metrics.json."""
    if not cfg.nets:
        raise ValueError("need at least one network (--set nets=mlp,cnn)")
    if cfg.at not in AT_METHODS:
        raise ValueError(f"unknown AT method {cfg.at!r}; choose pgd or fgsm (--at)")
    if len(cfg.eps) < 2 or min(cfg.eps) < 0 or list(cfg.eps) != sorted(cfg.eps):
        raise ValueError(f"need at least two increasing AR strengths >= 0 (--eps), got {cfg.eps}")
    if cfg.epochs < 1 or cfg.n_test < 1:
        raise ValueError("need epochs >= 1 and n_test >= 1")
    device = resolve_device(cfg.device)
    out = Path(out)
    reuse = config_matches(out, cfg)
    train = load_subset(cfg.dataset, cfg.root, "train", cfg.n_train, cfg.seed, device)
    test = load_subset(cfg.dataset, cfg.root, "test", cfg.n_test, None, device)
    c, n, _ = train.shape
    k = len(train.classes)
    for kind in cfg.nets:
        _build(cfg, kind, c, n, k)  # unknown names fail before the run directory is made
    out = make_run_dir(out, cfg, overwrite=overwrite)
    t0 = time.perf_counter()
    rows, spectra, hists, variation, lemma = [], {}, {}, [], {}
    strengths = [e * 255 for e in cfg.eps]
    for kind in cfg.nets:
        for eps, ar in zip(cfg.eps, strengths):
            tag = f"{kind}-ar{ar:g}"
            torch.manual_seed(cfg.seed)
            model = _build(cfg, kind, c, n, k).to(device)
            path = out / f"{tag}.safetensors"
            if reuse and path.is_file():
                model.load_state_dict(load_weights(path, device))
            else:
                opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
                fit(model, _defense(cfg, eps), train, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=opt,
                    schedule="piecewise", seed=cfg.seed, progress=progress, desc=tag)
                save_weights(path, model.state_dict(), {"net": kind, "ar": f"{ar:g}"})
            model.eval()
            tr_logits, tr_loss = _loss_acc(model, train.x, train.y)
            te_logits, te_loss = _loss_acc(model, test.x, test.y)
            tr_err = 100 * float((tr_logits.argmax(1) != train.y).double().mean())
            te_err = 100 * float((te_logits.argmax(1) != test.y).double().mean())
            clean_ok, robust_ok = attacked_correct(model, PGD(cfg.eval_eps, 2.5 * cfg.eval_eps / cfg.eval_steps,
                                                              cfg.eval_steps, seed=cfg.seed), test.x, test.y)
            m_tr, m_te = margins(tr_logits, train.y), margins(te_logits, test.y)
            p_y = F.softmax(te_logits.double(), 1).gather(1, test.y[:, None]).squeeze(1)
            geo = margin_geometry(model, test.x[: cfg.n_geometry], test.y[: cfg.n_geometry])
            spec = _spectra(model, (c, n, n))
            spectra[tag] = spec
            sc = float(np.prod([v["max"] for v in spec.values()]))
            hists[tag] = {"margin_test": m_te.tolist(), "margin_train": m_tr.tolist(), "p_y": p_y.tolist(),
                          "test_loss": te_loss.double().tolist(), "input_margin": geo["input"].tolist(),
                          "feature_margin": geo["feature"].tolist()}
            rows.append({
                "net": kind, "AR (x/255)": ar, "train err %": tr_err, "test err %": te_err,
                "error gap": te_err - tr_err, "train loss": float(tr_loss.mean()), "test loss": float(te_loss.mean()),
                "loss gap": float(te_loss.mean() - tr_loss.mean()),
                "PGD acc % (clean-correct)": 100 * float(robust_ok.sum()) / max(int(clean_ok.sum()), 1),
                "test margin mean": float(m_te.mean()), "test margin std": float(m_te.std()),
                "test margin skew": skewness(m_te), f"test |M| < {cfg.margin_band:g} %":
                    100 * float((m_te.abs() < cfg.margin_band).double().mean()),
                "train margin skew": skewness(m_tr), "p_y in (0.1, 0.9) %":
                    100 * float(((p_y > 0.1) & (p_y < 0.9)).double().mean()),
                "test loss > 2 %": 100 * float((te_loss > 2).double().mean()),
                "input margin median": float(geo["input"].median()),
                "feature margin median": float(geo["feature"].median()),
                "Jacobian SV std (mean)": float(geo["jac_sv_std"].mean()),
                "mean SV std": float(np.mean([v["std"] for v in spec.values()])),
                "spectral complexity": sc,
            })
            for ea in cfg.variation_eps:
                dv = _loss_variation(model, test.x, test.y, ea, cfg.eval_steps, cfg.seed)
                variation.append({"net": kind, "attack (x/255)": round(ea * 255, 3), "defense (x/255)": ar,
                                  "mean": float(dv.mean()), "std": float(dv.std())})
            if kind == "mlp" and cfg.lemma_pairs > 0:  # Lemma 3.1 is checked exactly on plain ReLU MLPs
                lemma[tag] = _lemma31(model, test.x, test.y, cfg)
    write_table(out, "statistics", rows, f"{cfg.dataset}: generalisation, margins, confidence and singular values "
                f"per AR strength ({cfg.at.upper()}-AT; PGD-{cfg.eval_steps} at {cfg.eval_eps * 255:g}/255 on the "
                "clean-correct test examples)")
    write_table(out, "loss_variation", variation, "B.5 / Table 1: maximal loss variation l(x_adv) - l(x) under Linf "
                "PGD, mean and STD over the test set")
    sv_rows = []
    for tag, spec in spectra.items():
        for name, v in spec.items():
            sv_rows.append({"model": tag, "layer": name, **v})
    write_table(out, "singular_values", sv_rows, "Per-layer singular values: std/mean/min/max of the exact operator "
                "spectrum (FFT for convs, circular padding) and std/max of the reshaped kernel matrix")
    b2_rows = []
    weak, strong = strengths[1], strengths[-1]
    for kind in cfg.nets:
        for mode, key in (("operator (FFT)", "std"), ("reshaped kernel", "std_reshape")):
            a = {lay: v[key] for lay, v in spectra[f"{kind}-ar{weak:g}"].items()}
            b = {lay: v[key] for lay, v in spectra[f"{kind}-ar{strong:g}"].items()}
            b2_rows.append({"net": kind, "matrices": mode, "weak AR": weak, "strong AR": strong, **b2_groups(a, b)})
    b2_rows.append({"net": "paper ResNet-56 CIFAR-10", "matrices": "not stated", "weak AR": 4, "strong AR": 16,
                    "group1_layers": 41, **{k2: v for k2, v in PAPER_B2["cifar10"].items()}, "group2_layers": 14})
    write_table(out, "b2_groups", b2_rows, "B.2: layers whose singular-value STD shrinks (group 1) or grows (group 2) "
                "from the weakest to the strongest non-zero AR")
    if lemma:
        write_table(out, "lemma31", [{"model": t, **v} for t, v in lemma.items()], "Lemma 3.1 on the MLPs: piece "
                    "sums vs T(x_adv) - T(x) (relative error), linear regions crossed, Cauchy interlacing")
    if cfg.figures:
        _figures(out, cfg, rows, spectra, hists, variation, strengths)
    claims = _claims(cfg, rows, variation, b2_rows, lemma, strengths)
    write_table(out, "claims", claims, "Claims of spec-004, measured at our scale")
    metrics = {"device": device, "statistics": rows, "loss_variation": variation, "b2": b2_rows, "lemma31": lemma,
               "claims": claims, "seconds": round(time.perf_counter() - t0, 1)}
    finish_run(out, metrics)
    return metrics


def _figures(out: Path, cfg: RegularisationConfig, rows: list[dict[str, Any]], spectra: dict, hists: dict,
             variation: list[dict[str, Any]], strengths: list[float]) -> None:
    weak, strong = strengths[1], strengths[-1]
    for kind in cfg.nets:
        sel = [r for r in rows if r["net"] == kind]
        line_plot(out / f"gaps_{kind}.png", strengths, {"loss gap": [r["loss gap"] for r in sel],
                                                       "train loss": [r["train loss"] for r in sel],
                                                       "test loss": [r["test loss"] for r in sel]},
                  f"{kind}: losses vs AR strength (Fig 3a)", "AR strength (x/255)", "cross-entropy")
        line_plot(out / f"errors_{kind}.png", strengths, {"test error %": [r["test err %"] for r in sel],
                                                         "error gap": [r["error gap"] for r in sel],
                                                         "PGD acc %": [r["PGD acc % (clean-correct)"] for r in sel]},
                  f"{kind}: errors vs AR strength (Fig 3b, Fig 12)", "AR strength (x/255)", "%")
        for key, label, rng in (("margin_test", "test margin", None), ("margin_train", "train margin", None),
                                ("p_y", "p_y (test)", (0.0, 1.0)), ("test_loss", "test loss", None),
                                ("input_margin", "input-space margin (L2, linearised)", None),
                                ("feature_margin", "feature-space margin (L2)", None)):
            histograms(out / f"hist_{key}_{kind}.png", {f"AR {a:g}": hists[f"{kind}-ar{a:g}"][key]
                                                         for a in strengths},
                       f"{kind}: {label} (Figs 4, 5a, 5b)", label, range_=rng)
        a, b = spectra[f"{kind}-ar{weak:g}"], spectra[f"{kind}-ar{strong:g}"]
        scatter_identity(out / f"sv_std_{kind}.png", [a[k]["std"] for k in a], [b[k]["std"] for k in a],
                         f"{kind}: per-layer singular-value STD (Figs 1a, 5c)", f"AR {weak:g}", f"AR {strong:g}")
        for ea in cfg.variation_eps:
            sel_v = [v for v in variation if v["net"] == kind and v["attack (x/255)"] == round(ea * 255, 3)]
            line_plot(out / f"variation_{kind}_{ea * 255:g}.png", strengths,
                      {"mean": [v["mean"] for v in sel_v], "std": [v["std"] for v in sel_v]},
                      f"{kind}: loss variation, attack {ea * 255:g}/255 (Fig 8)", "defensive AR (x/255)",
                      "l(x_adv) - l(x)")


def _claims(cfg: RegularisationConfig, rows: list[dict[str, Any]], variation: list[dict[str, Any]],
            b2_rows: list[dict[str, Any]], lemma: dict[str, Any], strengths: list[float]) -> list[dict[str, Any]]:
    out = []
    nz = [a for a in strengths if a > 0]

    def claim(text: str, measured: str, source: str, held: bool) -> None:
        out.append({"claim": text, "measured": measured, "source": source, "held at our scale": "yes" if held else
                    "no"})

    for kind in cfg.nets:
        sel = {r["AR (x/255)"]: r for r in rows if r["net"] == kind}
        lo, hi = sel[nz[0]], sel[nz[-1]]

        def seq(key: str, sel: dict = sel) -> str:
            return " -> ".join(f"{sel[a][key]:.3g}" for a in strengths)

        claim(f"[{kind}] AR raises the training loss", seq("train loss"), "Fig 3a (no numbers)",
              hi["train loss"] > lo["train loss"])
        claim(f"[{kind}] AR shrinks the loss gap", seq("loss gap"), "Fig 3a (no numbers)",
              hi["loss gap"] < lo["loss gap"])
        claim(f"[{kind}] AR raises the test error", seq("test err %"), "Fig 3b (no numbers)",
              hi["test err %"] > lo["test err %"])
        claim(f"[{kind}] AR raises PGD accuracy", seq("PGD acc % (clean-correct)"), "Fig 12, ~50% reference",
              hi["PGD acc % (clean-correct)"] > lo["PGD acc % (clean-correct)"])
        claim(f"[{kind}] test margins concentrate around 0", f"std {seq('test margin std')}; |M| < "
              f"{cfg.margin_band:g}: {seq(f'test |M| < {cfg.margin_band:g} %')} %", "Fig 4 (no numbers)",
              hi["test margin std"] < lo["test margin std"])
        claim(f"[{kind}] p_y moves to middle values", seq("p_y in (0.1, 0.9) %") + " %", "Fig 5a (no numbers)",
              hi["p_y in (0.1, 0.9) %"] > lo["p_y in (0.1, 0.9) %"])
        claim(f"[{kind}] AR enlarges the input-space margin (median linearised distance to the boundary)",
              seq("input margin median"), "Thm 3.1: AR bounds I_min from below (not measured in the source)",
              hi["input margin median"] > lo["input margin median"])
        claim(f"[{kind}] AR makes the input-output map smoother in all directions (Jacobian SV STD falls)",
              seq("Jacobian SV std (mean)"), "Sec 4.2.2 via Lemma 3.1 (no numbers)",
              hi["Jacobian SV std (mean)"] < lo["Jacobian SV std (mean)"])
        b2 = next(r for r in b2_rows if r["net"] == kind and r["matrices"] == "operator (FFT)")
        claim(f"[{kind}] singular-value STD shrinks in most layers (B.2 group 1 dominates)",
              f"group 1: {b2['group1_layers']} layers, sum {b2['group1_sum']:.4g}; group 2: {b2['group2_layers']}, "
              f"sum {b2['group2_sum']:.4g}", "41 layers 4.7465 vs 14 layers 0.4372",
              b2["group1_sum"] > b2["group2_sum"] and b2["group1_layers"] > b2["group2_layers"])
        for ea in cfg.variation_eps:
            v = {r["defense (x/255)"]: r for r in variation if r["net"] == kind and r["attack (x/255)"] ==
                 round(ea * 255, 3)}
            claim(f"[{kind}] loss variation (attack {ea * 255:g}/255) falls with defensive strength: mean and STD",
                  "mean " + " -> ".join(f"{v[a]['mean']:.3g}" for a in strengths) + "; std "
                  + " -> ".join(f"{v[a]['std']:.3g}" for a in strengths), "Table 1 (numbers lost)",
                  v[nz[-1]]["mean"] < v[nz[0]]["mean"] and v[nz[-1]]["std"] < v[nz[0]]["std"])
    for tag, res in lemma.items():
        claim(f"[{tag}] Lemma 3.1: the feature difference is the sum of masked-matrix pieces",
              f"max relative error {res['max relative error']:.1e} over {res['pairs']} segments "
              f"({res['pieces mean']:.1f} regions on average); interlacing {res['interlacing holds']}", "Lemma 3.1",
              res["max relative error"] < 1e-8 and res["interlacing holds"])
    return out


def conv_spectral_norm(weight: Tensor, n: int) -> float:
    """The largest singular value of a conv layer's circular operator on n x n inputs."""
    return float(conv_singular_values(weight, n)[0])
