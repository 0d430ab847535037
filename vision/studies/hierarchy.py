"""Hierarchical adversarial robustness (spec-002 chapter 5): coarse/fine label hierarchies, hierarchical PGD, the
hierarchical model HAR and its training.

A :class:`Hierarchy` maps every fine (leaf) class to one coarse (meta) class. Built in: CIFAR-10's animals /
vehicles (Table 5.1) and a Fashion-MNIST grouping documented here: *clothing* (T-shirt/top, Trouser, Pullover,
Dress, Coat, Shirt) vs *footwear and bags* (Sandal, Sneaker, Bag, Ankle boot), the same 6 / 4 split as CIFAR-10.
Any other grouping is a spec string ``"name:0,1,2;other:3,4"``.

Hierarchical PGD (Alg. 5.1) is worst case over targets: for every leaf class outside the true meta-class (tried
in order of decreasing clean logit; the thesis does not fix an order), a targeted PGD run from a random start
descends the target's cross-entropy; the attack stops at the first target the model predicts. Success therefore
always changes the meta-class. A point counts as hierarchically robust when its clean meta-class is right and no
target succeeds.

HAR (Sec. 5.5): one meta-classifier M and one leaf classifier L_i per meta-class, each trained independently with
the same defense (M on all images with meta labels, L_i on the images of meta-class i with their leaf labels).
Its output is log P(y | x) = log M(x)_z + log L_z(x)_y (eq. 5.2), differentiable end to end, so every attack runs
on the composed model; ``.meta`` is exposed for PGD-Meta.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders.images import CIFAR10_CLASSES, FASHION_CLASSES, ImageSet
from data_loaders.rundir import finish_run, load_weights, make_run_dir, resolve_device, save_weights
from vision.attacks import PGD, AttackResult
from vision.defenses.pgd_training import PGDTraining
from vision.defenses.standard import StandardTraining
from vision.defenses.trades import TradesTraining
from vision.models import build_model
from vision.studies.common import (
    adversarial_examples,
    as_float,
    bar_plot,
    config_matches,
    fit,
    load_subset,
    make_optimizer,
    pct,
    predict,
    write_table,
)


@dataclass(frozen=True)
class Hierarchy:
    """Two-level label hierarchy: ``leaf_to_meta[y]`` is the meta-class of leaf class ``y``."""

    name: str
    meta_names: tuple[str, ...]
    leaf_to_meta: tuple[int, ...]

    def __post_init__(self) -> None:
        n_meta = len(self.meta_names)
        if n_meta < 2:
            raise ValueError(f"hierarchy {self.name!r}: needs at least two meta-classes, got {n_meta}")
        bad = [m for m in self.leaf_to_meta if not 0 <= m < n_meta]
        if bad:
            raise ValueError(f"hierarchy {self.name!r}: meta index {bad[0]} out of range 0..{n_meta - 1}")
        empty = [self.meta_names[m] for m in range(n_meta) if m not in self.leaf_to_meta]
        if empty:
            raise ValueError(f"hierarchy {self.name!r}: meta-class {empty[0]!r} has no leaf class")

    @property
    def n_leaf(self) -> int:
        return len(self.leaf_to_meta)

    @property
    def n_meta(self) -> int:
        return len(self.meta_names)

    def leaves_of(self, m: int) -> list[int]:
        """The leaf classes of meta-class ``m``, in increasing order."""
        return [y for y, z in enumerate(self.leaf_to_meta) if z == m]

    def meta_of(self, y: Tensor) -> Tensor:
        """Meta labels of leaf labels ``y``."""
        return torch.as_tensor(self.leaf_to_meta, device=y.device)[y]

    def local_index(self, y: Tensor) -> Tensor:
        """Position of each leaf label within its meta-class (the leaf classifiers' labels)."""
        pos = torch.zeros(self.n_leaf, dtype=torch.long)
        for m in range(self.n_meta):
            for i, leaf in enumerate(self.leaves_of(m)):
                pos[leaf] = i
        return pos.to(y.device)[y]

    def describe(self, classes: list[str] | None = None) -> dict[str, list[str]]:
        """{meta name: [leaf names]} for tables and config."""
        names = classes or [str(i) for i in range(self.n_leaf)]
        return {self.meta_names[m]: [names[y] for y in self.leaves_of(m)] for m in range(self.n_meta)}


HIERARCHIES = {
    "cifar10": Hierarchy("cifar10", ("animals", "vehicles"), (1, 1, 0, 0, 0, 0, 0, 0, 1, 1)),
    "fashion-mnist": Hierarchy("fashion-mnist", ("clothing", "footwear-and-bags"), (0, 0, 0, 0, 0, 1, 0, 1, 1, 1)),
}
assert [CIFAR10_CLASSES[i] for i in HIERARCHIES["cifar10"].leaves_of(1)] == ["airplane", "automobile", "ship",
                                                                             "truck"]
assert [FASHION_CLASSES[i] for i in HIERARCHIES["fashion-mnist"].leaves_of(1)] == ["Sandal", "Sneaker", "Bag",
                                                                                   "Ankle boot"]


def parse_hierarchy(spec: str, n_leaf: int, name: str = "custom") -> Hierarchy:
    """A hierarchy from ``"meta:leaf,leaf;meta:leaf,..."`` covering every leaf 0..n_leaf-1 exactly once."""
    metas, mapping = [], [-1] * n_leaf
    for part in [p for p in spec.split(";") if p.strip()]:
        if ":" not in part:
            raise ValueError(f"--hierarchy {spec!r}: group {part!r} needs the form name:leaf,leaf,...")
        mname, leaves = part.split(":", 1)
        metas.append(mname.strip())
        for tok in leaves.split(","):
            try:
                leaf = int(tok)
            except ValueError:
                raise ValueError(f"--hierarchy {spec!r}: {tok!r} is not a class index") from None
            if not 0 <= leaf < n_leaf:
                raise ValueError(f"--hierarchy {spec!r}: class {leaf} out of range 0..{n_leaf - 1}")
            if mapping[leaf] != -1:
                raise ValueError(f"--hierarchy {spec!r}: class {leaf} is in two groups")
            mapping[leaf] = len(metas) - 1
    missing = [i for i, m in enumerate(mapping) if m == -1]
    if missing:
        raise ValueError(f"--hierarchy {spec!r}: class {missing[0]} is in no group")
    return Hierarchy(name, tuple(metas), tuple(mapping))


def get_hierarchy(dataset: str, spec: str | None, n_leaf: int) -> Hierarchy:
    """The built-in hierarchy of ``dataset``, or the one ``spec`` describes."""
    if spec:
        return parse_hierarchy(spec, n_leaf)
    if dataset not in HIERARCHIES:
        raise ValueError(f"no built-in hierarchy for {dataset!r} (built in: {', '.join(HIERARCHIES)}); "
                         "pass --hierarchy 'meta:0,1,2;other:3,4'")
    h = HIERARCHIES[dataset]
    if h.n_leaf != n_leaf:
        raise ValueError(f"hierarchy {h.name!r} has {h.n_leaf} leaf classes, the data has {n_leaf}")
    return h


# ---------------------------------------------------------------------------------------------------------------------
# the HAR model


class HARModel(nn.Module):
    """log P(y|x) = log M(x)_z + log L_z(x)_y over the global leaf order (eq. 5.2); inputs in [0, 1].

    ``leaves[m]`` is None for a meta-class with a single leaf (its conditional probability is 1).
    """

    def __init__(self, meta: nn.Module, leaves: list[nn.Module | None], hierarchy: Hierarchy) -> None:
        super().__init__()
        if len(leaves) != hierarchy.n_meta:
            raise ValueError(f"HAR needs {hierarchy.n_meta} leaf classifiers, got {len(leaves)}")
        self.meta = meta
        self.leaves = nn.ModuleList([m if m is not None else nn.Identity() for m in leaves])
        self.single = [m is None for m in leaves]
        self.hierarchy = hierarchy
        self.register_buffer("_order", torch.tensor([y for m in range(hierarchy.n_meta)
                                                     for y in hierarchy.leaves_of(m)]))

    def forward(self, x: Tensor) -> Tensor:
        log_meta = F.log_softmax(self.meta(x).float(), dim=1)
        parts = []
        for m in range(self.hierarchy.n_meta):
            if self.single[m]:
                parts.append(log_meta[:, m: m + 1])
            else:
                parts.append(log_meta[:, m: m + 1] + F.log_softmax(self.leaves[m](x).float(), dim=1))
        grouped = torch.cat(parts, dim=1)        # leaves grouped by meta-class
        out = torch.empty_like(grouped)
        out[:, self._order] = grouped            # back to the global leaf order
        return out


class _MetaView(nn.Module):
    """A leaf classifier's logits summed into meta-class log-probabilities (for PGD-Meta on flat models)."""

    def __init__(self, model: nn.Module, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.model, self.hierarchy = model, hierarchy

    def forward(self, x: Tensor) -> Tensor:
        logp = F.log_softmax(self.model(x).float(), dim=1)
        return torch.stack([torch.logsumexp(logp[:, self.hierarchy.leaves_of(m)], dim=1)
                            for m in range(self.hierarchy.n_meta)], dim=1)


def meta_model(model: nn.Module, hierarchy: Hierarchy) -> nn.Module:
    """The meta-classifier of a HAR model, or a flat model's leaf probabilities summed per meta-class."""
    return model.meta if isinstance(model, HARModel) else _MetaView(model, hierarchy)


# ---------------------------------------------------------------------------------------------------------------------
# hierarchical PGD


@dataclass
class HierarchicalResult(AttackResult):
    """AttackResult plus the target that succeeded (-1 where none did) and how many targets were tried."""

    target: Tensor | None = None
    tried: Tensor | None = None


class HierarchicalPGD:
    """Alg. 5.1: targeted PGD toward every leaf class outside the true meta-class until one is predicted.

    ``eps``, ``alpha``, ``steps``, ``norm`` are those of each targeted run (:class:`vision.attacks.PGD`, random
    start, best iterate kept). ``success`` means the prediction equals a target outside the true meta-class.
    """

    def __init__(self, hierarchy: Hierarchy, eps: float, alpha: float | None = None, steps: int = 20,
                 norm: str = "linf", seed: int | None = 0) -> None:
        self.hierarchy = hierarchy
        self.pgd = PGD(eps, alpha, steps, norm=norm, restarts=1, random_start=True, targeted=True, seed=seed)
        self.eps, self.steps, self.norm = float(eps), int(steps), norm

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> HierarchicalResult:
        h = self.hierarchy
        if int(y.max()) >= h.n_leaf:
            raise ValueError(f"label {int(y.max())} is outside the hierarchy's {h.n_leaf} leaf classes")
        with torch.no_grad():
            logits = predict(model, x)
        meta_y = h.meta_of(y)
        outside = torch.as_tensor(h.leaf_to_meta, device=x.device)[None, :] != meta_y[:, None]
        ranked = logits.masked_fill(~outside, -torch.inf).argsort(dim=1, descending=True)
        n_out = outside.sum(dim=1)
        x_adv = x.clone()
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        target = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        tried = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for k in range(int(n_out.max())):
            todo = ((~success) & (n_out > k)).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            t = ranked[todo, k]
            res = self.pgd(model, x[todo], t)
            tried[todo] += 1
            hit = res.success
            x_adv[todo[hit]] = res.x_adv[hit]
            success[todo[hit]] = True
            target[todo[hit]] = t[hit]
        return HierarchicalResult(x_adv.detach(), success, None, target, tried)


# ---------------------------------------------------------------------------------------------------------------------
# metrics


def meta_accuracy(logits: Tensor, y: Tensor, hierarchy: Hierarchy) -> float:
    """Share of examples whose predicted leaf lies in the true meta-class."""
    return float((hierarchy.meta_of(logits.argmax(1)) == hierarchy.meta_of(y)).float().mean())


def p_meta_given_wrong_leaf(logits: Tensor, y: Tensor, hierarchy: Hierarchy) -> float | None:
    """P(correct meta-class | wrong leaf class) (Table 5.2); None when no leaf is wrong."""
    pred = logits.argmax(1)
    wrong = pred != y
    if not bool(wrong.any()):
        return None
    return float((hierarchy.meta_of(pred[wrong]) == hierarchy.meta_of(y[wrong])).float().mean())


def chance_meta_given_wrong_leaf(y: Tensor, hierarchy: Hierarchy) -> float:
    """The same probability for a wrong leaf drawn uniformly from the other leaf classes."""
    sizes = torch.tensor([len(hierarchy.leaves_of(m)) for m in range(hierarchy.n_meta)], device=y.device)
    return float(((sizes[hierarchy.meta_of(y)] - 1) / (hierarchy.n_leaf - 1)).float().mean())


# ---------------------------------------------------------------------------------------------------------------------
# training


class TargetedOutsideMetaPGDTraining:
    """PGD10-T (Ch. 5 baseline): targeted PGD toward a leaf drawn uniformly outside the true meta-class, then CE of
    the true label at that point."""

    name = "pgd-t"

    def __init__(self, hierarchy: Hierarchy, eps: float, alpha: float, steps: int, seed: int = 0) -> None:
        self.hierarchy = hierarchy
        self.attack = PGD(eps, alpha, steps, restarts=1, random_start=True, targeted=True, select="last",
                          use_eval_mode=False)
        self.seed = seed
        self._gen: torch.Generator | None = None

    def sample_targets(self, y: Tensor) -> Tensor:
        """One target per example, uniform over the leaf classes outside its meta-class."""
        if self._gen is None:
            self._gen = torch.Generator(device=y.device).manual_seed(self.seed)
        h = self.hierarchy
        outside = torch.as_tensor(h.leaf_to_meta, device=y.device)[None, :] != h.meta_of(y)[:, None]
        return torch.multinomial(outside.float(), 1, generator=self._gen).squeeze(1)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_adv = self.attack(model, x, self.sample_targets(y)).x_adv.detach()
        logits = model(x_adv)
        return F.cross_entropy(logits.float(), y), logits


DEFENSES = ("standard", "pgd", "pgd-t", "trades")
FAMILIES = ("flat", "har")


@dataclass
class HierarchyStudyConfig:
    """Flat and HAR models under each defense; meta-class accuracy clean, under untargeted and hierarchical PGD."""

    dataset: str = "fashion-mnist"
    root: str | None = None
    hierarchy: str | None = None          # None: the dataset's built-in grouping
    model: str = "mnist_small"            # flat model and every HAR component
    families: tuple[str, ...] = ("flat", "har")
    defenses: tuple[str, ...] = ("standard", "pgd")
    n_train: int | None = 10000
    n_test: int = 500
    eps: float = 0.1
    norm: str = "linf"
    train_steps: int = 10                 # PGD10 / PGD10-T / TRADES inner steps
    attack_steps: int = 20                # untargeted and hierarchical PGD-20
    trades_beta: float = 6.0
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 2e-4
    batch_size: int = 128
    augment: bool | None = None           # auto: on for cifar10
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def _train_defense(defense: str, cfg: HierarchyStudyConfig, h: Hierarchy | None):
    alpha = cfg.eps / 4 if cfg.norm == "linf" else 2.5 * cfg.eps / cfg.train_steps
    if defense == "standard":
        return StandardTraining()
    if defense == "pgd":
        return PGDTraining(cfg.eps, alpha, cfg.train_steps, cfg.norm)
    if defense == "trades":
        return TradesTraining(cfg.eps, alpha, cfg.train_steps, cfg.trades_beta)
    if defense == "pgd-t":
        if h is None:
            raise ValueError("pgd-t trains flat leaf classifiers only")
        return TargetedOutsideMetaPGDTraining(h, cfg.eps, alpha, cfg.train_steps, cfg.seed)
    raise ValueError(f"unknown defense {defense!r}; choose one of {', '.join(DEFENSES)}")


def _fit_one(cfg: HierarchyStudyConfig, data: ImageSet, n_cls: int, defense: Any, path: Path, reuse: bool,
             device: str, progress: bool, desc: str) -> tuple[nn.Module, Any]:
    c, n, _ = data.shape
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, n_cls, c, n).to(device)
    if reuse and path.is_file():
        model.load_state_dict(load_weights(path, device))
        return model.eval(), "reused"
    opt = make_optimizer(model, "sgd", cfg.lr, cfg.momentum, cfg.weight_decay)
    augment = cfg.augment if cfg.augment is not None else cfg.dataset == "cifar10"
    hist = fit(model, defense, data, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=opt,
               schedule="piecewise", augment=augment, seed=cfg.seed, progress=progress, desc=desc)
    save_weights(path, model.state_dict(), {"model": cfg.model, "role": desc})
    return model.eval(), hist


def train_har(cfg: HierarchyStudyConfig, train: ImageSet, h: Hierarchy, defense: str, out: Path, reuse: bool,
              device: str, progress: bool = False) -> tuple[HARModel, dict[str, Any]]:
    """Train HAR's meta-classifier and one leaf classifier per meta-class, independently, with ``defense``."""
    hist: dict[str, Any] = {}
    meta_data = ImageSet(train.x, h.meta_of(train.y), list(h.meta_names), train.source)
    meta, hist["meta"] = _fit_one(cfg, meta_data, h.n_meta, _train_defense(defense, cfg, None), out /
                                  f"har-{defense}-meta.safetensors", reuse, device, progress, f"har-{defense}-meta")
    leaves: list[nn.Module | None] = []
    for m in range(h.n_meta):
        members = h.leaves_of(m)
        if len(members) == 1:
            leaves.append(None)
            continue
        sel = (h.meta_of(train.y) == m).nonzero().squeeze(1)
        sub = ImageSet(train.x[sel], h.local_index(train.y[sel]), [str(y) for y in members], train.source)
        name = f"har-{defense}-leaf{m}"
        leaf, hist[name] = _fit_one(cfg, sub, len(members), _train_defense(defense, cfg, None),
                                    out / f"{name}.safetensors", reuse, device, progress, name)
        leaves.append(leaf)
    return HARModel(meta, leaves, h).to(device).eval(), hist


def evaluate_hierarchical(model: nn.Module, h: Hierarchy, cfg: HierarchyStudyConfig, x: Tensor, y: Tensor
                          ) -> dict[str, Any]:
    """Clean leaf / meta accuracy, meta accuracy under untargeted PGD, PGD-Meta and hierarchical PGD."""
    alpha = cfg.eps / 4 if cfg.norm == "linf" else 2.5 * cfg.eps / cfg.attack_steps
    clean = predict(model, x)
    meta_ok = h.meta_of(clean.argmax(1)) == h.meta_of(y)
    row: dict[str, Any] = {"clean leaf %": pct(float((clean.argmax(1) == y).float().mean())),
                           "clean meta %": pct(float(meta_ok.float().mean()))}
    t0 = time.perf_counter()
    untargeted = PGD(cfg.eps, alpha, cfg.attack_steps, norm=cfg.norm, seed=cfg.seed)
    adv = predict(model, adversarial_examples(model, untargeted, x, y))
    row[f"PGD-{cfg.attack_steps} meta %"] = pct(meta_accuracy(adv, y, h))
    row[f"PGD-{cfg.attack_steps} leaf %"] = pct(float((adv.argmax(1) == y).float().mean()))
    mm = meta_model(model, h)
    meta_adv = adversarial_examples(mm, PGD(cfg.eps, alpha, cfg.attack_steps, norm=cfg.norm, seed=cfg.seed), x,
                                    h.meta_of(y))
    row["PGD-Meta meta %"] = pct(meta_accuracy(predict(model, meta_adv), y, h))
    hier = HierarchicalPGD(h, cfg.eps, alpha, cfg.attack_steps, cfg.norm, cfg.seed)
    ok_h = []
    for s in range(0, x.shape[0], 250):
        xb, yb = as_float(x[s: s + 250]), y[s: s + 250]
        res = hier(model, xb, yb)
        ok_h.append(~res.success)
    robust = meta_ok & torch.cat(ok_h)
    row[f"hier. PGD-{cfg.attack_steps} meta %"] = pct(float(robust.float().mean()))
    p_clean = p_meta_given_wrong_leaf(clean, y, h)
    p_adv = p_meta_given_wrong_leaf(adv, y, h)
    row["P(meta ok | leaf wrong) clean %"] = pct(p_clean)
    row[f"P(meta ok | leaf wrong) PGD-{cfg.attack_steps} %"] = pct(p_adv)
    row["_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def run_hierarchy_study(cfg: HierarchyStudyConfig, out: str | Path, *, overwrite: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Train the flat and HAR models of ``cfg`` under each defense and evaluate them; writes ``out``."""
    bad = [d for d in cfg.defenses if d not in DEFENSES] + [f for f in cfg.families if f not in FAMILIES]
    if bad:
        raise ValueError(f"unknown defense/family {bad[0]!r}; defenses: {', '.join(DEFENSES)}; "
                         f"families: {', '.join(FAMILIES)}")
    if "pgd-t" in cfg.defenses and "har" in cfg.families:
        raise ValueError("pgd-t is a flat baseline; run it with --families flat (or drop it for HAR)")
    device = resolve_device(cfg.device)
    out = Path(out)
    reuse = config_matches(out, cfg)
    train = load_subset(cfg.dataset, cfg.root, "train", cfg.n_train, cfg.seed, device)
    test = load_subset(cfg.dataset, cfg.root, "test", cfg.n_test, None, device)
    h = get_hierarchy(cfg.dataset, cfg.hierarchy, len(train.classes))
    c, n, _ = train.shape
    build_model(cfg.model, h.n_leaf, c, n)
    out = make_run_dir(out, cfg, overwrite=overwrite)
    rows, hists, seconds = [], {}, {}
    for family in cfg.families:
        for defense in cfg.defenses:
            tag = f"{family}-{defense}"
            t0 = time.perf_counter()
            if family == "flat":
                model, hists[tag] = _fit_one(cfg, train, h.n_leaf, _train_defense(defense, cfg, h),
                                             out / f"{tag}.safetensors", reuse, device, progress, tag)
            else:
                model, hists[tag] = train_har(cfg, train, h, defense, out, reuse, device, progress)
            seconds[tag] = time.perf_counter() - t0
            row = evaluate_hierarchical(model, h, cfg, test.x, test.y)
            seconds[f"{tag} eval"] = row.pop("_seconds")
            rows.append({"family": family, "defense": defense, **row})
    k = cfg.attack_steps
    chance = chance_meta_given_wrong_leaf(test.y, h)
    cols = ["family", "defense", "clean leaf %", "clean meta %", f"PGD-{k} leaf %", f"PGD-{k} meta %",
            "PGD-Meta meta %", f"hier. PGD-{k} meta %"]
    write_table(out, "meta_robustness", rows, f"{cfg.dataset} ({h.name}: {h.describe(train.classes)}), "
                f"{cfg.norm} eps={cfg.eps:.4g}, {len(test)} test images: meta-class accuracy (%)", cols)
    pcols = ["family", "defense", "P(meta ok | leaf wrong) clean %", f"P(meta ok | leaf wrong) PGD-{k} %"]
    write_table(out, "p_meta_given_wrong_leaf", rows, f"P(correct meta | wrong leaf) (%), chance "
                f"{100 * chance:.2f}% (Table 5.2)", pcols)
    acc_cols = cols[3:]
    bar_plot(out / "meta_robustness.png", acc_cols, {f"{r['family']}-{r['defense']}": [r[c] or 0 for c in acc_cols]
                                                     for r in rows}, f"{cfg.dataset}: meta-class accuracy",
             "accuracy (%)")
    metrics = {"device": device, "hierarchy": {"name": h.name, "groups": h.describe(train.classes)},
               "chance_meta_given_wrong_leaf": chance, "rows": rows, "seconds": seconds, "histories": hists,
               "n_train": len(train), "n_test": len(test)}
    finish_run(out, metrics)
    return metrics

