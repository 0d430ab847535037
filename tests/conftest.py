"""Shared fixtures: where ../shared/data lives, and skips when it or a GPU is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ADVSIM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def shared_path(*parts: str) -> Path:
    """A path under the shared data folder; skips the test when it does not exist."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found: {p}")
    return p


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread for the whole suite: the tests' tiny models run fastest on one thread, and on a busy
    2-core machine two threads can be 10-100x slower. Module fixtures that train a model request it by name."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cuda_device() -> str:
    """``cuda`` when a GPU is present, else skip."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return "cuda"
