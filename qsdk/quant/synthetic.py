"""Deterministic synthetic daily OHLCV panels with an optional planted signal.

The generator is for tests and demos: it is fully determined by its arguments (same ``seed`` ->
identical frame) and mimics the awkward parts of real vendor data:

* dates are trading sessions of an exchange calendar (:func:`qsdk.quant.calendar.sessions`);
* some symbols list late and some delist early (``listing_delisting=True``), so the panel is
  unbalanced (a late lister whose listing session falls after ``end`` has no rows at all);
* prices are **unadjusted** (as traded): on a 2:1 split ex-date the raw price halves and the raw
  share volume doubles; on a dividend ex-date the raw price drops by the dividend;
* ``adj_close`` is the split- and dividend-adjusted close with Yahoo's convention: adjusted
  *backwards* from the latest date, so the last ``adj_close`` equals the last ``close``, and each
  corporate action multiplies all earlier closes by its factor (split ``k:1`` -> ``1/k``; cash
  dividend ``D`` with previous raw close ``P`` -> ``1 - D/P``). With ``adjustment_anchor="first"``
  the same factors are anchored at each symbol's first session instead (``adj_close == close``
  there), so that ``adj_close`` too never changes when the range grows.

**Prefix stability.** Every value at a session depends only on ``seed``, ``n_symbols``, ``start``
and the options, never on ``end``: each random array has its own stream (spawned from ``seed``)
and is drawn time-major, listing and delisting are counted in sessions from ``start``. So
``generate_panel(end=E1)`` equals ``generate_panel(end=E2)`` on the sessions up to ``E1`` (with
``adjustment_anchor="first"``, bit for bit in every column). A backfill that generates one
partition at a time therefore sees one continuous market.

Return model (per symbol ``i``, session index ``t``; ``r`` is the log return of ``adj_close`` from
close ``t-1`` to close ``t``)::

    r[i, t] = mu + beta[i] * m[t] + vol[i] * (signal_strength * z[i, t-2] + eps[i, t])

with ``m``, ``z``, ``eps`` independent standard-normal-based draws (``m`` has 1% daily std). The
planted signal published at the close of ``t`` is ``z[i, t]``: it is unknown to all prices up to
and including ``t`` and predicts ``r[i, t+2]``, the return from close ``t+1`` to close ``t+2``.
This is exactly the qsdk label convention (signal at close ``t``, trade at close ``t+1``, forward
return measured from ``t+1``; see :func:`qsdk.quant.features.forward_returns` with ``lag=1,
horizon=1``). The cross-sectional correlation between signal and that forward return is about
``signal_strength / sqrt(1 + signal_strength**2)``. With ``signal_strength=0`` (null mode) the
signal is pure noise, independent of every price, volume and return.

All random draws are made in a fixed order and shape regardless of ``signal_strength``,
``split_prob`` and ``listing_delisting``, so changing those options changes only what they control.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from qsdk.quant.calendar import DateLike, sessions

PRICE_COLUMNS = ["date", "symbol", "open", "high", "low", "close", "volume", "adj_close"]
SPLIT_RATIOS = np.array([2.0, 3.0, 1.5])
SPLIT_RATIO_PROBS = np.array([0.6, 0.2, 0.2])
DIVIDEND_EVERY = 63  # sessions between dividends of a dividend payer (about quarterly)
MIN_SESSIONS = 30
DAILY_DRIFT = 0.0003
MARKET_VOL = 0.01
LISTING_WINDOW = 126  # a late lister lists within this many sessions after ``start``
LIFETIME = (126, 756)  # an early delister trades this many sessions (uniform) after listing
AdjustmentAnchor = Literal["last", "first"]
# one independent random stream per array, so no draw shifts another when the range changes
_STREAMS = ("symbols", "market", "z", "eps", "split_u", "split_choice", "gap", "up", "down",
            "volume_noise")


@dataclass(frozen=True)
class SyntheticPanel:
    """Output of :func:`generate_panel`.

    ``prices``: see :func:`generate_prices`.
    ``signal``: columns ``date, symbol, value``; one row per listed (symbol, session); ``value``
    known at the close of ``date`` predicts the ``adj_close`` return from close ``date+1`` to close
    ``date+2`` (sessions) with strength ``signal_strength``.
    ``corporate_actions``: columns ``date, symbol, split_ratio, dividend`` (ex-dates; ``split_ratio``
    is ``k`` for a ``k:1`` split else 1.0; ``dividend`` is cash per share else 0.0).
    """

    prices: pd.DataFrame
    signal: pd.DataFrame
    corporate_actions: pd.DataFrame


def generate_prices(
    *,
    n_symbols: int = 20,
    start: DateLike = "2015-01-01",
    end: DateLike = "2016-12-31",
    seed: int = 0,
    calendar: str = "XNYS",
    split_prob: float = 0.002,
    listing_delisting: bool = True,
    signal_strength: float = 0.0,
    adjustment_anchor: AdjustmentAnchor = "last",
) -> pd.DataFrame:
    """Synthetic unadjusted daily OHLCV prices plus Yahoo-style ``adj_close``.

    Columns (exactly, in this order): ``date`` (``datetime64[ns]``, tz-naive, normalized session),
    ``symbol`` (string, ``"SYN0001"``...), ``open``, ``high``, ``low``, ``close`` (float64, raw),
    ``volume`` (int64, raw shares), ``adj_close`` (float64). Sorted by ``(symbol, date)`` with one
    row per session the symbol is listed, on a default ``RangeIndex``.

    ``split_prob`` is the probability of a split on each listed symbol-session (ratios 2:1, 3:1,
    3:2 with probabilities 0.6/0.2/0.2). About half of the symbols pay a small quarterly dividend
    (0.2%-0.8% of the price). With ``listing_delisting`` about 20% of symbols list within the first
    ``LISTING_WINDOW`` sessions and about 15% delist ``LIFETIME`` sessions after their listing.
    ``adjustment_anchor``: ``"last"`` (Yahoo: last ``adj_close == close``) or ``"first"``.

    Invariants: ``high >= max(open, close)``, ``low <= min(open, close)``, prices > 0, volume > 0.
    See the module docstring for the return model and :func:`generate_panel` for the signal.
    """
    return generate_panel(
        n_symbols=n_symbols,
        start=start,
        end=end,
        seed=seed,
        calendar=calendar,
        split_prob=split_prob,
        listing_delisting=listing_delisting,
        signal_strength=signal_strength,
        adjustment_anchor=adjustment_anchor,
    ).prices


def _validate(n_symbols: int, seed: int, split_prob: float, signal_strength: float) -> None:
    if isinstance(n_symbols, bool) or not isinstance(n_symbols, int | np.integer) or n_symbols < 1:
        raise ValueError(f"n_symbols must be a positive integer, got {n_symbols!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if not 0.0 <= float(split_prob) <= 1.0:
        raise ValueError(f"split_prob must be a probability in [0, 1], got {split_prob!r}.")
    if not math.isfinite(float(signal_strength)) or signal_strength < 0:
        raise ValueError(
            f"signal_strength must be a finite number >= 0 (0 = null mode), got {signal_strength!r}."
        )


def generate_panel(
    *,
    n_symbols: int = 20,
    start: DateLike = "2015-01-01",
    end: DateLike = "2016-12-31",
    seed: int = 0,
    calendar: str = "XNYS",
    split_prob: float = 0.002,
    listing_delisting: bool = True,
    signal_strength: float = 0.0,
    adjustment_anchor: AdjustmentAnchor = "last",
    rows_from: DateLike | None = None,
) -> SyntheticPanel:
    """Generate prices together with the planted signal and the corporate actions.

    ``generate_panel(...).prices`` equals ``generate_prices(...)`` for the same arguments. The
    signal's predictive power is set by ``signal_strength`` (0 = pure noise); see the module
    docstring for the exact model. ``rows_from``: return only rows dated on or after it (the
    market is still generated from ``start``, so values are unchanged; building the frames of
    the whole history is the slow part when a backfill asks for its last year).
    """
    _validate(n_symbols, seed, split_prob, signal_strength)
    if adjustment_anchor not in ("last", "first"):
        raise ValueError(f"adjustment_anchor must be 'last' or 'first', got {adjustment_anchor!r}.")
    days = sessions(start, end, calendar=calendar)
    n, t_len = int(n_symbols), len(days)
    if t_len < MIN_SESSIONS:
        raise ValueError(
            f"The range {start}..{end} has {t_len} sessions; use a range with at least "
            f"{MIN_SESSIONS} sessions."
        )
    draws = _draw(int(seed), n, t_len)
    first, last = _listing_window(draws, t_len, listing_delisting=listing_delisting)
    cols = np.arange(t_len)[None, :]
    listed = (cols >= first[:, None]) & (cols <= last[:, None])
    after_first = listed & (cols > first[:, None])

    log_ret = _log_returns(draws, signal_strength=float(signal_strength))
    split_k, div_yield = _corporate_actions(draws, after_first, split_prob=float(split_prob))
    log_mult = np.where(after_first, np.log(1.0 / split_k) + np.log1p(-div_yield), 0.0)

    increments = np.where(after_first, log_ret + log_mult, 0.0)
    log_close = np.log(draws["p0"])[:, None] + np.cumsum(increments, axis=1)
    close = np.exp(log_close)
    cum_mult = np.cumsum(log_mult, axis=1)
    if adjustment_anchor == "last":
        last_cum = np.take_along_axis(cum_mult, last[:, None], axis=1)
        adj_close = close * np.exp(last_cum - cum_mult)
    else:  # cum_mult is 0 up to the listing session: adj_close == close there
        adj_close = close * np.exp(-cum_mult)

    open_, high, low = _ohlc(draws, close, split_k, div_yield, after_first)
    volume = _volume(draws, log_ret, split_k, after_first)
    prev_close = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    dividend = np.where(div_yield > 0, div_yield * prev_close, 0.0)

    width = max(4, len(str(n)))
    symbols = np.array([f"SYN{i + 1:0{width}d}" for i in range(n)], dtype=object)
    sym_grid = np.repeat(symbols, t_len).reshape(n, t_len)
    date_grid = np.tile(days.to_numpy(), n).reshape(n, t_len)
    mask = listed.ravel()
    if rows_from is not None:
        mask &= np.tile(days.to_numpy() >= pd.Timestamp(rows_from).to_datetime64(), n)

    def frame(columns: dict[str, np.ndarray], keep: np.ndarray) -> pd.DataFrame:
        data = {
            "date": pd.DatetimeIndex(date_grid.ravel()[keep]).as_unit("ns"),
            "symbol": sym_grid.ravel()[keep],  # pandas infers its default string dtype
        }
        data.update({k: v.ravel()[keep] for k, v in columns.items()})
        return pd.DataFrame(data)

    prices = frame(
        {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "adj_close": adj_close,
        },
        mask,
    )
    signal = frame({"value": draws["z"]}, mask)
    event_mask = ((split_k != 1.0) | (div_yield > 0)).ravel() & mask
    actions = frame({"split_ratio": split_k, "dividend": dividend}, event_mask)
    return SyntheticPanel(prices=prices, signal=signal, corporate_actions=actions)


def _draw(seed: int, n: int, t_len: int) -> dict[str, np.ndarray]:
    """All random numbers. Each array has its own stream; panels are drawn time-major (shape
    ``(t_len, n)``, then transposed), so a longer range only appends draws: prefix stability."""
    streams = dict(zip(_STREAMS, (np.random.default_rng(s) for s in
                                  np.random.SeedSequence(seed).spawn(len(_STREAMS))), strict=True))
    rng = streams["symbols"]
    shape = (t_len, n)

    def panel(name: str, draw) -> np.ndarray:
        return np.ascontiguousarray(draw(streams[name], shape).T)

    return {
        "p0": np.exp(rng.uniform(np.log(10.0), np.log(200.0), n)),
        "vol": rng.uniform(0.01, 0.03, n),
        "beta": rng.uniform(0.6, 1.4, n),
        "base_volume": np.exp(rng.uniform(np.log(2e5), np.log(5e6), n)),
        "payer": rng.random(n) < 0.5,
        "div_yield": rng.uniform(0.002, 0.008, n),
        "div_offset": rng.integers(1, DIVIDEND_EVERY + 1, n),
        "late": rng.random(n) < 0.20,
        "list_idx": rng.integers(1, LISTING_WINDOW + 1, n),
        "early": rng.random(n) < 0.15,
        "lifetime": rng.integers(LIFETIME[0], LIFETIME[1] + 1, n),
        "market": streams["market"].normal(0.0, MARKET_VOL, t_len),
        "z": panel("z", lambda g, sh: g.standard_normal(sh)),
        "eps": panel("eps", lambda g, sh: g.standard_normal(sh)),
        "split_u": panel("split_u", lambda g, sh: g.random(sh)),
        "split_choice": panel("split_choice",
                              lambda g, sh: g.choice(len(SPLIT_RATIOS), size=sh, p=SPLIT_RATIO_PROBS)),
        "gap": panel("gap", lambda g, sh: g.standard_normal(sh)),
        "up": np.abs(panel("up", lambda g, sh: g.standard_normal(sh))),
        "down": np.abs(panel("down", lambda g, sh: g.standard_normal(sh))),
        "volume_noise": panel("volume_noise", lambda g, sh: g.standard_normal(sh)),
    }


def _listing_window(
    draws: dict[str, np.ndarray], t_len: int, *, listing_delisting: bool
) -> tuple[np.ndarray, np.ndarray]:
    """First and last listed session index per symbol (inclusive)."""
    n = len(draws["p0"])
    first = np.zeros(n, dtype=np.int64)
    last = np.full(n, t_len - 1, dtype=np.int64)
    if listing_delisting:
        first = np.where(draws["late"], draws["list_idx"], first)
        last = np.where(draws["early"], np.minimum(first + draws["lifetime"], t_len - 1), last)
    return first, last


def _log_returns(draws: dict[str, np.ndarray], *, signal_strength: float) -> np.ndarray:
    """Log ``adj_close`` returns; ``z[:, t-2]`` (the signal at ``t-2``) drives ``r[:, t]``."""
    z, eps = draws["z"], draws["eps"]
    planted = np.zeros_like(z)
    planted[:, 2:] = z[:, :-2]
    idio = draws["vol"][:, None] * (signal_strength * planted + eps)
    return DAILY_DRIFT + draws["beta"][:, None] * draws["market"][None, :] + idio


def _corporate_actions(
    draws: dict[str, np.ndarray], eligible: np.ndarray, *, split_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """Split ratio (1.0 = none) and dividend yield (0.0 = none) per symbol-session.

    Events happen only after the listing day; a dividend never falls on a split ex-date.
    """
    is_split = eligible & (draws["split_u"] < split_prob)
    split_k = np.where(is_split, SPLIT_RATIOS[draws["split_choice"]], 1.0)
    cols = np.arange(eligible.shape[1])[None, :]
    on_schedule = (cols - draws["div_offset"][:, None]) % DIVIDEND_EVERY == 0
    is_div = eligible & on_schedule & draws["payer"][:, None] & ~is_split
    div_yield = np.where(is_div, draws["div_yield"][:, None], 0.0)
    return split_k, div_yield


def _ohlc(
    draws: dict[str, np.ndarray],
    close: np.ndarray,
    split_k: np.ndarray,
    div_yield: np.ndarray,
    after_first: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open gaps from the (split/dividend-adjusted) previous close; high/low bracket open/close."""
    vol = draws["vol"][:, None]
    prev_close = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    reference = np.where(after_first, prev_close / split_k * (1.0 - div_yield), close)
    open_ = reference * np.exp(0.3 * vol * draws["gap"])
    high = np.maximum(open_, close) * np.exp(0.5 * vol * draws["up"])
    low = np.minimum(open_, close) * np.exp(-0.5 * vol * draws["down"])
    return open_, high, low


