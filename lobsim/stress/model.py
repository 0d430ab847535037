"""The user's model seen from the attacks: book -> the user's inputs -> the user's model -> outputs.

:class:`UserModel` implements the interface every attack uses, ``logits_from_book(P, S, M, centre)`` (books
``(B, Wg, 2, L)`` of centred dollar prices, float sizes with the attacker's shares, the real-level mask, and each
snippet's centre so that absolute prices are available): the adapters of the config are computed on every grid step
(float64), aggregated and sampled every ``step`` grid steps (the last sample at the decision time), normalised as the
config says, laid out as the model expects, and passed to the model. With a torch model the whole chain is
differentiable in the sizes, so the attacker's orders reach the model's input through the propagation; a
gradient-free model (onnxruntime, scikit-learn) gets the same numbers as a numpy array, without autograd.

Before anything runs, :meth:`UserModel.check` feeds a probe book: the input shape the file declares must equal the one
the config describes, the model must accept it, and its output must be what ``[output]`` says.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lobsim.adapters import get
from lobsim.stress.config import StressConfig
from lobsim.stress.loading import LoadedModel, _short, _to_numpy


class UserModel:
    """A loaded user model with its config (see the module docstring)."""

    needs_centre = True  # the attacks pass each snippet's price centre (absolute prices, returns)

    def __init__(self, loaded: LoadedModel, config: StressConfig, levels: int, check: bool = True) -> None:
        self.loaded, self.config = loaded, config
        inp = config.input
        self.levels = inp.levels or levels
        if self.levels > levels:
            raise ValueError(f"{config.source}: [input] levels = {self.levels} but the data have {levels} levels")
        self.inputs = tuple(inp.adapters)
        self.channels = [get(n).channels(self.levels) for n in self.inputs]
        self.n_channels = int(sum(self.channels))
        self.grid_window = inp.grid_window
        self.dtype = torch.float32 if inp.dtype == "float32" else torch.float64
        self.model = loaded.module  # lets gradient_mode switch recurrent modules into attack mode
        self.classifier = config.output.kind == "classifier"
        if check:
            self.check()

    @property
    def differentiable(self) -> bool:
        return self.loaded.torch_fn is not None

    # -- what the model reads ------------------------------------------------------------------------------------

    def input_shape(self, batch: int | str = "batch") -> tuple[Any, ...]:
        W, C, lay = self.config.input.window, self.n_channels, self.config.input.layout
        return {"BWC": (batch, W, C), "BCW": (batch, C, W), "flat": (batch, W * C), "flat_cw": (batch, C * W)}[lay]

    def describe_input(self) -> str:
        parts = ", ".join(f"{n} {c}" for n, c in zip(self.inputs, self.channels))
        inp = self.config.input
        return (f"{self.input_shape()} = window {inp.window} x {self.n_channels} channel(s) ({parts}; {self.levels} "
                f"levels), layout {inp.layout}")

    def features(self, P: torch.Tensor, S: torch.Tensor, M: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """The model's input (B, ...) of books (B, Wg, 2, L) in the config's layout and dtype (differentiable)."""
        inp = self.config.input
        B, Wg = P.shape[0], P.shape[1]
        if Wg != self.grid_window:
            raise ValueError(f"the book windows have {Wg} grid steps; the config reads {self.grid_window} "
                             f"((window - 1) x step + 1 and the leading steps of its channels)")
        L = self.levels
        P64 = P[..., :L].double() + centre.to(device=P.device, dtype=torch.float64)[:, None, None, None]
        S64, Ml = S[..., :L].double(), M[..., :L]
        step, W = inp.step, inp.window
        idx = torch.as_tensor(Wg - 1 - step * np.arange(W - 1, -1, -1), device=P.device)
        parts = []
        for name in self.inputs:
            x = get(name).torch(P64, S64, Ml)  # (B, Wg, c)
            spec = inp.channel(name)
            if spec.aggregate == "snapshot":
                xs = x[:, idx]
            else:
                cs = torch.cat([torch.zeros_like(x[:, :1]), x.cumsum(dim=1)], dim=1)
                xs = cs[:, idx + 1] - cs[:, idx + 1 - step]
                if spec.aggregate == "mean":
                    xs = xs / step
            parts.append(normalise(xs, spec))
        X = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        if inp.layout == "BCW":
            X = X.transpose(1, 2)
        elif inp.layout == "flat":
            X = X.reshape(B, -1)
        elif inp.layout == "flat_cw":
            X = X.transpose(1, 2).reshape(B, -1)
        return X.to(self.dtype)

    # -- calling the model ----------------------------------------------------------------------------------------

    def logits_from_book(self, P: torch.Tensor, S: torch.Tensor, M: torch.Tensor,
                         centre: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs of the user's model: (B, classes) for a classifier, (B, 1) forecasts for a regressor."""
        if centre is None:
            raise ValueError("UserModel.logits_from_book needs each snippet's price centre")
        X = self.features(P, S, M, centre)
        return self.outputs_of(X)

    def outputs_of(self, X: torch.Tensor) -> torch.Tensor:
        """The model's outputs for inputs X (torch), shaped (B, classes) or (B, 1)."""
        B = X.shape[0]
        if self.loaded.torch_fn is not None:
            out = _first(self._batched(lambda x: self.loaded.torch_fn(x), X, torch.cat))
        else:
            with torch.no_grad():
                arr = self._batched(lambda x: _to_numpy(self.loaded.numpy_fn(x)), X.detach().cpu().numpy(),
                                    np.concatenate)
            out = torch.as_tensor(np.asarray(arr, dtype=np.float64), device=X.device)
        return self._shaped(out, B)

    def _batched(self, fn: Any, X: Any, cat: Any) -> Any:
        """Call ``fn`` in chunks of the batch size the file declares (a fixed batch dimension), else at once."""
        d = self.loaded.declared
        n0 = d[0] if d and d[0] is not None else None
        B = X.shape[0]
        if n0 is None or n0 == B:
            return fn(X)
        outs = []
        for lo in range(0, B, n0):
            chunk = X[lo:lo + n0]
            k = chunk.shape[0]
            if k < n0:  # pad the last chunk with copies of its last row
                pad = chunk[-1:].repeat(n0 - k, *([1] * (chunk.ndim - 1))) if isinstance(chunk, torch.Tensor) \
                    else np.repeat(chunk[-1:], n0 - k, axis=0)
                chunk = cat([chunk, pad])
            outs.append(_first(fn(chunk))[:k])
        return cat(outs)

    def _shaped(self, out: torch.Tensor, B: int) -> torch.Tensor:
        o = self.config.output
        src = self.loaded.path or self.loaded.source
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"{src}: the model returned {type(out).__name__}, not an array")
        if self.classifier:
            if out.ndim != 2 or out.shape != (B, o.classes):
                raise ValueError(f"{src}: the model returns shape {tuple(out.shape)} but [output] says a classifier "
                                 f"with {o.classes} classes, so ({B}, {o.classes}) was expected")
            return out
        if out.ndim == 1 and out.shape[0] == B:
            return out[:, None]
        if out.ndim == 2 and out.shape == (B, 1):
            return out
        raise ValueError(f"{src}: the model returns shape {tuple(out.shape)} but [output] says a regressor, so ({B},) "
                         f"or ({B}, 1) was expected")

    # -- checks before running --------------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse a model whose declared input, accepted input or output disagrees with the config (one line)."""
        src, cfg = self.loaded.path or self.loaded.source, self.config.source or "the config"
        want = self.input_shape()
        d = self.loaded.declared
        if d is not None:
            ok = len(d) == len(want) and all(x is None or x == y for x, y in zip(d[1:], want[1:]))
            if not ok:
                shown = tuple("batch" if x is None else x for x in d)
                raise ValueError(f"{src}: the model's input has shape {shown} but {cfg} describes "
                                 f"{self.describe_input()}; fix [input] (adapters, window, levels, layout) or the "
                                 f"model")
        P, S, M, centre = probe_book(2, self.grid_window, self.levels)
        with torch.no_grad():
            X = self.features(P, S, M, centre)
            try:
                out = self.outputs_of(X)
            except ValueError:
                raise
            except Exception as exc:  # noqa: BLE001 - the model refused the input
                raise ValueError(f"{src}: the model does not accept the input {cfg} describes, "
                                 f"{self.describe_input()}: {_short(exc)}") from None
            lm = self.loaded
            if lm.torch_fn is not None and lm.numpy_fn is not None:  # ONNX: does the conversion agree?
                ref = np.asarray(_to_numpy(lm.numpy_fn(X.cpu().numpy())), dtype=np.float64).reshape(out.shape)
                got = out.double().cpu().numpy()
                if not np.allclose(got, ref, rtol=1e-4, atol=1e-5 * (1 + np.abs(ref).max())):
                    lm.notes.append(f"the onnx2torch conversion disagrees with onnxruntime (max difference "
                                    f"{np.abs(got - ref).max():.3g}), so the model runs in onnxruntime, gradient-free")
                    lm.torch_fn, lm.module, self.model = None, None, None
                    lm.source = lm.source.replace("(onnx2torch: gradients)", "(onnxruntime)")


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def normalise(x: torch.Tensor, spec: Any) -> torch.Tensor:
    """One adapter's sampled channels (B, W, c) normalised as ``spec`` says (see config.NORMS), then / scale."""
    n = spec.norm
    if n == "zscore":
        mean = torch.as_tensor(spec.mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(spec.std, dtype=x.dtype, device=x.device)
        if mean.ndim and mean.shape[0] != x.shape[-1] or std.ndim and std.shape[0] != x.shape[-1]:
            raise ValueError(f"zscore: mean/std give {mean.numel()}/{std.numel()} values for {x.shape[-1]} channels")
        x = (x - mean) / std
    elif n == "last":
        x = x - x[:, -1:]
    elif n == "first":
        x = x - x[:, :1]
    elif n == "diff":
        x = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
    elif n == "return_last":
        x = x / x[:, -1:] - 1.0
    elif n == "returns":
        x = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] / x[:, :-1] - 1.0], dim=1)
    elif n == "log_returns":
        x = torch.cat([torch.zeros_like(x[:, :1]), torch.log(x[:, 1:] / x[:, :-1])], dim=1)
    elif n == "log1p":
        x = torch.sign(x) * torch.log1p(x.abs())
    return x / spec.scale if spec.scale != 1 else x


def probe_book(B: int, W: int, L: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A small plausible book (centred prices around $10, one-cent ladder, random sizes) to probe a model."""
    rng = np.random.default_rng(seed)
    j = np.arange(L)
    mid = 10.0 + 0.01 * np.cumsum(rng.integers(-1, 2, size=(B, W)), axis=1)
    P = np.empty((B, W, 2, L))
    P[:, :, 0] = mid[..., None] - 0.005 - 0.01 * j
    P[:, :, 1] = mid[..., None] + 0.005 + 0.01 * j
    centre = P.mean(axis=(1, 2, 3))
    S = rng.integers(100, 3000, size=(B, W, 2, L)).astype(np.float64)
    return (torch.as_tensor(P - centre[:, None, None, None], dtype=torch.float32),
            torch.as_tensor(S, dtype=torch.float32), torch.ones((B, W, 2, L), dtype=torch.bool),
            torch.as_tensor(centre, dtype=torch.float64))
