"""Run attack members chunk by chunk, keep each snippet's cheapest success, verify it exactly, write the records.

Per chunk of ``batch_size`` snippets one :class:`~lobsim.attacks.workspace.Workspace` is built (book tensors and the
touch operator, shared by every member). Only the snippets the objective calls eligible (by default: classified
right) are attacked. Members run in order; with ``scope="survivors"`` a member only attacks the snippets no earlier
member fooled (AutoAttack's order), with ``scope="all"`` every member attacks every eligible snippet and the
cheapest success wins. A member that needs gradients is skipped for models with ``differentiable = False``.

Verification: each snippet's candidates (every member's minimised orders and the orders before minimisation) are
tried from the cheapest up; a candidate counts only if the exact integer engine (``propagate`` with the attack's
fill model) and the general model path (``logits_of``) say it fools the model. Records (capital, cost, relative
size) are computed from the exact engine on the returned orders.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lobsim.attacks.capital import book_tensors_centred, gradient_mode, logits_of
from lobsim.attacks.objectives import Objective
from lobsim.attacks.records import AttackRecord, sparse_orders
from lobsim.attacks.workspace import Found, Tracker, Workspace, differentiable
from lobsim.snippets import SnippetBatch


def member_seed(seed: int, chunk: int, name: str) -> np.random.Generator:
    """A member's generator depends on (seed, chunk, its name), not on the other members of an ensemble."""
    return np.random.default_rng([seed, chunk, zlib.crc32(name.encode())])


def verify(model: Any, batch: SnippetBatch, objective: Objective, y: torch.Tensor, orders: np.ndarray,
           fill_model: str, device: str) -> tuple[np.ndarray, torch.Tensor, Any]:
    """(fooled (B,), outputs, propagation) of integer ``orders`` on the exact engine and the general model path."""
    from lobsim.propagation import propagate

    prop = propagate(orders, batch, fill_model=fill_model)
    P, S, M, centre = book_tensors_centred(batch, device)
    with torch.no_grad(), gradient_mode(model):
        out = logits_of(model, P, S + torch.as_tensor(prop.delta, dtype=S.dtype, device=device), M, centre).detach()
    return objective.fooled(out, y.to(out.device)).cpu().numpy(), out, prop


def run_members(model: Any, batch: SnippetBatch, members: Sequence[Any], *, budget: float, objective: Objective,
                seed: int = 0, batch_size: int = 64, device: str = "cpu", fill_model: str = "touch",
                exact_check: bool = False, scope: str = "all", model_name: str = "", progress: bool = False,
                label: str = "attack") -> list[AttackRecord]:
    """One record per snippet of ``batch`` (see the module docstring)."""
    if np.any(batch.labels < 0):
        raise ValueError("attack: the batch needs labels (build it with market.batch(day, start, tau))")
    if scope not in ("all", "survivors"):
        raise ValueError(f"scope must be 'all' or 'survivors', got {scope!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    B = batch.batch_size
    records: list[AttackRecord | None] = [None] * B
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=B, desc=f"{label} {model_name}".rstrip(), unit="snippet")
    for c, lo in enumerate(range(0, B, batch_size)):
        rows = np.arange(lo, min(lo + batch_size, B))
        ws = Workspace(model, batch, rows, objective, device, fill_model, check_exact=exact_check)
        for k, rec in zip(rows, _chunk(ws, members, budget, objective, seed, c, fill_model, device, scope,
                                       model_name)):
            records[k] = rec
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return records  # type: ignore[return-value]


def _chunk(ws: Workspace, members: Sequence[Any], budget: float, objective: Objective, seed: int, c: int,
           fill_model: str, device: str, scope: str, model_name: str) -> list[AttackRecord]:
    elig = np.flatnonzero(ws.eligible)
    wsE = ws.select(elig) if 0 < elig.size < ws.n else ws  # no eligible row: members have nothing to do
    trackers: dict[str, tuple[Tracker, np.ndarray]] = {}  # member -> (tracker over its rows, rows in wsE)
    best = np.full(elig.size, np.inf)
    for m in members:
        if getattr(m, "uses_gradient", False) and not differentiable(ws.model):
            continue
        todo = np.arange(elig.size) if scope == "all" else np.flatnonzero(~(best <= budget))
        if todo.size == 0:
            continue
        sub = wsE if todo.size == elig.size else wsE.select(todo)
        tr = m.run(sub, member_seed(seed, c, m.name))
        trackers[m.name] = (tr, todo)
        best[todo] = np.minimum(best[todo], tr.capital)
    return _records(ws, wsE, elig, members, trackers, objective, fill_model, device, model_name)


