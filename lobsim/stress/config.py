"""The user's description of their model: what it reads, what it returns, what it predicts (TOML or JSON).

A stress config has four tables (only ``input`` and ``output`` are required)::

    [model]                      # the model file (the CLI's MODEL argument overrides it)
    file = "regressor.onnx"      # relative to the config file
    format = "auto"              # auto | torchscript | export | onnx
    gradients = "auto"           # auto | none (attack gradient-free even when gradients exist)

    [input]
    adapters = ["microprice", "imbalance"]   # lobsim.adapters names, in channel order
    dt = 0.1                     # grid step, s: where the attacker may act and the book is read
    step = 10                    # the model reads every step-th grid snapshot ...
    window = 30                  # ... window of them, the last one at the decision time
    levels = 10                  # book levels the adapters see (default: all the data has)
    layout = "BWC"               # BWC (batch, window, channels) | BCW | flat (B, W*C, time-major) | flat_cw

    [input.channels.microprice]  # per adapter (default: snapshot, none)
    aggregate = "snapshot"       # snapshot (value at the sampled step) | sum | mean (over the step's grid steps)
    norm = "log_returns"         # see NORMS
    scale = 1e-4                 # divide by this after the norm (default 1)

    [output]
    kind = "regressor"           # classifier | regressor
    classes = 3                  # classifier: number of outputs (logits or probabilities)
    fooled = "move"              # classifier: change | target:K ; regressor: move | cross
    threshold = 0.0005           # regressor, move: fooled when |forecast - clean forecast| > threshold
    name = ""                    # ONNX: the output to read (default: the first float output)

    [target]                     # optional: the truth, for accuracy / forecast error
    series = "microprice"        # a one-channel price-like adapter
    horizon = 10                 # model snapshots ahead (horizon * step grid steps)
    change = "log_return"        # diff ($) | return | log_return
    scale = 1e-4                 # the change in the model's units is change / scale (here: basis points)
    edges = [-1.0, 1.0]          # classifier: class k = number of edges < change / scale (len(edges) + 1 classes)

Everything is checked when the config is read, with the file and the field in the message.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NORMS = {
    "none": "the adapter's value as is",
    "zscore": "(x - mean) / std, mean and std given (a number or one per channel)",
    "last": "x - x at the window's last snapshot",
    "first": "x - x at the window's first snapshot",
    "diff": "x_t - x_(t-1) between the sampled snapshots (0 at the first)",
    "return_last": "x / x_last - 1 (price-like channels)",
    "returns": "x_t / x_(t-1) - 1 between the sampled snapshots, 0 at the first (price-like channels)",
    "log_returns": "log(x_t / x_(t-1)), 0 at the first (price-like channels)",
    "log1p": "sign(x) log(1 + |x|) (sizes, flows)",
}
ABSOLUTE_NORMS = ("none", "zscore", "return_last", "returns", "log_returns", "log1p")  # need absolute prices
AGGREGATES = ("snapshot", "sum", "mean")
LAYOUTS = ("BWC", "BCW", "flat", "flat_cw")
FORMATS = ("auto", "torchscript", "export", "onnx")
CHANGES = ("diff", "return", "log_return")


@dataclass
class ChannelSpec:
    """How one adapter's channels are aggregated over a sampling step and normalised."""

    aggregate: str = "snapshot"
    norm: str = "none"
    scale: float = 1.0
    mean: float | list[float] = 0.0
    std: float | list[float] = 1.0


@dataclass
class InputSpec:
    adapters: list[str]
    dt: float = 0.1
    step: int = 1
    window: int = 30
    levels: int | None = None
    layout: str = "BWC"
    dtype: str = "float32"
    channels: dict[str, ChannelSpec] = field(default_factory=dict)

    @property
    def grid_window(self) -> int:
        """Grid steps one model input spans: (window - 1) * step + 1, plus step - 1 leading steps when a channel
        sums or averages over the sampling step, plus one when a channel compares consecutive steps (ofi)."""
        extra = self.step - 1 if any(c.aggregate != "snapshot" for c in self.channels.values()) else 0
        return (self.window - 1) * self.step + 1 + extra + (1 if "ofi" in self.adapters else 0)

    def channel(self, name: str) -> ChannelSpec:
        return self.channels.get(name, ChannelSpec())


@dataclass
class OutputSpec:
    kind: str = "classifier"
    classes: int = 3
    fooled: str = ""
    threshold: float = 0.0
    name: str = ""

    @property
    def target_class(self) -> int | None:
        return int(self.fooled.split(":", 1)[1]) if self.fooled.startswith("target:") else None


