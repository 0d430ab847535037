"""A network as a small graph of affine maps, ReLUs and additions: the form the dual network works on.

``trace_network(model, input_shape)`` traces ``model`` with torch.fx and turns every operation into one of four
node kinds:

- ``input``: the perturbed input z_1 = x.
- ``affine``: z = A z_src + b for Linear, Conv2d, BatchNorm (running statistics, i.e. folded), the models'
  ``Normalize`` layer, Flatten/reshape/view, average pooling, Identity/Dropout and additions or products with
  constants. ``node.linear(v)`` applies A to a batch of vectors (N, *in_shape); ``node.bias`` is b (or None);
  ``node.transpose(v)`` applies A^T.
- ``relu``: z = max(z_src, 0).
- ``add``: z = sum of several earlier nodes (residual / skip connections).

Anything else (max-pooling, sigmoid, data-dependent control flow) raises a ValueError naming the operation.
BatchNorm always uses its running statistics: a trained network with batch norm is certified as the affine map
it is at evaluation time.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["Node", "Graph", "trace_network"]


@dataclass
class Node:
    """One operation of the traced network; shapes are per example (no batch axis)."""

    kind: str                         # input | affine | relu | add
    inputs: list[int]
    shape: tuple[int, ...]
    name: str = ""
    linear: Callable[[Tensor], Tensor] | None = None      # affine: v (N, *in_shape) -> A v (N, *shape)
    bias_fn: Callable[[], Tensor | None] | None = None    # affine: b of shape `shape`, or None
    in_shape: tuple[int, ...] = ()
    transpose_fn: Callable[[Tensor], Tensor] | None = None  # affine: explicit A^T when cheaper than autograd

    @property
    def bias(self) -> Tensor | None:
        return self.bias_fn() if self.bias_fn is not None else None

    def transpose(self, v: Tensor) -> Tensor:
        """A^T v for a batch v (N, *shape) -> (N, *in_shape) (vector-Jacobian product of the linear part)."""
        if self.transpose_fn is not None:
            return self.transpose_fn(v)
        z0 = torch.zeros((v.shape[0], *self.in_shape), dtype=v.dtype, device=v.device)
        _, vjp = torch.func.vjp(self.linear, z0)
        return vjp(v)[0]


@dataclass
class Graph:
    """Nodes in topological order; node 0 is the input, the last node the output."""

    nodes: list[Node]
    consumers: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.consumers = [[] for _ in self.nodes]
        for i, nd in enumerate(self.nodes):
            for j in nd.inputs:
                self.consumers[j].append(i)

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    def relus(self) -> list[int]:
        return [i for i, nd in enumerate(self.nodes) if nd.kind == "relu"]


class _Tracer(fx.Tracer):
    """Keeps the models' Normalize layer (and every standard nn layer) as a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from vision.models import Normalize

        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def _conv(m: nn.Conv2d) -> Callable[[Tensor], Tensor]:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError(f"Conv2d with padding={m.padding!r}, padding_mode={m.padding_mode!r} is not supported by "
                         "the dual network (use integer zero padding)")
    return lambda v: F.conv2d(v, m.weight, None, m.stride, m.padding, m.dilation, m.groups)


def _conv_t(m: nn.Conv2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """A^T of a convolution: the transposed convolution with the output padding that restores ``in_shape``."""
    pad = []
    for ax in range(2):
        full = (out_shape[1 + ax] - 1) * m.stride[ax] - 2 * m.padding[ax] + m.dilation[ax] * (m.kernel_size[ax] - 1) + 1
        pad.append(in_shape[1 + ax] - full)
    if min(pad) < 0 or max(pad) >= max(m.stride):
        return None
    return lambda v: F.conv_transpose2d(v, m.weight, None, m.stride, m.padding, tuple(pad), m.groups, m.dilation)


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """A per-channel vector shaped to broadcast over (C, ...) of an example with ``ndim`` axes."""
    return t.view(-1, *([1] * (ndim - 1)))


def _bn(m: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...]):
    if not m.track_running_stats or m.running_mean is None:
        raise ValueError(f"BatchNorm {m} has no running statistics; the dual network needs fixed (folded) statistics")

    def scale() -> Tensor:
        s = torch.rsqrt(m.running_var + m.eps)
        return s * m.weight if m.affine else s

    def bias() -> Tensor:
        b = -m.running_mean * scale()
        if m.affine:
            b = b + m.bias
        return _channel_view(b, len(shape)).expand(shape)

    return (lambda v: v * _channel_view(scale(), len(shape))), bias