def _records(ws: Workspace, wsE: Workspace, elig: np.ndarray, members: Sequence[Any],
             trackers: dict[str, tuple[Tracker, np.ndarray]], objective: Objective, fill_model: str, device: str,
             model_name: str) -> list[AttackRecord]:
    from lobsim.metrics import capital as capital_of
    from lobsim.metrics import cost, relative_size

    n, W, L = ws.n, ws.shape[1], ws.shape[3]
    N = ws.N
    grad_names = {m.name for m in members if getattr(m, "uses_gradient", False)}
    # candidates per eligible row, cheapest first: (capital, member, Found, tracker, tracker row)
    cands: list[list[tuple[float, str, Found, Tracker, int]]] = [[] for _ in range(elig.size)]
    member_cap: list[dict[str, float | None]] = [{} for _ in range(elig.size)]
    for name, (tr, todo) in trackers.items():
        for i, e in enumerate(todo):
            member_cap[e][name] = None if tr.best[i] is None else float(tr.best[i].capital)
            for f in (tr.best[i], tr.fallback[i]):
                if f is not None:
                    cands[e].append((f.capital, name, f, tr, i))
    for cl in cands:
        cl.sort(key=lambda x: x[0])
    chosen: list[tuple[float, str, Found, Tracker, int] | None] = [None] * elig.size
    pending = [e for e in range(elig.size) if cands[e]]
    sub_batch = ws.parent.select(wsE.rows)
    while pending:
        idx = np.asarray(pending, np.int64)
        orders = np.zeros((idx.size, N), np.int64)
        for k, e in enumerate(pending):
            f = cands[e][0][2]
            orders[k, f.flat] = f.shares
        fooled, _, _ = verify(ws.model, sub_batch.select(idx), objective, wsE.y[torch.as_tensor(idx)],
                              orders.reshape(idx.size, W, 2, L), fill_model, device)
        nxt = []
        for k, e in enumerate(pending):
            if fooled[k]:
                chosen[e] = cands[e][0]
            else:
                cands[e].pop(0)
                if cands[e]:
                    nxt.append(e)
        pending = nxt
    # the returned orders: the verified success, else a member's failure orders (thesis rule), else none
    final = np.zeros((n, N), np.int64)
    info: list[dict[str, Any]] = [{} for _ in range(n)]
    for e, r in enumerate(elig):
        ch = chosen[e]
        if ch is not None:
            cap, name, f, tr, i = ch
            final[r, f.flat] = f.shares
            info[r] = {"winner": name, "first": float(tr.first_capital[i]), "it": int(tr.iterations[i]),
                       "peak": float(tr.peak[i])}
        else:
            statuses = [tr.status[list(todo).index(e)] for tr, todo in trackers.values() if e in todo]
            fail = [tr.failed[list(todo).index(e)] for tr, todo in trackers.values() if e in todo]
            fail = [f for f in fail if f is not None]
            if fail:
                final[r, fail[0].flat] = fail[0].shares
            status = "budget" if "budget" in statuses else ("zero_gradient" if "zero_gradient" in statuses
                                                            else "max_iter")
            its = [int(tr.iterations[list(todo).index(e)]) for tr, todo in trackers.values() if e in todo]
            peaks = [float(tr.peak[list(todo).index(e)]) for tr, todo in trackers.values() if e in todo]
            info[r] = {"status": status, "it": max(its, default=0), "peak": max(peaks, default=0.0)}
        mc = member_cap[e]
        ran_grad = [v for k, v in mc.items() if k in grad_names]
        ran_free = [v for k, v in mc.items() if k not in grad_names]
        info[r]["members"] = mc
        info[r]["masking"] = bool(ran_grad and all(v is None for v in ran_grad)
                                  and any(v is not None for v in ran_free) and ch is not None
                                  and ch[1] not in grad_names)
    batch = ws.parent.select(ws.rows)
    orders = final.reshape(n, W, 2, L)
    y_all = ws.y
    fooled, out, prop = verify(ws.model, batch, objective, y_all, orders, fill_model, device)
    caps = capital_of(orders, batch.prices)
    costs = cost(orders, batch, prop)
    sizes = relative_size(prop.delta, batch.sizes, batch.mask)
    clean = ws.clean
    classify = clean.ndim == 2 and clean.shape[1] > 1
    before = clean.argmax(1).cpu().numpy() if classify else np.zeros(n, np.int64)
    after = out.argmax(1).cpu().numpy() if classify else np.zeros(n, np.int64)
    recs = []
    for r in range(n):
        lab = int(batch.labels[r])
        base = dict(index=int(ws.rows[r]), day=int(batch.day[r]), start=int(batch.start[r]), label=lab,
                    pred_before=int(before[r]), model=model_name, objective=objective.describe())
        if not ws.eligible[r]:
            st = "misclassified_before" if (not classify or before[r] != lab) else "not_eligible"
            recs.append(AttackRecord(**base, pred_after=int(before[r]), attacked=False, success=False, status=st))
            continue
        d = info[r]
        ok = bool(fooled[r]) and "winner" in d
        rec = AttackRecord(**base, pred_after=int(after[r]), attacked=True, success=ok,
                           status="success" if ok else d.get("status", "max_iter"))
        rec.iterations, rec.capital, rec.peak_capital = d["it"], float(caps[r]), d["peak"]
        rec.cost, rec.relative_size = float(costs[r]), float(sizes[r])
        rec.orders = sparse_orders(orders[r])
        rec.first_capital = d.get("first", 0.0) if ok else 0.0
        rec.winner = d.get("winner", "") if ok else ""
        rec.member_capital, rec.masking = d["members"], d["masking"] and ok
        recs.append(rec)
    return recs