@dataclass
class TargetSpec:
    series: str = "mid"
    horizon: int = 10
    change: str = "log_return"
    scale: float = 1.0
    edges: list[float] = field(default_factory=list)


@dataclass
class ModelSpec:
    file: str = ""
    format: str = "auto"
    gradients: str = "auto"


@dataclass
class StressConfig:
    """A parsed, validated stress config (JSON-serialisable; ``source`` is the file it came from)."""

    input: InputSpec
    output: OutputSpec
    target: TargetSpec | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<config>") -> StressConfig:
        return parse_config(d, source)

    def model_path(self) -> Path | None:
        """The model file named in the config, relative to the config file's folder."""
        if not self.model.file:
            return None
        p = Path(self.model.file)
        return p if p.is_absolute() or not self.source else Path(self.source).parent / p


def load_config(path: str | os.PathLike) -> StressConfig:
    """Read and validate a stress config (``.toml`` or ``.json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stress config (a .toml or .json file; see docs/stress.md)")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            raw = tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    return parse_config(raw, str(path))


def _table(raw: dict[str, Any], key: str, src: str, required: bool) -> dict[str, Any]:
    val = raw.get(key)
    if val is None:
        if required:
            raise ValueError(f"{src}: missing table [{key}] (see docs/stress.md)")
        return {}
    if not isinstance(val, dict):
        raise ValueError(f"{src}: [{key}] must be a table, got {type(val).__name__}")
    return val


def _take(d: dict[str, Any], allowed: set[str], where: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise ValueError(f"{where}: unknown field(s) {bad}; allowed: {sorted(allowed)}")


def parse_config(raw: dict[str, Any], source: str = "<config>") -> StressConfig:
    """Validate a config dict (as read from TOML/JSON); errors name the source and the field."""
    from lobsim.adapters import get

    src = source
    if not isinstance(raw, dict):
        raise ValueError(f"{src}: a stress config is a table (TOML) / object (JSON)")
    _take(raw, {"model", "input", "output", "target", "source"}, src)
    # input
    t = _table(raw, "input", src, True)
    _take(t, {"adapters", "dt", "step", "window", "levels", "layout", "dtype", "channels"}, f"{src}: [input]")
    adapters = t.get("adapters")
    if isinstance(adapters, str):
        adapters = [a.strip() for a in adapters.split(",") if a.strip()]
    if not isinstance(adapters, list) or not adapters or not all(isinstance(a, str) for a in adapters):
        raise ValueError(f"{src}: [input] adapters must be a non-empty list of adapter names")
    for a in adapters:
        try:
            get(a)
        except ValueError as exc:
            raise ValueError(f"{src}: [input] adapters: {exc}") from None
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"{src}: [input] adapters: a name appears twice")
    chans_raw = t.get("channels", {})
    if not isinstance(chans_raw, dict):
        raise ValueError(f"{src}: [input.channels] must be a table of adapter names")
    channels: dict[str, ChannelSpec] = {}
    for name, c in chans_raw.items():
        where = f"{src}: [input.channels.{name}]"
        if name not in adapters:
            raise ValueError(f"{where}: {name!r} is not one of the adapters {adapters}")
        if not isinstance(c, dict):
            raise ValueError(f"{where}: must be a table")
        _take(c, {"aggregate", "norm", "scale", "mean", "std"}, where)
        spec = ChannelSpec(**c)
        if spec.aggregate not in AGGREGATES:
            raise ValueError(f"{where}: aggregate must be one of {list(AGGREGATES)}, got {spec.aggregate!r}")
        if spec.norm not in NORMS:
            raise ValueError(f"{where}: norm must be one of {list(NORMS)}, got {spec.norm!r}")
        if not (isinstance(spec.scale, (int, float)) and spec.scale > 0 and math.isfinite(spec.scale)):
            raise ValueError(f"{where}: scale must be a positive number, got {spec.scale!r}")
        stds = spec.std if isinstance(spec.std, list) else [spec.std]
        if not all(isinstance(s, (int, float)) and s > 0 for s in stds):
            raise ValueError(f"{where}: std must be positive (a number or one per channel), got {spec.std!r}")
        if spec.norm in ("return_last", "returns", "log_returns") and not get(name).price_like:
            raise ValueError(f"{where}: norm {spec.norm!r} is for price-like adapters (prices, mid, microprice, "
                             f"swa); {name!r} is not one")
        channels[name] = spec
    inp = InputSpec(adapters=list(adapters), dt=t.get("dt", 0.1), step=t.get("step", 1), window=t.get("window", 30),
                    levels=t.get("levels"), layout=t.get("layout", "BWC"), dtype=t.get("dtype", "float32"),
                    channels=channels)
    if not (isinstance(inp.dt, (int, float)) and inp.dt > 0):
        raise ValueError(f"{src}: [input] dt must be a positive number of seconds, got {inp.dt!r}")
    for k in ("step", "window"):
        v = getattr(inp, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{src}: [input] {k} must be an integer >= 1, got {v!r}")
    if inp.levels is not None and (not isinstance(inp.levels, int) or inp.levels < 1):
        raise ValueError(f"{src}: [input] levels must be an integer >= 1, got {inp.levels!r}")
    if inp.layout not in LAYOUTS:
        raise ValueError(f"{src}: [input] layout must be one of {list(LAYOUTS)}, got {inp.layout!r}")
    if inp.dtype not in ("float32", "float64"):
        raise ValueError(f"{src}: [input] dtype must be float32 or float64, got {inp.dtype!r}")
    # output
    o = _table(raw, "output", src, True)
    _take(o, {"kind", "classes", "fooled", "threshold", "name"}, f"{src}: [output]")
    out = OutputSpec(**o)
    if out.kind == "classifier":
        if not isinstance(out.classes, int) or out.classes < 2:
            raise ValueError(f"{src}: [output] classes must be an integer >= 2, got {out.classes!r}")
        out.fooled = out.fooled or "change"
        if out.fooled != "change":
            k = out.target_class if out.fooled.startswith("target:") and out.fooled[7:].isdigit() else None
            if k is None or k >= out.classes:
                raise ValueError(f"{src}: [output] fooled must be 'change' or 'target:K' with 0 <= K < "
                                 f"{out.classes}, got {out.fooled!r}")
    elif out.kind == "regressor":
        out.fooled = out.fooled or "move"
        if out.fooled not in ("move", "cross"):
            raise ValueError(f"{src}: [output] fooled must be 'move' or 'cross' for a regressor, got {out.fooled!r}")
        if out.fooled == "move" and not (isinstance(out.threshold, (int, float)) and out.threshold > 0):
            raise ValueError(f"{src}: [output] threshold must be > 0 (in the forecast's units) with fooled = "
                             f"'move', got {out.threshold!r}")
        out.classes = 1
    else:
        raise ValueError(f"{src}: [output] kind must be 'classifier' or 'regressor', got {out.kind!r}")
    # target
    tg = _table(raw, "target", src, False)
    target = None
    if tg:
        _take(tg, {"series", "horizon", "change", "scale", "edges"}, f"{src}: [target]")
        target = TargetSpec(**tg)
        try:
            a = get(target.series)
        except ValueError as exc:
            raise ValueError(f"{src}: [target] series: {exc}") from None
        if not a.price_like or a.channels(1) != 1:
            raise ValueError(f"{src}: [target] series must be a one-channel price-like adapter (mid, microprice, "
                             f"swa), got {target.series!r}")
        if not isinstance(target.horizon, int) or target.horizon < 1:
            raise ValueError(f"{src}: [target] horizon must be an integer >= 1 (model snapshots), got "
                             f"{target.horizon!r}")
        if not (isinstance(target.scale, (int, float)) and target.scale > 0):
            raise ValueError(f"{src}: [target] scale must be a positive number, got {target.scale!r}")
        if target.change not in CHANGES:
            raise ValueError(f"{src}: [target] change must be one of {list(CHANGES)}, got {target.change!r}")
        if out.kind == "classifier":
            e = target.edges
            if (not isinstance(e, list) or len(e) != out.classes - 1
                    or any(not isinstance(x, (int, float)) for x in e) or sorted(e) != e):
                raise ValueError(f"{src}: [target] edges must be {out.classes - 1} increasing numbers for "
                                 f"{out.classes} classes, got {e!r}")
    # model
    m = _table(raw, "model", src, False)
    _take(m, {"file", "format", "gradients"}, f"{src}: [model]")
    model = ModelSpec(**m)
    if model.format not in FORMATS:
        raise ValueError(f"{src}: [model] format must be one of {list(FORMATS)}, got {model.format!r}")
    if model.gradients not in ("auto", "none"):
        raise ValueError(f"{src}: [model] gradients must be 'auto' or 'none', got {model.gradients!r}")
    return StressConfig(input=inp, output=out, target=target, model=model, source=str(source))
