"""Benchmark: one iteration of the capital attack, the code path before issue 10 against today's, side by side.

The OLD side is a faithful copy (below) of the attack iteration as it was at commit 273f713
(``lobsim/attacks/capital.py``: gradient through ``TouchPropagator`` + ``swa_torch``, raw-gradient step, r = 0.95
rounding, int64 orders, ``metrics.capital``, exact-engine success check every iteration), with copies of the
operator and exact-engine wrappers it called (the Numba kernels they call are the project's, unchanged, except the
operator's forward kernel, copied here as it was).

The NEW side is the library's default gradient member (budget rule) on a ``Workspace``: one fused
propagation -> SWA forward+backward at the rounded orders (which is also the success check), the budget update, the
projected step and the rounding, in place on reused buffers.

Both sides attack the same snippets (synthetic, shaped like the thesis' data: W x 2 x L with realistic executions,
see bench_propagation.py) with the same small-preset MLP. Timed: the first iteration of a chunk (every snippet
active; the setup of the chunk, i.e. tensors and operator, is not timed), ``--repeat`` times per side, alternated
(old, new, old, new ...) in one process, a fresh state per side and round so that only one side's buffers are
alive at a time. Kernels are compiled (or loaded from Numba's cache) before timing.

Memory: each side runs in a fresh subprocess on one chunk of ``--chunk`` snippets (setup + first iteration); the
peak resident memory above the process's size before the chunk (batch and model already built), per snippet.

    python benchmarks/bench_attack.py                         # 1,024 x 6,000 x 2 x 10 (needs ~20 GB for OLD)
    python benchmarks/bench_attack.py --snippets 256 --repeat 3
    python benchmarks/bench_attack.py --quick                 # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_propagation import synthetic_batch  # noqa: E402

from lobsim.attacks.capital import GradientMember, gradient_mode, logits_of  # noqa: E402
from lobsim.attacks.objectives import Untargeted  # noqa: E402
from lobsim.attacks.workspace import Tracker, Workspace  # noqa: E402
from lobsim.features import Normalizer, swa_torch  # noqa: E402
from lobsim.grid import level_mask  # noqa: E402
from lobsim.models import ModelConfig, build_model  # noqa: E402
from lobsim.propagation.exact import (  # noqa: E402
    Fills,
    Propagation,
    _run_kernel,
    check_executions,
    check_orders,
    numba_threads_for,
)
from lobsim.propagation.touch import _touch_backward, _touch_keys  # noqa: E402
from lobsim.snippets import SnippetBatch  # noqa: E402

PRICE_SCALE = 10_000.0


class Model:
    """A small-preset MLP valuation model (window -> 256 -> 256 -> 3) with its normaliser, like TrainedModel."""

    def __init__(self, window: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = build_model(ModelConfig(kind="mlp", preset="small", window=window)).eval()
        self.normalizer = Normalizer(scale=0.01)

    def logits_from_swa(self, swa: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer.torch(swa))

    def logits_from_book(self, prices: torch.Tensor, sizes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.logits_from_swa(swa_torch(prices, sizes, mask))


# ---------------------------------------------------------------------------------------------------------------
# OLD: faithful copies of the code path at 273f713
# ---------------------------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _old_touch_forward(x, key, exec_ptr, reset_key, n_keys, out):
    B, N = x.shape
    M = N // (exec_ptr.shape[1] - 1)
    for b in prange(B):
        acc = np.zeros(n_keys[b], np.float64)
        for t in range(exec_ptr.shape[1] - 1):
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if reset_key[e] >= 0:
                    acc[reset_key[e]] = 0.0
            for q in range(t * M, (t + 1) * M):
                if key[b, q] >= 0:
                    acc[key[b, q]] += x[b, q]
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                out[b, q] = acc[k] if k >= 0 else 0.0


class _OldNumbaTouch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        xf = x.detach().reshape(x.shape[0], -1).contiguous()
        out = torch.empty_like(xf)
        with numba_threads_for(xf.numel()):
            _old_touch_forward(xf.numpy(), op._key, op._exec_ptr, op._reset_key, op._n_keys, out.numpy())
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, g):
        op = ctx.op
        gf = g.detach().reshape(g.shape[0], -1).contiguous()
        out = torch.empty_like(gf)
        with numba_threads_for(gf.numel()):
            _touch_backward(gf.numpy(), op._key, op._exec_ptr, op._reset_key, op._n_keys, out.numpy())
        return out.view(g.shape), None


class OldTouchPropagator:
    """TouchPropagator as it was (numba backend): it kept the batch, a bool mask and a float mask."""

    def __init__(self, batch: SnippetBatch) -> None:
        check_executions(batch)
        self.batch = batch
        B, W, _, L = batch.prices.shape
        N = W * 2 * L
        dup = np.full((B, 3), -1, np.int64)
        args = (np.ascontiguousarray(batch.prices, dtype=np.int64), np.ascontiguousarray(batch.exec_ptr, np.int64),
                np.ascontiguousarray(batch.exec_side, np.int8), np.ascontiguousarray(batch.exec_price, np.int64),
                np.ascontiguousarray(batch.exec_hidden, np.bool_), True)
        self._key = np.empty((B, N), np.int32)
        self._reset_key = np.empty(args[2].shape[0], np.int32)
        self._n_keys = np.empty(B, np.int64)
        self._exec_ptr = args[1]
        with numba_threads_for(B * N):
            _touch_keys(*args, self._key, self._reset_key, self._n_keys, dup)
        self.mask = torch.as_tensor(level_mask(batch.prices))
        self._mask_flat = self.mask.reshape(B, N).to(torch.float32)

    def __call__(self, a):
        return _OldNumbaTouch.apply(a, self)

    def select(self, index):
        index = np.asarray(index).astype(np.int64)
        new = object.__new__(OldTouchPropagator)
        new.__dict__.update(self.__dict__)
        new.batch = self.batch.select(index)
        ptr = self._exec_ptr
        new._key = np.ascontiguousarray(self._key[index])
        new._n_keys = np.ascontiguousarray(self._n_keys[index])
        new._exec_ptr = np.ascontiguousarray(new.batch.exec_ptr, dtype=np.int64)
        parts = [self._reset_key[ptr[b, 0]: ptr[b, -1]] for b in index]
        new._reset_key = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
        ti = torch.as_tensor(index)
        new.mask = self.mask[ti]
        new._mask_flat = self._mask_flat[ti]
        return new


def old_propagate(orders, batch, fill_model="touch"):
    orders = check_orders(orders, batch)
    check_executions(batch)
    prices = np.ascontiguousarray(batch.prices, dtype=np.int64)
    exec_ptr = np.ascontiguousarray(batch.exec_ptr, dtype=np.int64)
    side = np.ascontiguousarray(batch.exec_side, dtype=np.int8)
    price = np.ascontiguousarray(batch.exec_price, dtype=np.int64)
    hidden = np.ascontiguousarray(batch.exec_hidden, dtype=np.bool_)
    E = side.shape[0]
    delta = np.empty(prices.shape, np.int64)
    fill_snippet, fill_step, fill_shares = np.zeros(E, np.int64), np.zeros(E, np.int64), np.zeros(E, np.int64)
    with numba_threads_for(orders.size):
        _run_kernel(fill_model, orders, prices, exec_ptr, side, price, hidden, True, batch, delta,
                    (fill_snippet, fill_step, fill_shares))
    idx = np.flatnonzero(fill_shares)
    idx = idx[np.lexsort((idx, fill_snippet[idx]))]
    fills = Fills(snippet=fill_snippet[idx], step=fill_step[idx], side=side[idx].copy(), price=price[idx].copy(),
                  shares=fill_shares[idx])
    return Propagation(delta=delta, fills=fills, fill_model=fill_model)


def old_capital(orders, prices):
    prices = np.asarray(prices)
    mask = level_mask(prices)
    orders = np.asarray(orders)
    if not np.issubdtype(orders.dtype, np.integer):
        raise ValueError(f"orders must be integer shares, got dtype {orders.dtype}")
    if (orders < 0).any():
        raise ValueError("orders must be non-negative")
    bad = np.argwhere((orders != 0) & ~mask)
    if len(bad):
        raise ValueError("order at an empty (masked) level")
    units = (orders.astype(np.int64) * np.where(mask, prices, 0)).reshape(orders.shape[0], -1).sum(1)
    return units / PRICE_SCALE


def old_book_tensors(batch):
    mask = level_mask(batch.prices)
    dollars = np.where(mask, batch.prices, 0).astype(np.float64) / PRICE_SCALE
    n = mask.sum(axis=(1, 2, 3))
    centre = dollars.sum(axis=(1, 2, 3)) / n
    centred = np.where(mask, dollars - centre[:, None, None, None], 0.0)
    return (torch.as_tensor(centred, dtype=torch.float32), torch.as_tensor(np.where(mask, batch.sizes, 0),
            dtype=torch.float32), torch.as_tensor(mask))


class OldState:
    """Everything ``CapitalAttack._attack_chunk`` built before its loop (273f713), for one chunk ``sub``."""

    def __init__(self, trained, sub: SnippetBatch, budget=100_000.0, step_shares=0.1, r=0.95, max_iter=300):
        self.trained, self.budget, self.step_shares, self.r, self.max_iter = trained, budget, step_shares, r, max_iter
        P, S, M = old_book_tensors(sub)
        y_all = torch.as_tensor(sub.labels)
        with torch.no_grad(), gradient_mode(trained):
            pred0 = logits_of(trained, P, S, M).argmax(dim=1).cpu().numpy()
        act = np.nonzero(pred0 == sub.labels)[0]
        W, L = sub.window, sub.levels
        self.op = OldTouchPropagator(sub).select(act)
        self.bsub = sub.select(act)
        self.Pa, self.Sa, self.Ma, self.ya = P[act], S[act], M[act], y_all[act]
        self.maskf = self.Ma.to(self.Pa.dtype)
        self.a = torch.zeros(self.Pa.shape, dtype=self.Pa.dtype)
        self.alpha0 = None
        self.best = np.zeros((act.size, W, 2, L), np.int64)
        self.peak = np.zeros(act.size)
        self.ids = act.copy()
        self.finished = []


def old_iteration(st: OldState, it: int, rng: np.random.Generator) -> None:
    """The loop body of ``_attack_chunk`` at 273f713 (CPU: exact-engine check), verbatim but for ``st.``."""
    trained = st.trained
    u = float(rng.uniform())
    st.a.requires_grad_(True)
    with gradient_mode(trained):
        logits = logits_of(trained, st.Pa, st.Sa + st.op(st.a), st.Ma)
        loss = F.cross_entropy(logits, st.ya, reduction="sum")
        (g,) = torch.autograd.grad(loss, st.a)
    g = g * st.maskf
    st.a = st.a.detach()
    if st.alpha0 is None:
        gmax = g.abs().amax(dim=(1, 2, 3))
        st.alpha0 = torch.where(gmax > 0, 2.0 * st.step_shares / gmax.clamp_min(1e-30), torch.zeros_like(gmax))
        zero = (gmax <= 0).cpu().numpy()
    else:
        zero = np.zeros(st.ids.size, bool)
    st.a = torch.clamp(st.a + u * st.alpha0[:, None, None, None] * g, min=0.0) * st.maskf
    a_hat = torch.floor(st.a + st.r) * st.maskf
    a_int = a_hat.detach().cpu().numpy().astype(np.int64)
    cap = old_capital(a_int, st.bsub.prices)
    over = cap > st.budget
    st.peak = np.maximum(st.peak, cap)
    delta = old_propagate(a_int, st.bsub).delta
    with torch.no_grad(), gradient_mode(trained):
        pred = logits_of(trained, st.Pa, st.Sa + torch.as_tensor(delta, dtype=st.Sa.dtype), st.Ma).argmax(
            dim=1).cpu().numpy()
    within = ~over
    st.best[within] = a_int[within]
    success = within & (pred != st.bsub.labels)
    code = np.where(zero, 3, np.where(over, 1, np.where(success, 0, 2 if it == st.max_iter else -1)))
    done = code >= 0
    for i in np.nonzero(done)[0]:
        st.finished.append((int(st.ids[i]), it, st.best[i].copy(), float(st.peak[i]), int(code[i])))
    keep = np.nonzero(~done)[0]
    if keep.size < st.ids.size:
        st.op = st.op.select(keep)
        st.bsub = st.bsub.select(keep)
        kt = torch.as_tensor(keep)
        st.Pa, st.Sa, st.Ma, st.ya, st.maskf, st.a, st.alpha0 = (
            t[kt] for t in (st.Pa, st.Sa, st.Ma, st.ya, st.maskf, st.a, st.alpha0))
        st.best, st.peak, st.ids = st.best[keep], st.peak[keep], st.ids[keep]


# ---------------------------------------------------------------------------------------------------------------
# NEW: the library's gradient member (budget rule)
# ---------------------------------------------------------------------------------------------------------------


class NewState:
    def __init__(self, trained, batch: SnippetBatch, budget=100_000.0, max_iter=100):
        self.ws = Workspace(trained, batch, np.arange(batch.batch_size), Untargeted())
        self.member = GradientMember(budget=budget, max_iter=max_iter)
        self.st = self.member.budget_start(self.ws, np.random.default_rng(0), Tracker(self.ws.n), 0)


def new_iteration(ns: NewState, it: int) -> None:
    ns.member.budget_iteration(ns.st, it)


# ---------------------------------------------------------------------------------------------------------------


def make_case(B: int, W: int, L: int, seed: int = 0) -> tuple[Model, SnippetBatch]:
    batch = synthetic_batch(B, W, L, exec_rate=0.02, seed=seed)
    model = Model(W)
    P, S, M = old_book_tensors(batch)
    with torch.no_grad():
        batch.labels = model.logits_from_book(P, S, M).argmax(1).numpy()  # every snippet is attacked
    return model, batch


def status_mb(field: str) -> float:
    """VmRSS / VmHWM (peak RSS) of this process from /proc/self/status, MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_probe(side: str, args: argparse.Namespace) -> None:
    """In a fresh process: peak RSS of one chunk (setup + 2 iterations) above the size before it, per snippet."""
    model, batch = make_case(args.chunk, args.window, args.levels)
    warm = batch.select([0])  # compile / load the kernels outside the measurement
    (old_iteration(OldState(model, warm), 1, np.random.default_rng(0)) if side == "old"
     else new_iteration(NewState(model, warm), 0))
    import gc

    gc.collect()
    if not reset_peak():
        raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); memory probe unavailable")
    base = status_mb("VmRSS")
    if side == "old":
        st = OldState(model, batch)
        old_iteration(st, 1, np.random.default_rng(0))
    else:
        ns = NewState(model, batch)
        new_iteration(ns, 0)
    peak = status_mb("VmHWM")
    print(json.dumps({"side": side, "chunk": args.chunk, "base_mb": round(base, 1), "peak_mb": round(peak, 1),
                      "per_snippet_mb": (peak - base) / args.chunk}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snippets", type=int, default=1024, help="snippets in the timed iteration (one chunk)")
    p.add_argument("--window", type=int, default=6000)
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--repeat", type=int, default=2, help="timed iterations per side (alternated)")
    p.add_argument("--chunk", type=int, default=64, help="chunk size of the memory measurement (attack default)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-time", action="store_true")
    p.add_argument("--quick", action="store_true", help="64 x 1000 x 2 x 10, chunk 16 (smoke run)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (Numba: NUMBA_NUM_THREADS)")
    p.add_argument("--memory-probe", choices=["old", "new"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.snippets, args.window, args.chunk = 64, 1000, 16
    if args.memory_probe:
        memory_probe(args.memory_probe, args)
        return
    import numba

    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}, numba threads {numba.get_num_threads()}, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")
    if not args.skip_time:
        model, batch = make_case(args.snippets, args.window, args.levels)
        warm = batch.select([0, 1])
        old_iteration(OldState(model, warm), 1, np.random.default_rng(0))  # compile / load kernels
        new_iteration(NewState(model, warm), 0)
        t_old, t_new = [], []
        for rep in range(args.repeat):
            st = OldState(model, batch)  # setup (operator, tensors) is not timed
            t = time.perf_counter()
            old_iteration(st, 1, np.random.default_rng(rep))  # the first iteration: every snippet is active
            t_old.append(time.perf_counter() - t)
            del st
            ns = NewState(model, batch)
            t = time.perf_counter()
            new_iteration(ns, 0)
            t_new.append(time.perf_counter() - t)
            del ns
            print(f"round {rep}: old {t_old[-1]:.2f} s, new {t_new[-1]:.2f} s (load {os.getloadavg()[0]:.1f})",
                  flush=True)
        mo, mn = float(np.median(t_old)), float(np.median(t_new))
        print(f"| one attack iteration, {args.snippets} x {args.window} x 2 x {args.levels} | old {mo:.2f} s "
              f"(min {min(t_old):.2f}) | new {mn:.2f} s (min {min(t_new):.2f}) | **{mo / mn:.1f}x** |")
    if not args.skip_memory:
        res = {}
        for side in ("old", "new"):
            cmd = [sys.executable, __file__, "--memory-probe", side, "--chunk", str(args.chunk), "--window",
                   str(args.window), "--levels", str(args.levels), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            res[side] = json.loads(out)
            print(f"memory probe {side}: {res[side]}", flush=True)
        o, n = res["old"]["per_snippet_mb"], res["new"]["per_snippet_mb"]
        print(f"| peak memory of one chunk of {args.chunk} x {args.window} x 2 x {args.levels}, per snippet | old "
              f"{o:.1f} MB | new {n:.1f} MB | **{o / n:.1f}x** |")


if __name__ == "__main__":
    main()
