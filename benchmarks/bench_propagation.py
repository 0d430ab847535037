"""Benchmark of the propagation engine, side by side in one run.

1. Exact integer engine (Numba) vs the plain-Python reference, snippets/s (touch and queue fill models).
2. The differentiable touch operator: the one-off precomputation, then forward+backward per attack step, on the
   CPU (Numba kernels; and the pure-torch backend on a smaller batch for comparison) and on CUDA when present.
3. The attack's SWA path forward+backward: operator + swa_torch against the fused propagation -> SWA kernels.

Snippets are synthetic but shaped like the thesis' data: W steps of 10 ms, L levels a side, a mid price that moves
rarely, executions at a realistic rate (the LOBSTER 2012-06-21 samples have 0.015 executions per 10 ms step for
AAPL and 0.005 for GOOG; the default 0.02 is a little busier), mostly at the best price.

    python benchmarks/bench_propagation.py                       # full run (dev CPU: a few minutes)
    python benchmarks/bench_propagation.py --snippets 256 --quick
    python benchmarks/bench_propagation.py --device cuda --skip-exact
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from lobsim.grid import EMPTY_ASK, EMPTY_BID, level_mask
from lobsim.propagation import TouchPropagator, propagate, propagate_reference
from lobsim.snippets import SnippetBatch

TICK = 100  # $0.01 in LOBSTER units


def synthetic_batch(B: int, W: int, L: int, exec_rate: float, seed: int = 0) -> SnippetBatch:
    """B snippets: mid random walk (a 1-tick move in 1% of steps), 1-2 tick half-spread, Poisson executions."""
    rng = np.random.default_rng(seed)
    move = rng.choice([-1, 0, 1], size=(B, W), p=[0.005, 0.99, 0.005]) * TICK
    mid = 580_0000 + np.cumsum(move, axis=1)
    half = rng.choice([1, 2], size=(B, W), p=[0.8, 0.2]) * TICK
    depth = np.arange(L) * TICK
    prices = np.empty((B, W, 2, L), np.int64)
    prices[:, :, 0] = (mid - half)[..., None] - depth
    prices[:, :, 1] = (mid + half)[..., None] + depth
    sizes = rng.integers(50, 500, (B, W, 2, L)).astype(np.int64)
    thin = rng.random((B, W, 2)) < 0.01  # now and then the deepest level is empty
    prices[:, :, 0, -1] = np.where(thin[:, :, 0], EMPTY_BID, prices[:, :, 0, -1])
    prices[:, :, 1, -1] = np.where(thin[:, :, 1], EMPTY_ASK, prices[:, :, 1, -1])
    sizes[~level_mask(prices)] = 0
    counts = rng.poisson(exec_rate, (B, W))
    ptr = np.zeros((B, W + 1), np.int64)
    flat_counts = counts.reshape(-1)
    ends = np.cumsum(flat_counts)
    ptr[:, 1:] = ends.reshape(B, W)
    ptr[1:, 0] = ptr[:-1, -1]
    E = int(ends[-1]) if len(ends) else 0
    owner = np.repeat(np.arange(B * W), flat_counts)
    side = rng.integers(0, 2, E).astype(np.int8)
    level = np.minimum(rng.geometric(0.7, E) - 1, L - 1)
    best = np.where(side == 0, prices[:, :, 0, 0].reshape(-1)[owner], prices[:, :, 1, 0].reshape(-1)[owner])
    best = np.where(np.abs(best) == EMPTY_ASK, 580_0000, best)
    price = np.where(side == 0, best - level * TICK, best + level * TICK)
    return SnippetBatch(
        day=np.zeros(B, np.int64),
        start=np.zeros(B, np.int64),
        prices=prices,
        sizes=sizes,
        exec_ptr=ptr,
        exec_side=side,
        exec_price=price.astype(np.int64),
        exec_volume=rng.integers(1, 300, E).astype(np.int64),
        exec_hidden=rng.random(E) < 0.3,
        labels=np.full(B, -1, np.int64),
    )


def attack_orders(batch: SnippetBatch, density: float = 0.01, seed: int = 1) -> np.ndarray:
    """Sparse integer orders: about ``density`` of the real entries get 1..5 shares."""
    rng = np.random.default_rng(seed)
    o = rng.integers(1, 6, batch.prices.shape) * (rng.random(batch.prices.shape) < density)
    return (o * level_mask(batch.prices)).astype(np.int64)


def timed(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` runs, seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_exact(args: argparse.Namespace) -> list[str]:
    rows = []
    batch = synthetic_batch(args.exact_snippets, args.window, args.levels, args.exec_rate)
    orders = attack_orders(batch)
    ref_n = args.reference_snippets
    sub, sub_orders = batch.select(np.arange(ref_n)), orders[:ref_n]
    for fm in ("touch", "queue"):
        propagate(orders[:1], batch.select([0]), fm)  # JIT / cache load
        t_fast = timed(lambda fm=fm: propagate(orders, batch, fm), args.repeat)
        t0 = time.perf_counter()
        ref = propagate_reference(sub_orders, sub, fm)
        t_ref = time.perf_counter() - t0
        fast = propagate(sub_orders, sub, fm)
        assert np.array_equal(fast.delta, ref.delta), "engine and reference disagree"
        fast_rate, ref_rate = batch.batch_size / t_fast, ref_n / t_ref
        rows.append(
            f"| exact engine, {fm} | {batch.batch_size} x {args.window} x 2 x {args.levels} | "
            f"{fast_rate:,.0f} snippets/s | reference {ref_rate:.2f} snippets/s ({ref_n} snippets) | "
            f"**{fast_rate / ref_rate:,.0f}x** |"
        )
        print(rows[-1], flush=True)
    return rows


def bench_operator(args: argparse.Namespace, device: str, backend: str, B: int) -> list[str]:
    batch = synthetic_batch(B, args.window, args.levels, args.exec_rate, seed=2)
    a_int = attack_orders(batch, density=0.01)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    TouchPropagator(batch.select([0]), device=device, backend=backend)  # JIT / cache load
    t0 = time.perf_counter()
    op = TouchPropagator(batch, device=device, backend=backend)
    sync()
    t_pre = time.perf_counter() - t0
    a = torch.as_tensor(a_int, dtype=torch.float32, device=device).requires_grad_(True)
    g = torch.randn(op.shape, device=device)

    def step() -> None:
        a.grad = None
        (op(a) * g).sum().backward()
        sync()

    step()
    t_step = timed(step, args.repeat)
    out = op(a.detach()).cpu().numpy()
    assert np.array_equal(out[:2], propagate(a_int[:2], batch.select([0, 1])).delta), "operator != exact engine"
    row = (
        f"| operator fwd+bwd, {backend} on {device} | {B} x {args.window} x 2 x {args.levels} | "
        f"**{t_step * 1e3:,.1f} ms** per step | precomputation {t_pre:.2f} s (once per batch) | |"
    )
    print(row, flush=True)
    return [row]


def bench_fused(args: argparse.Namespace, B: int) -> list[str]:
    """The attack's SWA path, forward+backward, side by side (alternated): operator + swa_torch vs the fused
    propagation -> SWA kernels (lobsim.propagation.fused), which never build the (B, W, 2, L) propagated tensor."""
    from lobsim.attacks.capital import book_tensors
    from lobsim.features import swa_torch
    from lobsim.propagation import FusedTouchSwa

    batch = synthetic_batch(B, args.window, args.levels, args.exec_rate, seed=3)
    P, S, M = book_tensors(batch)
    op = TouchPropagator(batch)
    fused = FusedTouchSwa(op, P, S)
    a = torch.as_tensor(attack_orders(batch, density=0.01), dtype=torch.float32)
    w = torch.randn(B, args.window)

    def general() -> None:
        x = a.clone().requires_grad_(True)
        torch.autograd.grad((swa_torch(P, S + op(x), M) * w).sum(), x)

    def fast() -> None:
        x = a.clone().requires_grad_(True)
        torch.autograd.grad((fused(x) * w).sum(), x)

    general(), fast()
    tg, tf = [], []
    for _ in range(args.repeat):
        tg.append(timed(general, 1))
        tf.append(timed(fast, 1))
    x1, x2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    g1 = torch.autograd.grad((swa_torch(P, S + op(x1), M) * w).sum(), x1)[0]
    g2 = torch.autograd.grad((fused(x2) * w).sum(), x2)[0]
    assert torch.allclose(g1, g2, rtol=1e-3, atol=1e-9), "fused gradient != general gradient"
    row = (f"| SWA of the propagated book, fwd+bwd | {B} x {args.window} x 2 x {args.levels} | fused "
           f"**{min(tf) * 1e3:,.0f} ms** | operator + swa_torch {min(tg) * 1e3:,.0f} ms | "
           f"**{min(tg) / min(tf):.1f}x** |")
    print(row, flush=True)
    return [row]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=int, default=6000, help="steps per snippet (thesis: 6000 x 10 ms)")
    p.add_argument("--levels", type=int, default=10, help="levels per side (thesis: 10)")
    p.add_argument("--exec-rate", type=float, default=0.02, help="mean executions per step")
    p.add_argument("--exact-snippets", type=int, default=256, help="snippets for the exact engine")
    p.add_argument("--reference-snippets", type=int, default=4, help="snippets for the plain-Python reference")
    p.add_argument("--snippets", type=int, default=1024, help="snippets for the differentiable operator")
    p.add_argument("--torch-cpu-snippets", type=int, default=64, help="snippets for the pure-torch CPU backend")
    p.add_argument("--fused-snippets", type=int, default=256, help="snippets for fused vs general SWA path")
    p.add_argument("--device", default="auto", help="auto (CPU, plus CUDA when present), cpu or cuda")
    p.add_argument("--repeat", type=int, default=3, help="timed repeats (best is reported)")
    p.add_argument("--skip-exact", action="store_true", help="only the differentiable operator")
    p.add_argument("--skip-operator", action="store_true", help="only the exact engine")
    p.add_argument("--quick", action="store_true", help="smaller everything (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.window, args.exact_snippets, args.reference_snippets = 1000, 32, 2
        args.snippets, args.torch_cpu_snippets, args.repeat = min(args.snippets, 64), 16, 2
        args.fused_snippets = 16
    import numba

    print(f"# machine: {platform.processor() or platform.machine()}, numba threads {numba.get_num_threads()}, "
          f"torch {torch.__version__}, cuda {torch.cuda.is_available()}")  # fmt: skip
    print("| what | batch | fast | reference / setup | ratio |")
    print("| --- | --- | --- | --- | --- |")
    cpu = args.device in ("auto", "cpu")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if not args.skip_exact:
        bench_exact(args)
    if args.skip_operator:
        return
    if cpu:
        bench_operator(args, "cpu", "numba", args.snippets)
        bench_operator(args, "cpu", "torch", args.torch_cpu_snippets)
        bench_fused(args, args.fused_snippets)
    if cuda:
        bench_operator(args, "cuda", "torch", args.snippets)
    elif args.device == "auto":
        print(f"| operator fwd+bwd, torch on cuda | {args.snippets} x {args.window} x 2 x {args.levels} | "
              "*pending* (no GPU) | | |")  # fmt: skip


if __name__ == "__main__":
    main()
