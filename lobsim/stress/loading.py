"""Loading the user's model: TorchScript, torch.export (.pt2), ONNX; any Python callable. Never unpickles.

What is accepted, decided from the file's bytes (the extension only breaks ties):

- **TorchScript** (a zip with ``code/``; ``torch.jit.save`` of ``torch.jit.script``/``trace``): ``torch.jit.load``,
  whose unpickler rebuilds only tensors and TorchScript objects. Differentiable.
- **torch.export** (``torch.export.save``, a zip with ``archive_format``): loaded with ``torch.export.load`` only after
  the archive is checked: weights and constants stored as raw tensors (no ``use_pickle`` entry, no opaque or custom
  objects, no legacy ``.pt`` payloads, no compiled AOTInductor code) and sample inputs that load with
  ``torch.load(weights_only=True)``. Differentiable.
- **ONNX** (protobuf): converted to torch with onnx2torch when the graph converts and the converted model agrees with
  onnxruntime on a probe input (then differentiable); otherwise run with onnxruntime and attacked gradient-free.
- **Refused**: Python pickles (``pickle``, ``joblib``, ``torch.save`` of a whole model, ``.pkl/.joblib/.sav``), with a
  one-line error saying what to export instead. A scikit-learn model goes through the Python entry point
  (:func:`lobsim.stress.stress`) or an ONNX export (skl2onnx).
"""

from __future__ import annotations

import io
import json
import sys
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

PICKLE_HINT = ("advsim never unpickles files (a pickle can run any code); export the model to ONNX (scikit-learn: "
               "skl2onnx), TorchScript (torch.jit.script / trace + save) or torch.export (.pt2), or pass the model "
               "object to lobsim.stress.stress() in Python")
EXPECTED = "TorchScript (.pt), torch.export (.pt2) or ONNX (.onnx)"


@dataclass
class LoadedModel:
    """A model ready to call: ``torch_fn`` (differentiable, torch in/out) and/or ``numpy_fn`` (numpy in/out).

    ``declared``: the input shape the file declares (None for a dynamic dimension), when it declares one.
    ``source``: how it was loaded, in words; ``notes``: why a path was not taken (e.g. no gradients)."""

    source: str
    torch_fn: Callable[[torch.Tensor], Any] | None = None
    numpy_fn: Callable[[np.ndarray], Any] | None = None
    declared: tuple[int | None, ...] | None = None
    module: torch.nn.Module | None = None
    path: str = ""
    output_index: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def differentiable(self) -> bool:
        return self.torch_fn is not None


# -- sniffing ----------------------------------------------------------------------------------------------------