def _normalize(m: nn.Module, shape: tuple[int, ...]):
    return (lambda v: v / m.std.view(m.std.shape[1:]).to(v.dtype)), \
        (lambda: (-m.mean / m.std).view(m.mean.shape[1:]).expand(shape))


def _const(a) -> bool:
    return isinstance(a, (int, float))


def _describe(n: fx.Node) -> str:
    return f"{n.op} {getattr(n.target, '__name__', n.target)!s}"


def trace_network(model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """The graph of ``model`` for inputs of shape ``input_shape`` (one example, no batch axis)."""
    key = tuple(int(s) for s in input_shape)
    cache = _CACHE.get(model)
    if cache is not None and key in cache:
        return cache[key]
    g = _trace(model, key)
    _CACHE.setdefault(model, {})[key] = g
    return g


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    try:
        fgraph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise ValueError(f"cannot trace {type(model).__name__} for certification ({exc}); use a network of "
                         "Linear/Conv2d/BatchNorm/ReLU layers and additions") from exc
    gm = fx.GraphModule(model, fgraph)
    p = next(iter(model.parameters()), None)
    sample = torch.zeros((1, *input_shape), dtype=p.dtype if p is not None else torch.float32,
                         device=p.device if p is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(sample)
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    nodes: list[Node] = []
    index: dict[fx.Node, int] = {}
    alias: dict[fx.Node, fx.Node] = {}

    def src(a) -> int:
        while a in alias:
            a = alias[a]
        if a not in index:
            raise ValueError(f"the dual network cannot follow the value {a} (not a tensor of the network)")
        return index[a]

    def shape_of(n: fx.Node) -> tuple[int, ...]:
        meta = n.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise ValueError(f"{_describe(n)}: the dual network needs a single tensor output here")
        return tuple(int(s) for s in meta.shape[1:])

    def const(shape: tuple[int, ...], value: float) -> Tensor:
        return torch.full(shape, value, dtype=sample.dtype, device=sample.device)

    def add_affine(n: fx.Node, a, linear, bias_fn=None, transpose_fn=None) -> None:
        i = src(a)
        nodes.append(Node("affine", [i], shape_of(n), n.name, linear, bias_fn, nodes[i].shape, transpose_fn))
        index[n] = len(nodes) - 1

    for n in fgraph.nodes:
        if n.op == "placeholder":
            if nodes:
                raise ValueError("the dual network supports models with one input")
            nodes.append(Node("input", [], input_shape, n.name))
            index[n] = 0
        elif n.op == "output":
            out = n.args[0]
            if not isinstance(out, fx.Node):
                raise ValueError("the dual network supports models with one tensor output")
            j = src(out)
            if j != len(nodes) - 1:  # make the output the last node
                nodes.append(Node("affine", [j], nodes[j].shape, "output", lambda v: v, None, nodes[j].shape))
        elif n.op == "call_module":
            m = modules[n.target]
            a = n.args[0]
            shp = shape_of(n)
            if isinstance(m, nn.Linear):
                add_affine(n, a, (lambda v, m=m: F.linear(v, m.weight)),
                           (lambda m=m: m.bias) if m.bias is not None else None, lambda v, m=m: v @ m.weight)
            elif isinstance(m, nn.Conv2d):
                add_affine(n, a, _conv(m), (lambda m=m, s=shp: _channel_view(m.bias, len(s)).expand(s))
                           if m.bias is not None else None, _conv_t(m, nodes[src(a)].shape, shp))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                add_affine(n, a, *_bn(m, shp))
            elif type(m).__name__ == "Normalize" and hasattr(m, "mean") and hasattr(m, "std"):
                add_affine(n, a, *_normalize(m, shp))
            elif isinstance(m, nn.Flatten):
                add_affine(n, a, lambda v, s=shp: v.reshape(v.shape[0], *s))
            elif isinstance(m, (nn.Identity, nn.Dropout)):
                alias[n] = a
            elif isinstance(m, nn.ReLU):
                nodes.append(Node("relu", [src(a)], shp, n.name))
                index[n] = len(nodes) - 1
            elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                add_affine(n, a, lambda v, m=m: m(v))
            else:
                raise ValueError(f"layer {n.target} ({type(m).__name__}) is not supported by the dual network; "
                                 "supported: Linear, Conv2d, BatchNorm, ReLU, Flatten, average pooling, additions")
        elif n.op in ("call_function", "call_method"):
            t = n.target
            args = n.args
            if t in (F.relu, torch.relu, "relu"):
                nodes.append(Node("relu", [src(args[0])], shape_of(n), n.name))
                index[n] = len(nodes) - 1
            elif t in (operator.add, torch.add, "add"):
                tensors = [a for a in args if isinstance(a, fx.Node)]
                consts = [a for a in args if _const(a)]
                if len(tensors) == 2:
                    nodes.append(Node("add", [src(tensors[0]), src(tensors[1])], shape_of(n), n.name))
                    index[n] = len(nodes) - 1
                elif len(tensors) == 1 and len(consts) == 1:
                    c = float(consts[0])
                    add_affine(n, tensors[0], lambda v: v, lambda c=c, s=shape_of(n): const(s, c))
                else:
                    raise ValueError(f"{_describe(n)}: unsupported operands for the dual network")
            elif t in (operator.sub, torch.sub, "sub") and len(args) == 2 and isinstance(args[0], fx.Node) \
                    and _const(args[1]):
                add_affine(n, args[0], lambda v: v, lambda c=-float(args[1]), s=shape_of(n): const(s, c))
            elif t in (operator.mul, torch.mul, "mul") and len(args) == 2 and _const(args[0]) \
                    and isinstance(args[1], fx.Node):
                add_affine(n, args[1], lambda v, c=float(args[0]): v * c)
            elif t in (operator.mul, torch.mul, "mul", operator.truediv, torch.div, "div") and \
                    isinstance(args[0], fx.Node) and len(args) == 2 and _const(args[1]):
                c = float(args[1]) if t in (operator.mul, torch.mul, "mul") else 1.0 / float(args[1])
                add_affine(n, args[0], lambda v, c=c: v * c)
            elif t in (torch.flatten, "flatten", "view", "reshape", torch.reshape):
                add_affine(n, args[0], lambda v, s=shape_of(n): v.reshape(v.shape[0], *s))
            elif t in (F.adaptive_avg_pool2d, F.avg_pool2d):
                extra, kw = args[1:], dict(n.kwargs)
                add_affine(n, args[0], lambda v, f=t, e=extra, k=kw: f(v, *e, **k))
            elif t in (F.dropout, "contiguous") or t == "size" or t == getattr:
                if t in (F.dropout, "contiguous"):
                    alias[n] = args[0]
            else:
                raise ValueError(f"operation {_describe(n)} is not supported by the dual network; supported: "
                                 "Linear, Conv2d, BatchNorm, ReLU, Flatten/reshape, average pooling, additions")
        elif n.op == "get_attr":
            raise ValueError(f"{n.target}: direct use of parameters in forward() is not supported by the dual network")
    if not nodes or nodes[0].kind != "input":
        raise ValueError("the traced model has no input")
    return Graph(nodes)
