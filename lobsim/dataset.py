"""A Market: resampled days, their SWA series, a leak-free train/test split and the snippet sampler.

A snippet starting at grid step ``s`` uses the window ``[s, s + W)`` as input and the SWA at ``s + W - 1 + H``
for its label, so it occupies ``[s, s + W + H)``. Valid starts of a region ``[a, b)`` are ``a .. b - W - H``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lobsim.features import LabelConfig, fit_threshold, make_labels, swa, swa_change
from lobsim.grid import GridBook
from lobsim.snippets import SnippetBatch, cut_snippets

FIRST_HOUR = (34200.0, 37800.0)  # 09:30-10:30, seconds after midnight


@dataclass
class FeatureConfig:
    """Grid step ``dt`` (s), input window and label horizon (s), and the label definition."""

    dt: float = 0.01
    window_s: float = 60.0
    horizon_s: float = 10.0
    labels: LabelConfig = field(default_factory=LabelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.labels, dict):
            self.labels = LabelConfig(**self.labels)
        if self.dt <= 0 or self.window < 1 or self.horizon < 1:
            raise ValueError(f"FeatureConfig: need dt > 0, window >= 1 and horizon >= 1 step, got {self}")

    @property
    def window(self) -> int:
        """Input window in grid steps (6,000 at the thesis' defaults)."""
        return int(round(self.window_s / self.dt))

    @property
    def horizon(self) -> int:
        """Label horizon in grid steps (1,000 at the thesis' defaults)."""
        return int(round(self.horizon_s / self.dt))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        return cls(**d)


@dataclass(frozen=True)
class Region:
    """Valid snippet starts ``lo .. hi - 1`` of one day."""

    day: int
    lo: int
    hi: int

    @property
    def count(self) -> int:
        return max(self.hi - self.lo, 0)


class Market:
    """One or more resampled days with their SWA series and a train/test split.

    ``split``: ``"auto"`` (by day when there are several days, else by time), ``"day"`` (first
    ``train_fraction`` of the days train, at least one test day) or ``"time"`` (inside every day the first
    ``train_fraction`` of the steps train, then ``gap`` unused steps (default and minimum window + horizon),
    then test).
    """

    def __init__(
        self,
        books: Sequence[GridBook],
        features: FeatureConfig | None = None,
        split: str = "auto",
        train_fraction: float = 0.8,
        gap: int | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        if not books:
            raise ValueError("Market: no days given")
        self.books = list(books)
        self.features = features or FeatureConfig()
        self.source = source  # how to rebuild this market from files (from_paths), or None
        W, H = self.window, self.horizon
        for i, bk in enumerate(self.books):
            if abs(bk.dt - self.features.dt) > 1e-12:
                raise ValueError(
                    f"Market: day {i} ({bk.ticker} {bk.date}) has dt={bk.dt}, features say {self.features.dt}"
                )
            if bk.levels != self.books[0].levels:
                raise ValueError(f"Market: day {i} has {bk.levels} levels, day 0 has {self.books[0].levels}")
        # The per-day SWA series, computed once (float64 dollars).
        self.series: list[np.ndarray] = []
        self._features: dict[str, list[np.ndarray]] = {}  # adapter name -> per-day (T, c) channels
        for i, bk in enumerate(self.books):
            try:
                self.series.append(swa(bk.prices, bk.sizes))
            except ValueError as exc:
                raise ValueError(f"Market: day {i} ({bk.ticker} {bk.date}): {exc}") from exc
        if split == "auto":
            split = "day" if len(self.books) > 1 else "time"
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"Market: train_fraction must be in (0, 1), got {train_fraction}")
        self.split, self.train_fraction = split, train_fraction
        self.gap = W + H if gap is None else int(gap)
        if self.gap < W + H:
            raise ValueError(f"Market: gap {self.gap} is shorter than window + horizon = {W + H} (the minimum)")
        if split == "day":
            n = len(self.books)
            if n < 2:
                raise ValueError("Market: split='day' needs at least two days")
            n_train = min(max(math.floor(train_fraction * n + 1e-9), 1), n - 1)
            self.train_days = list(range(n_train))
            self.test_days = list(range(n_train, n))
            self.train_regions = [Region(d, 0, self.books[d].n_steps - W - H + 1) for d in self.train_days]
            self.test_regions = [Region(d, 0, self.books[d].n_steps - W - H + 1) for d in self.test_days]
        elif split == "time":
            self.train_days = self.test_days = list(range(len(self.books)))
            self.train_regions, self.test_regions = [], []
            for d, bk in enumerate(self.books):
                cut = math.floor(train_fraction * bk.n_steps)
                self.train_regions.append(Region(d, 0, cut - W - H + 1))
                self.test_regions.append(Region(d, cut + self.gap, bk.n_steps - W - H + 1))
        else:
            raise ValueError(f"Market: split must be 'auto', 'day' or 'time', got {split!r}")
        # Time split: every train snippet's span [s, s + W + H) lies in [0, cut), every test one in
        # [cut + gap, T): the parts are separated by gap >= W + H unused steps.
        for name, regions in (("training", self.train_regions), ("test", self.test_regions)):
            if sum(r.count for r in regions) < 1:
                lens = [self.books[r.day].n_steps for r in regions]
                raise ValueError(
                    f"Market: no valid {name} snippet: days of {lens} steps are too short for window {W} + "
                    f"horizon {H} (split={split!r}, train_fraction={train_fraction})"
                )

    # -- construction from files -------------------------------------------------------------------------

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[str | os.PathLike],
        dt: float = 0.01,
        start: float | None = None,
        end: float | None = None,
        features: FeatureConfig | None = None,
        split: str = "auto",
        train_fraction: float = 0.8,
        progress: bool = False,
    ) -> Market:
        """Load and resample each day (first trading hour by default: 09:30-10:30 if covered, else all of it).

        Each path is whatever ``data_loaders.lobster.load_day`` accepts (a message file, a one-day folder, a
        one-day zip) or a folder of several days (expanded in date order). Days are kept in the order given;
        pass them in date order so that the day split trains on the past and tests on the future.
        """
        from data_loaders.lobster import load_day
        from lobsim.book import resample

        paths = expand_day_paths(paths)
        features = features or FeatureConfig(dt=dt)
        if abs(features.dt - dt) > 1e-12:
            raise ValueError(f"Market.from_paths: dt={dt} disagrees with features.dt={features.dt}")
        books = []
        it: Any = paths
        if progress:
            from tqdm import tqdm

            it = tqdm(paths, desc="load days", unit="day")
        for p in it:
            day = load_day(p)
            s, e = session_window(day.time, start, end)
            books.append(resample(day, dt=dt, start=s, end=e))
        source = {"paths": [str(p) for p in paths], "dt": dt, "start": start, "end": end, "split": split,
                  "train_fraction": train_fraction}
        return cls(books, features, split=split, train_fraction=train_fraction, source=source)

    # -- sizes and sampling ------------------------------------------------------------------------------

    @property
    def window(self) -> int:
        return self.features.window

    @property
    def horizon(self) -> int:
        return self.features.horizon

    @property
    def n_train(self) -> int:
        """Number of valid training starts (overlapping snippets)."""
        return sum(r.count for r in self.train_regions)

    @property
    def n_test(self) -> int:
        return sum(r.count for r in self.test_regions)

    def sample_train(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (day, start) pairs drawn uniformly (with replacement) over all valid training starts."""
        return _draw(self.train_regions, rng.integers(0, self.n_train, size=n))

    def test_refs(self, n: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A fixed seeded set of ``n`` distinct test (day, start) pairs, sorted; all of them if fewer exist."""
        total = self.n_test
        if n >= total:
            flat = np.arange(total, dtype=np.int64)
        else:
            flat = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        return _draw(self.test_regions, flat)

    def all_train_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Every valid training (day, start)."""
        return _draw(self.train_regions, np.arange(self.n_train, dtype=np.int64))

    # -- features and labels -----------------------------------------------------------------------------

    def swa_windows(self, day: np.ndarray, start: np.ndarray) -> np.ndarray:
        """float64 ``(B, W)`` SWA windows (dollars) of the snippets ``(day, start)``."""
        day, start = _as_refs(day, start)
        out = np.empty((day.shape[0], self.window), np.float64)
        offs = np.arange(self.window, dtype=np.int64)
        for d in np.unique(day):
            sel = np.nonzero(day == d)[0]
            self._check(int(d), start[sel], self.window)
            out[sel] = self.series[int(d)][start[sel, None] + offs]
        return out

    def feature_series(self, name: str) -> list[np.ndarray]:
        """Per day, float64 ``(T, c)`` channels of the adapter ``name`` (``lobsim.adapters``), computed once."""
        from lobsim.adapters import get

        if name not in self._features:
            if name == "swa":
                self._features[name] = [s[:, None] for s in self.series]
            else:
                adapter, out = get(name), []
                for i, bk in enumerate(self.books):
                    try:
                        out.append(adapter.numpy(bk.prices, bk.sizes))
                    except ValueError as exc:
                        raise ValueError(f"Market: day {i} ({bk.ticker} {bk.date}): {exc}") from exc
                self._features[name] = out
        return self._features[name]

    def windows(self, inputs: Sequence[str], day: np.ndarray, start: np.ndarray) -> np.ndarray:
        """float64 ``(B, W, C)`` input windows of the snippets: the channels of ``inputs``, in that order."""
        day, start = _as_refs(day, start)
        series = [self.feature_series(n) for n in inputs]
        C = sum(s[0].shape[1] for s in series)
        out = np.empty((day.shape[0], self.window, C), np.float64)
        offs = np.arange(self.window, dtype=np.int64)
        for d in np.unique(day):
            sel = np.nonzero(day == d)[0]
            self._check(int(d), start[sel], self.window)
            idx = start[sel, None] + offs
            c = 0
            for s in series:
                k = s[int(d)].shape[1]
                out[sel, :, c:c + k] = s[int(d)][idx]
                c += k
        return out

    def validation_split(self, fraction: float) -> tuple[list[Region], list[Region]]:
        """Time-held-out validation inside the training part: (fit regions, validation regions).

        In every training region the last ``fraction`` of its span becomes validation, after ``gap`` unused
        steps, so no fit snippet shares a grid step with a validation snippet (as for the test split).
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"Market: validation fraction must be in (0, 1), got {fraction} (--val-fraction)")
        W, H = self.window, self.horizon
        fit, val = [], []
        for r in self.train_regions:
            span = r.hi - r.lo + W + H - 1  # steps covered by the region's snippets
            cut = r.lo + math.floor((1.0 - fraction) * span)
            fit.append(Region(r.day, r.lo, cut - W - H + 1))
            val.append(Region(r.day, cut + self.gap, r.hi))
        for name, regions in (("fit", fit), ("validation", val)):
            if sum(x.count for x in regions) < 1:
                raise ValueError(f"Market: no {name} snippet left after holding out {fraction:g} of the training "
                                 f"time for validation; use more data or --val-fraction 0")
        return fit, val

    @staticmethod
    def sample_regions(regions: Sequence[Region], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (day, start) pairs drawn uniformly (with replacement) over the starts of ``regions``."""
        total = sum(r.count for r in regions)
        return _draw(regions, rng.integers(0, total, size=n))

    @staticmethod
    def refs_in(regions: Sequence[Region], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A seeded set of ``n`` distinct (day, start) pairs of ``regions``, sorted; all of them if fewer exist."""
        total = sum(r.count for r in regions)
        flat = (np.arange(total, dtype=np.int64) if n >= total
                else np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False)))
        return _draw(regions, flat)

    def changes(self, day: np.ndarray, start: np.ndarray) -> np.ndarray:
        """The label's SWA change from the window's last snapshot to ``horizon`` steps later."""
        day, start = _as_refs(day, start)
        out = np.empty(day.shape[0], np.float64)
        end_off = self.window - 1
        for d in np.unique(day):
            sel = np.nonzero(day == d)[0]
            self._check(int(d), start[sel], self.window + self.horizon)
            series = self.series[int(d)]
            end = start[sel] + end_off
            out[sel] = swa_change(series[end], series[end + self.horizon], self.features.labels.relative)
        return out

    def fit_tau(self) -> float:
        """The symmetric label threshold fitted on every training snippet (flat = 1/3 by default)."""
        return fit_threshold(self.changes(*self.all_train_starts()), self.features.labels.flat_fraction)

    def labels(self, day: np.ndarray, start: np.ndarray, tau: float) -> np.ndarray:
        """int64 ``(B,)`` labels, 0 = down, 1 = flat, 2 = up."""
        return make_labels(self.changes(day, start), tau)

    def batch(self, day: np.ndarray, start: np.ndarray, tau: float | None = None) -> SnippetBatch:
        """The books of the snippets as a SnippetBatch (labels filled when ``tau`` is given, else -1)."""
        day, start = _as_refs(day, start)
        labels = None if tau is None else self.labels(day, start, tau)
        return cut_snippets(self.books, day, start, self.window, labels)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: days, split and snippet counts."""
        return {
            "days": [{"ticker": b.ticker, "date": b.date, "steps": b.n_steps, "levels": b.levels} for b in self.books],
            "split": self.split,
            "train_fraction": self.train_fraction,
            "gap": self.gap,
            "train_regions": [asdict(r) for r in self.train_regions],
            "test_regions": [asdict(r) for r in self.test_regions],
            "n_train": self.n_train,
            "n_test": self.n_test,
            "features": self.features.to_dict(),
            "source": self.source,
        }

    def _check(self, d: int, start: np.ndarray, span: int) -> None:
        if d < 0 or d >= len(self.books):
            raise ValueError(f"Market: day {d} out of range (have {len(self.books)} days)")
        T = self.books[d].n_steps
        if start.size and (start.min() < 0 or start.max() + span > T):
            raise ValueError(f"Market: a snippet of day {d} leaves the day: starts {start.min()}..{start.max()}, "
                             f"span {span}, T={T}")


def expand_day_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Every LOBSTER day named by ``paths``: one loadable path per day (a message csv or a one-day .zip).

    Each path is a message csv, a LOBSTER .zip, a folder (its csv pairs and its .zip files, not recursive) or a
    glob pattern (``*``, ``?``, ``[...]``, ``**``) matching any of these. The days of a folder or of a glob are
    sorted by (date, ticker); the paths themselves keep the order given. A day named twice is kept once.
    """
    import glob as globmod
    from pathlib import Path

    from data_loaders.lobster import find_days, parse_name

    def folder_days(folder: Path) -> list[tuple[str, str, str]]:
        days = [(pr.date, pr.ticker, pr.message) for pr in find_days(folder)]
        for z in sorted(folder.glob("*.zip")):
            pairs = find_days(z)
            if len(pairs) > 1:
                raise ValueError(f"{z}: holds {len(pairs)} LOBSTER days; extract it or pass one day per zip")
            days += [(pr.date, pr.ticker, str(z)) for pr in pairs]
        return days

    out: list[str] = []
    for p in paths:
        text = str(p)
        if Path(text).exists():
            if Path(text).is_dir():
                days = folder_days(Path(text))
                if not days:
                    raise ValueError(f"{text}: no LOBSTER day found (message/orderbook csv pairs or .zip files)")
                out += [d[2] for d in sorted(days)]
            else:
                out.append(text)
        elif any(c in text for c in "*?["):
            matches = sorted(globmod.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{text}: no file or folder matches this pattern")
            days = []
            for m in matches:
                if Path(m).is_dir():
                    days += folder_days(Path(m))
                elif m.endswith(".zip"):
                    pairs = find_days(m)
                    days.append((pairs[0].date, pairs[0].ticker, m) if pairs else ("", "", m))
                elif (f := parse_name(m)) is not None and f["kind"] == "message":
                    days.append((f["date"], f["ticker"], m))
            if not days:
                raise ValueError(f"{text}: the matching paths hold no LOBSTER day (message csv, .zip or folder)")
            out += [d[2] for d in sorted(days)]
        else:
            raise FileNotFoundError(f"{text}: no such file or folder (a LOBSTER day, a folder of days or a glob)")
    unique: dict[str, str] = {}
    for p in out:
        unique.setdefault(os.path.realpath(p), p)
    if not unique:
        raise ValueError("Market.from_paths: no data paths given")
    return list(unique.values())


def session_window(times: np.ndarray, start: float | None, end: float | None) -> tuple[float | None, float]:
    """The resampling window: the given bounds, else the first trading hour if the day covers it, else all.

    A defaulted start is ``34200.0`` (09:30) when the first trading hour is used and the day has messages at or
    before 09:30; otherwise it is returned as ``None``, and ``lobsim.book.resample`` starts the grid at the first
    point of 09:30 + k dt (k whole grid steps) at or after the first message. So the default grid of a day is always
    a round session grid, and two users' grids of one day agree whatever file or slice they loaded.
    """
    t0, t1 = float(times[0]), float(times[-1])
    if start is None:
        covers = end is None and t0 < FIRST_HOUR[0] + 1.0 and t1 >= FIRST_HOUR[1]
        if covers:
            end = FIRST_HOUR[1]
        first = FIRST_HOUR[0] if covers and t0 <= FIRST_HOUR[0] else None
        return first, float(t1 if end is None else end)
    end = t1 if end is None else end
    # The book exists only after the first message: never resample before it.
    return max(float(start), t0), float(end)


def _as_refs(day: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    day = np.atleast_1d(np.asarray(day, dtype=np.int64))
    start = np.atleast_1d(np.asarray(start, dtype=np.int64))
    if day.shape != start.shape or day.ndim != 1:
        raise ValueError(f"Market: day {day.shape} and start {start.shape} must be 1-D of equal length")
    return day, start


def _draw(regions: Sequence[Region], flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map flat indices over the concatenated regions to (day, start)."""
    counts = np.array([r.count for r in regions], dtype=np.int64)
    bounds = np.cumsum(counts)
    which = np.searchsorted(bounds, flat, side="right")
    before = bounds[which] - counts[which]
    lo = np.array([r.lo for r in regions], dtype=np.int64)
    days = np.array([r.day for r in regions], dtype=np.int64)
    return days[which], lo[which] + (flat - before)