def _volume(
    draws: dict[str, np.ndarray], log_ret: np.ndarray, split_k: np.ndarray, after_first: np.ndarray
) -> np.ndarray:
    """Raw share volume: grows with cumulative splits and with today's absolute return."""
    shares_factor = np.cumprod(np.where(after_first, split_k, 1.0), axis=1)
    surprise = np.abs(log_ret - DAILY_DRIFT) / draws["vol"][:, None]
    raw = (
        draws["base_volume"][:, None]
        * shares_factor
        * np.exp(0.3 * draws["volume_noise"] + 0.2 * np.minimum(surprise, 5.0))
    )
    return np.maximum(np.rint(raw), 1.0).astype(np.int64)


def _hash_uniform(keys: pd.DataFrame, *, salt: str) -> np.ndarray:
    """A uniform in [0, 1) per row, a pure function of the row's keys and ``salt`` (so the same
    (symbol, date) draws the same number in any range or partition)."""
    hashed = pd.util.hash_pandas_object(keys.assign(_salt=salt), index=False).to_numpy()
    return (hashed >> np.uint64(11)).astype("float64") / float(2**53)


def vendor_delivery(
    signal: pd.DataFrame,
    *,
    seed: int = 0,
    calendar: str = "XNYS",
    late_share: float = 0.1,
    restated_share: float = 0.05,
    restate_after: int = 3,
) -> pd.DataFrame:
    """The vendor's file for ``signal`` (``date, symbol, value``): every value with the time it was
    published, ``published_at``, as a real vendor delivers it.

    Most values are published at the close of ``date``. A share ``late_share`` is published one
    hour after the *next* session's open, too late for a decision at the close of ``date``. A
    share ``restated_share`` is published at the close and restated at the close ``restate_after``
    sessions later: a second row with the same ``date`` and ``symbol``, the revised value
    ``value + u - 0.5`` (``u`` uniform) and the later ``published_at``. Which values are late or
    restated is a hash of (``seed``, symbol, date), so it never depends on the range generated.
    Returns ``date, symbol, value, published_at`` (UTC), sorted by date, symbol and publication.
    """
    from qsdk.quant.calendar import get_calendar, session_closes

    out = signal[["date", "symbol", "value"]].reset_index(drop=True)
    if out.empty:
        return out.assign(published_at=pd.Series([], dtype="datetime64[ns, UTC]"))
    keys = pd.DataFrame({"symbol": out["symbol"].astype(str),
                         "date": pd.to_datetime(out["date"]).dt.strftime("%Y-%m-%d"), "seed": str(seed)})
    draw = _hash_uniform(keys, salt="delay")
    cal = get_calendar(calendar)
    days = pd.DatetimeIndex(pd.to_datetime(out["date"])).normalize()
    all_sessions = cal.sessions.tz_localize(None) if cal.sessions.tz is not None else cal.sessions
    position = all_sessions.get_indexer(days)
    next_open = pd.DatetimeIndex(pd.to_datetime(cal.opens, utc=True).iloc[position + 1])
    published = pd.Series(session_closes(days, calendar=calendar), index=out.index)
    late = draw < late_share
    published[late] = (next_open + pd.Timedelta(hours=1))[late]
    restated = (draw >= late_share) & (draw < late_share + restated_share)
    revision = out[restated].assign(
        value=out.loc[restated, "value"] + _hash_uniform(keys[restated], salt="revision") - 0.5,
        published_at=session_closes(all_sessions[position[restated] + restate_after], calendar=calendar))
    delivered = pd.concat([out.assign(published_at=published), revision], ignore_index=True)
    return delivered.sort_values(["date", "symbol", "published_at"], kind="mergesort").reset_index(drop=True)


