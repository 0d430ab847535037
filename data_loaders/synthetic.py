"""Embedded default market: a zero-intelligence order-flow simulator that writes real LOBSTER files.

Model (in the style of Cont, Stoikov & Talreja, 2010), simulated event by event in continuous time with an
order-level book (order ids, FIFO queue per price):

- limit orders arrive on each side at rate ``limit_rate``; the distance i = 1..``max_distance`` ticks from the
  opposite best quote is drawn with probability proportional to lambda(i) = i^-``limit_alpha`` (a buy at
  distance i rests at best ask - i ticks, so it may improve the spread but never crosses);
- market orders arrive at rate ``market_rate`` and walk the opposite side, one execution per resting order hit;
- every resting order is cancelled at rate theta(i) = ``cancel_rate`` * i^-``cancel_beta`` (i = distance in
  ticks from the opposite best quote, 1 <= i <= ``max_distance``) or ``cancel_far`` beyond; a cancellation is
  partial (type 2, whole lots) with probability ``partial_cancel_prob`` when the order holds more than a lot;
- sizes are round lots with a heavy (discrete Pareto) tail: k lots with probability proportional to
  k^-(1 + alpha), k = 1..max lots; a share ``odd_lot_prob`` of limit orders are odd lots (1..lot-1 shares);
- executions against hidden liquidity (type 5, order id 0, inside the spread or at the best quote) arrive at
  ``hidden_rate``; they do not change the visible book.

Planted signal (not part of the pure zero-intelligence model, and said so in docs/synthetic-market.md): a
hidden two-state informed order-flow regime r = +-1 switches at rate ``regime_rate`` (0.005/s in the default
presets: regimes last minutes); a market order is a buy with probability 0.5 + 0.5 * ``flow_bias`` * r (minus a
pull back to the opening price), and a limit order is a bid with probability 0.5 + 0.5 * ``limit_bias`` * r
(0 in every preset). Prices, SWA and queues drift in the regime's direction for minutes, which models can learn;
:func:`regime_path` gives the regime for an oracle. ``thick-zi`` / ``thin-zi`` are the earlier defaults (a
20 s regime, byte for byte). Set ``flow_bias=0`` for the pure model.

Output follows LOBSTER exactly: a message file (Time, Type, OrderID, Size, Price, Direction; no header;
time in seconds after midnight with 9 decimals) and an orderbook file (AskPrice_i, AskSize_i, BidPrice_i,
BidSize_i for i = 1..L; row k = book after message k; dummies +-9999999999 with size 0 for empty levels;
prices are dollars x 10,000). Like LOBSTER, the message file holds only the events that touch the visible
top-L book (fewer than L occupied prices strictly better than the event's price on its side, judged before
the event); executions always do. Events deeper in the book happen but leave no message, and the orderbook
file is always the true top-L book. ``simulate_day(..., all_messages=True)`` emits every event instead.

Array form returned by :func:`simulate_day`: ``messages`` (N, 6) int64 whose column 0 is the time in integer
**nanoseconds** after midnight (exact; :func:`message_times` gives float64 seconds) and columns 1-5 are Type,
OrderID, Size, Price, Direction; ``orderbook`` (N, 4L) int64 in LOBSTER column order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_loaders import synthetic_engine as eng

SESSION_START_MS = 34_200_000  # 09:30
SESSION_END_MS = 57_600_000  # 16:00


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic market (rates per second, distances in ticks). See the module docstring."""

    name: str = "thick"
    ticker: str = "THICK"
    price: float = 9.0  # dollars at the open (before the per-day jitter)
    tick: float = 0.01  # dollars
    lot: int = 100  # shares in a round lot
    limit_rate: float = 5.0  # limit orders per second per side
    limit_alpha: float = 1.0  # lambda(i) proportional to i^-alpha
    max_distance: int = 20  # K: limit orders rest 1..K ticks from the opposite best quote
    cancel_rate: float = 0.03  # theta(1): cancellations per order per second
    cancel_beta: float = 0.0  # theta(i) = cancel_rate * i^-beta, i <= K
    cancel_far: float = 0.05  # theta beyond K ticks (stale orders left behind by the price)
    market_rate: float = 1.2  # market orders per second (both sides)
    size_alpha: float = 1.3  # tail exponent of limit order lots
    max_lots: int = 50
    market_size_alpha: float = 1.0  # tail exponent of market order lots
    market_max_lots: int = 100
    odd_lot_prob: float = 0.05
    partial_cancel_prob: float = 0.1
    hidden_rate: float = 0.1  # type-5 executions per second
    regime_rate: float = 0.05  # switches of the hidden order-flow regime per second (mean duration 20 s)
    flow_bias: float = 0.6  # market buy probability 0.5 + 0.5 * bias * regime - anchor_pull * (mid / open - 1)
    anchor_pull: float = 15.0  # mild pull of the order flow back to the day's opening price
    limit_bias: float = 0.0  # a limit order is a bid with probability 0.5 + 0.5 * limit_bias * regime
    warmup: float = 600.0  # seconds simulated before 09:30 so the book starts in its steady state
    day_jitter: float = 0.02  # relative s.d. of the opening price from day to day

    def __post_init__(self) -> None:
        if self.price <= 0 or self.tick <= 0 or self.lot < 1:
            raise ValueError(f"SyntheticConfig {self.name!r}: price, tick and lot must be positive")
        if round(self.tick * 10_000) < 1 or abs(self.tick * 10_000 - round(self.tick * 10_000)) > 1e-9:
            raise ValueError(f"SyntheticConfig {self.name!r}: tick {self.tick} is not a whole number of $0.0001")
        if self.max_distance < 1 or self.max_lots < 1 or self.market_max_lots < 1:
            raise ValueError(f"SyntheticConfig {self.name!r}: max_distance and max lots must be >= 1")
        rates = ("limit_rate", "market_rate", "cancel_rate", "cancel_far", "hidden_rate", "regime_rate", "warmup")
        for f in (*rates, "anchor_pull"):
            if getattr(self, f) < 0:
                raise ValueError(f"SyntheticConfig {self.name!r}: {f} must be >= 0")
        probs = (self.flow_bias, self.limit_bias, self.odd_lot_prob, self.partial_cancel_prob)
        if not all(0 <= p <= 1 for p in probs):
            raise ValueError(f"SyntheticConfig {self.name!r}: flow_bias, limit_bias and probabilities must be in "
                             "[0, 1]")
        if self.limit_rate <= 0 or self.cancel_rate <= 0:
            raise ValueError(f"SyntheticConfig {self.name!r}: limit_rate and cancel_rate must be > 0")