def sniff(path: str | Path) -> str:
    """``torchscript``, ``export`` or ``onnx`` from the file's bytes; pickles and unknown files raise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected {EXPECTED})")
    head = path.read_bytes()[:8]
    if not head:
        raise ValueError(f"{path}: empty file (expected {EXPECTED})")
    if head.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(path).namelist()
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path}: a damaged zip archive (expected {EXPECTED}): {exc}") from None
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return "export"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            raise ValueError(f"{path}: a torch.save archive (a pickled Python object), not TorchScript or "
                             f"torch.export; {PICKLE_HINT}")
        raise ValueError(f"{path}: a zip archive that is neither TorchScript nor torch.export (expected {EXPECTED})")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        raise ValueError(f"{path}: a Python pickle (pickle / joblib / torch.save); {PICKLE_HINT}")
    if path.suffix.lower() in (".pkl", ".pickle", ".joblib", ".sav", ".dill", ".cloudpickle"):
        raise ValueError(f"{path}: a {path.suffix} file is a (compressed) pickle; {PICKLE_HINT}")
    if head[:2] in (b"\x1f\x8b", b"x\x9c", b"x\x01", b"x\xda", b"BZ") or head[:4] == b"\x04\x22\x4d\x18" \
            or head[:6] == b"\xfd7zXZ\x00":
        raise ValueError(f"{path}: a compressed file (gzip/zlib/bz2/lz4/xz, as joblib writes pickles); "
                         f"{PICKLE_HINT}")
    return "onnx"


# -- loaders -----------------------------------------------------------------------------------------------------


def load_model(path: str | Path, fmt: str = "auto", output_name: str = "", gradients: str = "auto") -> LoadedModel:
    """Load a model file (see the module docstring). ``gradients="none"`` keeps only the gradient-free path."""
    path = Path(path)
    kind = sniff(path)
    if fmt != "auto" and fmt != kind:
        raise ValueError(f"{path}: [model] format says {fmt!r} but the file is {kind!r}")
    if kind == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure of the loader is a bad file
            raise ValueError(f"{path}: not a loadable TorchScript file: {_short(exc)}") from exc
        module.eval()
        lm = LoadedModel(f"TorchScript {path.name}", torch_fn=module, module=module, path=str(path))
    elif kind == "export":
        lm = _load_export(path)
    else:
        lm = _load_onnx(path, output_name, gradients)
    if gradients == "none" and lm.torch_fn is not None:
        fn = lm.torch_fn
        lm.numpy_fn = lambda x: _to_numpy(fn(torch.from_numpy(x)))
        lm.torch_fn = None
        lm.notes.append("gradients switched off by the config ([model] gradients = 'none')")
    return lm


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def _to_numpy(out: Any) -> np.ndarray:
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def _check_pt2(path: Path) -> None:
    """Refuse a .pt2 archive whose loading would unpickle anything beyond plain tensors."""
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    for n in names:
        tail = n.split("/", 1)[1] if "/" in n else n
        if tail.startswith("data/aotinductor/"):
            raise ValueError(f"{path}: holds compiled AOTInductor code ({n}); advsim loads plain torch.export "
                             "programs only (torch.export.save without compiling)")
        if (tail.startswith("data/weights/") or tail.startswith("data/constants/")) and tail.endswith(".pt"):
            raise ValueError(f"{path}: a legacy .pt2 with pickled weights ({n}); re-save it with torch.export.save")
        if tail.startswith("data/") and tail.endswith("_config.json"):
            cfg = json.loads(zf.read(n)).get("config", {})
            for key, meta in cfg.items():
                if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                    raise ValueError(f"{path}: entry {key!r} of {tail} would be unpickled (pickled tensor, opaque or "
                                     f"custom object); {PICKLE_HINT}")
        if tail.startswith("data/sample_inputs/"):
            try:
                torch.load(io.BytesIO(zf.read(n)), weights_only=True)
            except Exception as exc:  # noqa: BLE001 - the restricted unpickler refused it
                raise ValueError(f"{path}: its sample inputs ({n}) are not plain tensors ({_short(exc)}); "
                                 f"{PICKLE_HINT}") from None


def _load_export(path: Path) -> LoadedModel:
    _check_pt2(path)
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a loadable torch.export program: {_short(exc)}") from exc
    declared = None
    try:
        user = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        if len(user) != 1:
            raise ValueError(f"{path}: the program takes {len(user)} inputs; advsim feeds one tensor")
        val = nodes[user[0].arg.name].meta.get("val")
        if val is not None:
            declared = tuple(int(d) if isinstance(d, int) else None for d in val.shape)
    except (AttributeError, KeyError):
        declared = None
    module = ep.module()
    return LoadedModel(f"torch.export program {path.name}", torch_fn=module, module=module, declared=declared,
                       path=str(path))


def _import_onnx2torch() -> Any:
    """onnx2torch, imported even where torchvision is missing or broken (it only needs it for NMS / RoIAlign)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or built for another torch
        saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
        for k in saved:
            del sys.modules[k]

        def missing(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("this ONNX graph uses NonMaxSuppression/RoIAlign, which needs a working torchvision")

        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        ops.nms = ops.box_convert = ops.roi_align = missing  # type: ignore[attr-defined]
        tv.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
        try:
            import onnx2torch
        finally:
            for k in ("torchvision", "torchvision.ops"):
                sys.modules.pop(k, None)
            sys.modules.update(saved)
        return onnx2torch
    import onnx2torch

    return onnx2torch


def _load_onnx(path: Path, output_name: str, gradients: str) -> LoadedModel:
    try:
        import onnx
    except ImportError:
        raise ValueError(f"{path}: reading ONNX models needs the onnx extra: pip install 'advsim[onnx]'") from None
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - DecodeError and friends
        raise ValueError(f"{path}: not a model file: neither {EXPECTED} ({_short(exc)})") from None
    g = proto.graph
    if not g.node:
        raise ValueError(f"{path}: not a model file: no ONNX graph inside (expected {EXPECTED})")
    inits = {i.name for i in g.initializer}
    ins = [i for i in g.input if i.name not in inits]
    if len(ins) != 1:
        raise ValueError(f"{path}: the ONNX graph takes {len(ins)} inputs ({[i.name for i in ins]}); advsim feeds "
                         "one tensor")
    declared = tuple((d.dim_value if d.HasField("dim_value") else None) for d in ins[0].type.tensor_type.shape.dim)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    outs = [o.name for o in g.output]
    if output_name:
        if output_name not in outs:
            raise ValueError(f"{path}: no output named {output_name!r}; the graph's outputs are {outs}")
        index = outs.index(output_name)
    else:
        cands = [k for k, o in enumerate(g.output) if o.type.HasField("tensor_type")
                 and o.type.tensor_type.elem_type in floats]
        if not cands:
            raise ValueError(f"{path}: no float tensor output among {outs} (a classifier exported with ZipMap? "
                             "export with options={'zipmap': False}); name one with [output] name")
        index = cands[0]
    lm = LoadedModel(f"ONNX {path.name}", declared=declared, path=str(path), output_index=index)
    name = outs[index]
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        in_type = sess.get_inputs()[0].type
        np_dtype = np.float64 if "double" in in_type else np.float32
        lm.numpy_fn = lambda x: sess.run([name], {in_name: np.ascontiguousarray(x, dtype=np_dtype)})[0]
        lm.source = f"ONNX {path.name} (onnxruntime)"
    except ImportError:
        lm.notes.append("onnxruntime is not installed (pip install 'advsim[onnx]')")
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: onnxruntime cannot run this graph: {_short(exc)}") from exc
    if gradients != "none":
        try:
            o2t = _import_onnx2torch()
            module = o2t.convert(proto).eval()
            lm.module = module
            lm.torch_fn = lambda x: _pick(module(x), index)
            lm.source = f"ONNX {path.name} (onnx2torch: gradients)"
        except ImportError:
            lm.notes.append("onnx2torch is not installed, so the ONNX model is attacked gradient-free "
                            "(pip install 'advsim[onnx]')")
        except Exception as exc:  # noqa: BLE001 - the graph does not convert
            lm.notes.append(f"the ONNX graph does not convert to torch ({_short(exc)}), so it runs in onnxruntime "
                            "and is attacked gradient-free")
    if lm.torch_fn is None and lm.numpy_fn is None:
        raise ValueError(f"{path}: neither onnx2torch nor onnxruntime can run this ONNX model: "
                         f"{'; '.join(lm.notes)}")
    return lm


def _pick(out: Any, index: int) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return out[index]
    if index != 0:
        raise ValueError(f"output {index} requested but the converted model returns one tensor")
    return out


def from_callable(fn: Any, torch_fn: bool | None = None) -> LoadedModel:
    """A Python model: a torch ``nn.Module`` (differentiable), a scikit-learn-like object (``predict_proba`` for
    classifiers, else ``predict``; gradient-free) or a plain function of a numpy array (``torch_fn=True``: of a
    torch tensor, differentiable)."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if isinstance(fn, torch.nn.Module):
        fn.eval()
        return LoadedModel(f"torch module {type(fn).__name__}", torch_fn=fn, module=fn)
    if hasattr(fn, "predict_proba"):
        return LoadedModel(f"{type(fn).__name__}.predict_proba (gradient-free)", numpy_fn=fn.predict_proba)
    if hasattr(fn, "predict") and not callable(fn):
        return LoadedModel(f"{type(fn).__name__}.predict (gradient-free)", numpy_fn=fn.predict)
    if hasattr(fn, "predict") and not isinstance(fn, types.FunctionType):
        return LoadedModel(f"{type(fn).__name__}.predict (gradient-free)", numpy_fn=fn.predict)
    if not callable(fn):
        raise ValueError(f"stress: the model must be a callable, a torch module or an object with predict / "
                         f"predict_proba, got {type(fn).__name__}")
    if torch_fn:
        return LoadedModel(f"torch function {name}", torch_fn=fn)
    return LoadedModel(f"Python function {name} (gradient-free)", numpy_fn=fn)