FAULTS = ("zero_price", "negative_price", "missing_session", "nan_burst")
NAN_BURST = 10  # consecutive sessions of one symbol whose close is NaN


def inject_faults(bars: pd.DataFrame, faults: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """``bars`` with the vendor faults named in ``faults`` planted at fixed places, for tests of
    the data checks (:mod:`qsdk.lakehouse.checks`):

    * ``zero_price``: the first symbol's close is 0 on the middle session of the range;
    * ``negative_price``: the last symbol's close is negated on the middle session;
    * ``missing_session``: the session a third into the range is dropped for half of the symbols
      (not at either end of a symbol's range: a gap, not a shorter history);
    * ``nan_burst``: the second symbol's close is NaN for ``NAN_BURST`` sessions from the middle.

    Deterministic: the same bars and faults give the same frame. An empty frame is returned as is.
    """
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; use any of {', '.join(FAULTS)}")
    out = bars.sort_values(["symbol", "date"]).reset_index(drop=True)
    if out.empty or not faults:
        return out
    dates = np.sort(out["date"].unique())
    middle = dates[len(dates) // 2]
    symbols = sorted(out["symbol"].unique())
    on_middle = out["date"] == middle
    if "zero_price" in faults:
        out.loc[on_middle & (out["symbol"] == symbols[0]), "close"] = 0.0
    if "negative_price" in faults:
        row = on_middle & (out["symbol"] == symbols[-1])
        out.loc[row, "close"] = -out.loc[row, "close"]
    if "nan_burst" in faults:
        burst = dates[len(dates) // 2: len(dates) // 2 + NAN_BURST]
        out.loc[out["date"].isin(burst) & (out["symbol"] == symbols[min(1, len(symbols) - 1)]), "close"] = np.nan
    if "missing_session" in faults:
        gone = symbols[: max(1, len(symbols) // 2)]
        third = out["date"] == dates[len(dates) // 3]
        out = out[~(third & out["symbol"].isin(gone))].reset_index(drop=True)
    return out