# The earlier defaults ("-zi": zero-intelligence flow with only the mild 20 s order-flow regime), kept so that
# results obtained on them can be reproduced byte for byte.
_THICK_ZI = SyntheticConfig(name="thick-zi")
_THIN_ZI = SyntheticConfig(
    name="thin-zi",
    ticker="THIN",
    price=580.0,
    limit_rate=5.0,
    limit_alpha=0.1,
    max_distance=250,
    cancel_rate=0.1,
    cancel_far=0.1,
    market_rate=0.5,
    size_alpha=1.5,
    max_lots=20,
    market_size_alpha=1.3,
    market_max_lots=20,
    odd_lot_prob=0.3,
    partial_cancel_prob=0.02,
    hidden_rate=0.17,
    flow_bias=0.8,
)
# The planted, learnable mechanism of the defaults (docs/synthetic-market.md): an informed order-flow regime that
# lasts minutes instead of seconds, and informed liquidity (limit orders lean to the regime's side).
PLANTED = {"regime_rate": 0.005, "flow_bias": 0.8, "anchor_pull": 10.0, "limit_bias": 0.0}

PRESETS: dict[str, SyntheticConfig] = {
    # About $9, 1-cent tick, a one-tick spread most of the time and thousands of shares per level (like Ford).
    "thick": dataclasses.replace(_THICK_ZI, name="thick", **PLANTED),
    # About $580, 1-cent tick, a wide spread and a sparse ladder of a few hundred shares per level (like GOOG).
    "thin": dataclasses.replace(_THIN_ZI, name="thin", **PLANTED),
    "thick-zi": _THICK_ZI,
    "thin-zi": _THIN_ZI,
}
SYNTHETIC_PRESETS = tuple(PRESETS)


def _lots_cum(alpha: float, kmax: int) -> np.ndarray:
    k = np.arange(1, kmax + 1, dtype=np.float64)
    return np.cumsum(k ** -(1.0 + alpha))


def _day_seed(seed: int, date: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(date.replace("-", ""))])


def _check_date(date: str) -> dt.date:
    try:
        return dt.date.fromisoformat(date)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"date {date!r} is not YYYY-MM-DD") from exc


def _end_ms(hours: float) -> int:
    if not 0 < hours <= 6.5:
        raise ValueError(f"hours must be in (0, 6.5] (the 09:30-16:00 session), got {hours}")
    return SESSION_START_MS + int(round(hours * 3_600_000))


