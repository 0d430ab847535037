"""Where the work runs: in this process, one item after another (``local``), or as Ray tasks (``ray``).

Both take plain-dict work items and a module-level task function that never raises for a failing item (it
returns ``{"ok": False, "error": ...}``), and call ``on_result(item, result)`` in the driver as results arrive;
the driver writes every result to disk, so the two runners produce the same files.

Ray: local by default (``ray.init`` on this machine with ``workers`` CPUs), or ``address`` to join a running
cluster (``ray start --head`` / ``ray.init(address=...)``); each task asks for ``threads`` CPUs and ``gpus``
GPUs. At most a few tasks per CPU slot are in flight, so a sweep of millions of cells does not flood the
scheduler. Workers must import advsim and see the data and the sweep folder at the same paths.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

Task = Callable[[dict[str, Any]], dict[str, Any]]
OnResult = Callable[[dict[str, Any], dict[str, Any]], None]


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


class LocalRunner:
    """Runs each item in this process, in order (no Ray needed)."""

    name = "local"

    def __init__(self) -> None:
        self.workers = 1

    def run(self, task: Task, items: Sequence[dict[str, Any]], on_result: OnResult, gpus: float = 0.0) -> None:
        for item in items:
            on_result(item, task(item))

    def has_gpu(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def close(self) -> None:
        pass


class RayRunner:
    """Runs items as Ray tasks on a local Ray instance (``workers`` CPUs) or on the cluster at ``address``."""

    name = "ray"

    def __init__(self, workers: int = 0, address: str | None = None, threads: int = 1) -> None:
        if not ray_available():
            raise ValueError("the Ray runner needs Ray: pip install -e '.[ray]' (or run with --runner local)")
        import ray

        from data_loaders.runtime import available_cores

        self.threads = max(int(threads), 1)
        self.started = False
        if not ray.is_initialized():
            env = {k: str(self.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
            kw: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
            if address:
                ray.init(address=address, runtime_env={"env_vars": env}, **kw)
            else:
                # Local workers inherit the environment of the Ray processes started here (a runtime_env would
                # cost seconds per worker on a small machine).
                cpus = (workers or max(available_cores() // self.threads, 1)) * self.threads
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                try:
                    ray.init(num_cpus=cpus, include_dashboard=False, **kw)
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
            self.started = True
        self.workers = max(int(ray.cluster_resources().get("CPU", 1)) // self.threads, 1)

    def has_gpu(self) -> bool:
        import ray

        return ray.cluster_resources().get("GPU", 0) > 0

    def run(self, task: Task, items: Sequence[dict[str, Any]], on_result: OnResult, gpus: float = 0.0) -> None:
        import ray

        remote = ray.remote(task).options(num_cpus=self.threads, num_gpus=gpus)
        todo = list(items)
        limit = max(4 * self.workers, 8)
        pending: dict[Any, dict[str, Any]] = {}
        # On Ctrl-C the exception leaves this loop; close() (ray.shutdown) then stops the workers of a Ray
        # started here. Tasks in flight on a joined cluster finish there and are run again on the next call.
        while todo or pending:
            while todo and len(pending) < limit:
                item = todo.pop(0)
                pending[remote.remote(item)] = item
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a crashed worker (OOM, segfault) fails that item only
                    msg = " ".join(str(exc).split())[:500] or type(exc).__name__
                    result = {"ok": False, "error": f"Ray task failed: {type(exc).__name__}: {msg}",
                              "traceback": str(exc)}
                on_result(item, result)

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def make_runner(kind: str = "auto", workers: int = 0, address: str | None = None, threads: int = 1
                ) -> LocalRunner | RayRunner:
    """``auto``: Ray when it is installed (or when ``address`` is given), else local; ``local``; ``ray``."""
    if kind not in ("auto", "local", "ray"):
        raise ValueError(f"--runner must be auto, local or ray, got {kind!r}")
    if kind == "local":
        if address:
            raise ValueError("--address needs the Ray runner (--runner ray or auto)")
        return LocalRunner()
    if kind == "ray" or address or ray_available():
        return RayRunner(workers=workers, address=address, threads=threads)
    return LocalRunner()