def simulate_raw(
    cfg: SyntheticConfig, date: str, hours: float, seed: int, levels: int = 10, all_messages: bool = False,
    return_regimes: bool = False,
) -> tuple:
    """:func:`simulate_day` plus the number of events simulated (warm-up and unseen deep events included).

    With ``return_regimes`` a fourth item: the regime log, int64 (R + 1,): the regime (+-1) at the start of the
    warm-up, then the times (integer ns after midnight) of the R switches.
    """
    _check_date(date)
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    end_ms = _end_ms(hours)
    ss = _day_seed(seed, date)
    engine_seed, jitter_seed = (int(x) for x in ss.generate_state(2))
    z = float(np.random.default_rng(jitter_seed).standard_normal())
    tick_units = int(round(cfg.tick * 10_000))
    init_tick = max(2, int(round(cfg.price * np.exp(cfg.day_jitter * z) / cfg.tick)))

    ip = np.zeros(eng.N_IP, np.int64)
    ip[eng.I_START_NS] = SESSION_START_MS * 1_000_000
    ip[eng.I_END_NS] = end_ms * 1_000_000
    ip[eng.I_WARMUP_NS] = int(round(cfg.warmup * 1e9))
    ip[eng.I_INIT_TICK] = init_tick
    ip[eng.I_TICK_UNITS] = tick_units
    ip[eng.I_LEVELS] = levels
    ip[eng.I_EMIT_ALL] = int(all_messages)
    ip[eng.I_LOT] = cfg.lot
    ip[eng.I_SPAN] = max(20_000, 40 * cfg.max_distance)
    ip[eng.I_FIRST_ID] = 10_000_000
    # about one message per limit order and per cancellation, a few per market order, for the whole session
    seconds = (end_ms - SESSION_START_MS) / 1000
    cap = int(seconds * (4 * cfg.limit_rate + 4 * cfg.market_rate + cfg.hidden_rate) * 1.1) + 1024
    ip[eng.I_OUT_CAP] = cap

    d = np.arange(0, cfg.max_distance + 2, dtype=np.float64)
    theta = cfg.cancel_rate * np.maximum(d, 1.0) ** -cfg.cancel_beta
    theta[-1] = cfg.cancel_far
    fp = np.zeros(eng.N_FP, np.float64)
    fp[eng.F_LIMIT_RATE] = cfg.limit_rate
    fp[eng.F_MARKET_RATE] = cfg.market_rate
    fp[eng.F_THETA_MAX] = float(theta.max())
    fp[eng.F_HIDDEN_RATE] = cfg.hidden_rate
    fp[eng.F_REGIME_RATE] = cfg.regime_rate
    fp[eng.F_FLOW_BIAS] = cfg.flow_bias
    fp[eng.F_ODD_LOT] = cfg.odd_lot_prob if cfg.lot > 1 else 0.0
    fp[eng.F_PARTIAL] = cfg.partial_cancel_prob
    fp[eng.F_ANCHOR_PULL] = cfg.anchor_pull
    fp[eng.F_LIMIT_BIAS] = cfg.limit_bias
    lam_cum = np.cumsum(np.arange(1, cfg.max_distance + 1, dtype=np.float64) ** -cfg.limit_alpha)
    msgs, book, n_events, regimes = eng.simulate_events(
        engine_seed,
        ip,
        fp,
        lam_cum,
        theta,
        _lots_cum(cfg.size_alpha, cfg.max_lots),
        _lots_cum(cfg.market_size_alpha, cfg.market_max_lots),
    )
    if msgs.shape[0] < cap // 2:  # give back an oversized buffer
        msgs, book = msgs.copy(), book.copy()
    if return_regimes:
        return msgs, book, int(n_events), regimes
    return msgs, book, int(n_events)


def regime_path(cfg: SyntheticConfig, date: str, hours: float, seed: int, times: np.ndarray) -> np.ndarray:
    """The hidden order-flow regime (+1 / -1) in force at each of ``times`` (seconds after midnight) on the day
    that ``simulate_day(cfg, date, hours, seed)`` simulates (it is simulated again). Used by the oracle."""
    *_, log = simulate_raw(cfg, date, hours, seed, return_regimes=True)
    n = np.searchsorted(log[1:] / 1e9, np.asarray(times, np.float64), side="right")
    return np.where(n % 2 == 0, log[0], -log[0]).astype(np.int64)


def simulate_day(
    cfg: SyntheticConfig, date: str, hours: float, seed: int, levels: int = 10, all_messages: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one session from 09:30 for ``hours`` hours; deterministic in (cfg, date, hours, seed, levels).

    Returns ``(messages, orderbook)``: messages (N, 6) int64 with column 0 = time in integer nanoseconds after
    midnight, then Type, OrderID, Size, Price, Direction; orderbook (N, 4L) int64 (AskP, AskS, BidP, BidS per
    level). ``all_messages=True`` also emits events outside the top-L window (not what LOBSTER does).
    """
    msgs, book, _ = simulate_raw(cfg, date, hours, seed, levels, all_messages)
    return msgs, book


def message_times(messages: np.ndarray) -> np.ndarray:
    """Float64 seconds after midnight of the message rows returned by :func:`simulate_day`."""
    return messages[:, 0] / 1e9


def trading_dates(start_date: str, days: int) -> list[str]:
    """``days`` weekdays from ``start_date`` on (a weekend start moves to Monday; holidays are not skipped)."""
    d = _check_date(start_date)
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    out: list[str] = []
    while len(out) < days:
        if d.weekday() < 5:
            out.append(d.isoformat())
        d += dt.timedelta(days=1)
    return out


def lobster_names(ticker: str, date: str, hours: float, levels: int) -> tuple[str, str, str]:
    """(message csv, orderbook csv, zip) file names in LOBSTER's convention."""
    stem = f"{ticker}_{date}_{SESSION_START_MS}_{_end_ms(hours)}"
    return (
        f"{stem}_message_{levels}.csv",
        f"{stem}_orderbook_{levels}.csv",
        f"LOBSTER_SampleFile_{ticker}_{date}_{levels}.zip",
    )


def to_csv_bytes(messages: np.ndarray, orderbook: np.ndarray) -> tuple[bytes, bytes]:
    """LOBSTER CSV bytes (no header, LF) of a simulated day: message file and orderbook file."""
    m = eng.format_csv(np.ascontiguousarray(messages, dtype=np.int64), True).tobytes()
    b = eng.format_csv(np.ascontiguousarray(orderbook, dtype=np.int64), False).tobytes()
    return m, b


def _zip_bytes(members: list[tuple[str, bytes]], date: str) -> bytes:
    """A deterministic zip (fixed timestamps and permissions) holding ``members``."""
    d = _check_date(date)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(d.year, d.month, d.day, 18, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    return buf.getvalue()


def _write_all_atomic(files: list[tuple[Path, bytes]]) -> None:
    """Write every file to a temporary name first, then rename them all; on error remove the temporaries."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_days(
    out_dir: str | os.PathLike,
    preset: str | SyntheticConfig = "thick",
    days: int = 5,
    hours: float = 1.0,
    seed: int = 0,
    levels: int = 10,
    ticker: str | None = None,
    start_date: str = "2019-09-03",
    zip: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Simulate ``days`` weekdays and write one LOBSTER message/orderbook pair per day into ``out_dir``.

    Returns one path per day: the message csv, or with ``zip=True`` the ``LOBSTER_SampleFile_*.zip`` holding
    both files (then no loose csv is written). Files are written atomically; same arguments give the same bytes.
    """
    if isinstance(preset, SyntheticConfig):
        cfg = preset
    elif preset in PRESETS:
        cfg = PRESETS[preset]
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    ticker = ticker or cfg.ticker
    if not ticker or not ticker.replace(".", "").isalnum() or "_" in ticker:
        raise ValueError(f"ticker {ticker!r} must be letters/digits (no '_')")
    _end_ms(hours)
    dates = trading_dates(start_date, days)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    it = dates
    if progress:
        from tqdm import tqdm

        it = tqdm(dates, desc=f"synthetic {cfg.name}", unit="day")
    for date in it:
        msgs, book = simulate_day(cfg, date, hours, seed, levels)
        m_bytes, b_bytes = to_csv_bytes(msgs, book)
        m_name, b_name, z_name = lobster_names(ticker, date, hours, levels)
        if zip:
            path = out / z_name
            _write_all_atomic([(path, _zip_bytes([(b_name, b_bytes), (m_name, m_bytes)], date))])
        else:
            path = out / m_name
            _write_all_atomic([(path, m_bytes), (out / b_name, b_bytes)])
        written.append(path)
    return written


def with_overrides(preset: str, **overrides: object) -> SyntheticConfig:
    """A preset with some fields replaced (``dataclasses.replace`` with a clear error for unknown fields)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(SyntheticConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ValueError(f"unknown SyntheticConfig field(s) {bad}")
    return dataclasses.replace(PRESETS[preset], **overrides)
