"""Look-ahead-free per-symbol features and forward-return labels.

Input is a *long* prices frame with one row per (``date``, ``symbol``) and at least the columns
``date``, ``symbol``, ``adj_close`` (and ``volume`` for volume features), e.g. the output of
:func:`qsdk.quant.synthetic.generate_prices`. Row order does not matter.

Windows are counted in **rows per symbol** (i.e. the symbol's own trading sessions, not calendar
days). Every feature at ``(date t, symbol s)`` uses only rows of ``s`` dated ``<= t``; where the
window is not yet full the value is NaN. Feature functions return a ``pd.Series`` aligned to the
input's index (same rows, same order).

Label convention (qsdk, same as alphalens' ``forward_returns`` when ``lag=0``): a signal observed
at the close of ``t`` is traded at the close of ``t+lag`` and earns the ``adj_close`` return from
close ``t+lag`` to close ``t+lag+horizon``. The default ``lag=1`` leaves one session between
observing the signal and trading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

TRADING_DAYS_PER_YEAR = 252


def _check_prices(prices: pd.DataFrame, required: Sequence[str]) -> None:
    if not isinstance(prices, pd.DataFrame):
        raise ValueError(f"prices must be a pandas DataFrame, got {type(prices).__name__}.")
    missing = [c for c in ("date", "symbol", *required) if c not in prices.columns]
    if missing:
        raise ValueError(
            f"prices is missing columns {missing}; expected a long frame with columns "
            f"date, symbol, {', '.join(required)}."
        )
    if prices.index.has_duplicates:
        raise ValueError("prices has a duplicated index; call prices.reset_index(drop=True) first.")
    if prices.duplicated(["date", "symbol"]).any():
        raise ValueError(
            "prices has duplicated (date, symbol) rows; keep one row per symbol and date."
        )


def _check_window(name: str, value: int, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _per_symbol(
    prices: pd.DataFrame, column: str, fn: Callable[[pd.Series, pd.Series], pd.Series]
) -> pd.Series:
    """Call ``fn(values, symbols)`` on ``column`` sorted by (symbol, date); realign to ``prices``.

    ``values`` is float64 and keeps the original index labels, so ``fn`` may group by ``symbols``.
    """
    ordered = prices.sort_values(["symbol", "date"], kind="mergesort")
    out = fn(ordered[column].astype("float64"), ordered["symbol"])
    return out.reindex(prices.index)


def trailing_windows(values: Any, window: int) -> np.ndarray:
    """A ``(n, window)`` read-only view: row t holds ``values[t-window+1 .. t]``, NaN before the first.

    Each row's statistic is computed from that row's values alone, so a value at t does not depend
    on where the series starts. pandas' rolling mean and std keep running sums instead: their last
    digits depend on the first row read, so a daily run that reads a year of look-back would write
    features that differ from the backfill's in the 16th digit.
    """
    padded = np.concatenate([np.full(window - 1, np.nan), np.asarray(values, dtype="float64")])
    return np.lib.stride_tricks.sliding_window_view(padded, window)


def _rolling(
    values: pd.Series, symbols: pd.Series, window: int, stat: Callable[[np.ndarray], np.ndarray]
) -> pd.Series:
    """Per-symbol ``stat`` over each full trailing window of ``window`` rows (NaN if any is NaN)."""
    out = np.full(len(values), np.nan)
    array = values.to_numpy(dtype="float64")
    for rows in values.groupby(symbols, sort=False).indices.values():
        out[rows] = stat(trailing_windows(array[rows], window))
    return pd.Series(out, index=values.index)


def _mean(windows: np.ndarray) -> np.ndarray:
    return windows.mean(axis=1)


def _std(windows: np.ndarray) -> np.ndarray:
    return windows.std(axis=1, ddof=1)


def _max(windows: np.ndarray) -> np.ndarray:
    return windows.max(axis=1)


def momentum(prices: pd.DataFrame, *, window: int, skip: int = 0) -> pd.Series:
    """Past return ``adj_close[t-skip] / adj_close[t-window] - 1`` (rows per symbol).

    ``skip`` drops the most recent ``skip`` sessions (e.g. the classic 12-1 momentum is
    ``window=252, skip=21``). Requires ``window > skip >= 0``.
    """
    window = _check_window("window", window)
    skip = _check_window("skip", skip, minimum=0)
    if skip >= window:
        raise ValueError(f"skip ({skip}) must be smaller than window ({window}).")
    _check_prices(prices, ["adj_close"])

    def fn(values: pd.Series, symbols: pd.Series) -> pd.Series:
        g = values.groupby(symbols, sort=False)
        return g.shift(skip) / g.shift(window) - 1.0

    return _per_symbol(prices, "adj_close", fn).rename("momentum")


def reversal(prices: pd.DataFrame, *, window: int = 5) -> pd.Series:
    """Short-term reversal: minus the past return, ``-(adj_close[t] / adj_close[t-window] - 1)``."""
    return (-momentum(prices, window=window, skip=0)).rename("reversal")


def realized_volatility(
    prices: pd.DataFrame, *, window: int = 20, annualize: bool = True
) -> pd.Series:
    """Sample std (ddof=1) of the last ``window`` daily log returns of ``adj_close``.

    Multiplied by ``sqrt(252)`` when ``annualize``. Needs ``window + 1`` prices; ``window >= 2``.
    """
    window = _check_window("window", window, minimum=2)
    _check_prices(prices, ["adj_close"])
    scale = np.sqrt(TRADING_DAYS_PER_YEAR) if annualize else 1.0

    def fn(values: pd.Series, symbols: pd.Series) -> pd.Series:
        log_price = np.log(values)
        log_ret = log_price - log_price.groupby(symbols, sort=False).shift(1)
        return _rolling(log_ret, symbols, window, _std) * scale

    return _per_symbol(prices, "adj_close", fn).rename("realized_volatility")


def volume_zscore(prices: pd.DataFrame, *, window: int = 20) -> pd.Series:
    """``(volume[t] - mean) / std`` over the trailing ``window`` sessions *including* ``t``.

    Uses raw ``volume`` (ddof=1). NaN until the window is full or when the window's std is 0.
    """
    window = _check_window("window", window, minimum=2)
    _check_prices(prices, ["volume"])

    def fn(values: pd.Series, symbols: pd.Series) -> pd.Series:
        mean = _rolling(values, symbols, window, _mean)
        std = _rolling(values, symbols, window, _std)
        return (values - mean) / std.where(std > 0)

    return _per_symbol(prices, "volume", fn).rename("volume_zscore")


def forward_returns(prices: pd.DataFrame, *, horizon: int = 1, lag: int = 1) -> pd.Series:
    """Label: ``adj_close[t+lag+horizon] / adj_close[t+lag] - 1`` per symbol (rows per symbol).

    For a signal known at the close of ``t``, the position is opened at the close of ``t+lag``
    and held ``horizon`` sessions. NaN where the future is not available (end of data, delisting).
    """
    horizon = _check_window("horizon", horizon)
    lag = _check_window("lag", lag, minimum=0)
    _check_prices(prices, ["adj_close"])

    def fn(values: pd.Series, symbols: pd.Series) -> pd.Series:
        g = values.groupby(symbols, sort=False)
        return g.shift(-(lag + horizon)) / g.shift(-lag) - 1.0

    return _per_symbol(prices, "adj_close", fn).rename("forward_return")


def amihud_illiquidity(prices: pd.DataFrame, *, window: int = 21) -> pd.Series:
    """Amihud (2002) illiquidity: mean over the last ``window`` sessions of
    ``|r_t| / (close_t * volume_t)``, scaled by 1e6 (absolute return per million traded).

    ``r`` is the simple ``adj_close`` return; the dollar volume uses the raw ``close`` and raw
    ``volume`` (what was traded that day). NaN until ``window`` returns exist.
    """
    window = _check_window("window", window)
    _check_prices(prices, ["adj_close", "close", "volume"])
    ordered = prices.sort_values(["symbol", "date"], kind="mergesort")
    adj = ordered["adj_close"].astype("float64")
    symbols = ordered["symbol"]
    ret = adj / adj.groupby(symbols, sort=False).shift(1) - 1.0
    dollar_volume = ordered["close"].astype("float64") * ordered["volume"].astype("float64")
    ratio = ret.abs() / dollar_volume.where(dollar_volume > 0) * 1e6
    out = _rolling(ratio, symbols, window, _mean)
    return out.reindex(prices.index).rename("amihud_illiquidity")


def distance_to_high(prices: pd.DataFrame, *, window: int = 252) -> pd.Series:
    """``adj_close[t] / max(adj_close[t-window+1 .. t]) - 1`` (<= 0): the distance to the
    trailing ``window``-session high (George and Hwang's 52-week-high signal for 252)."""
    window = _check_window("window", window)
    _check_prices(prices, ["adj_close"])

    def fn(values: pd.Series, symbols: pd.Series) -> pd.Series:
        return values / _rolling(values, symbols, window, _max) - 1.0

    return _per_symbol(prices, "adj_close", fn).rename("distance_to_high")


def label_frame(prices: pd.DataFrame, *, horizon: int = 1, lag: int = 1) -> pd.DataFrame:
    """Labels with their timing: ``date, symbol, trade_date, exit_date, forward_return``.

    ``trade_date`` is the session ``lag`` rows after ``date`` (the position is opened at its
    close), ``exit_date`` the session ``lag + horizon`` rows after (closed there): the label is
    known only at the close of ``exit_date``. Rows whose exit is beyond the data are dropped.
    Same index as ``prices`` minus the dropped rows.
    """
    ret = forward_returns(prices, horizon=horizon, lag=lag)
    ordered = prices.sort_values(["symbol", "date"], kind="mergesort")
    g = ordered["date"].groupby(ordered["symbol"], sort=False)
    out = prices[["date", "symbol"]].copy()
    out["trade_date"] = g.shift(-lag).reindex(prices.index)
    out["exit_date"] = g.shift(-(lag + horizon)).reindex(prices.index)
    out["forward_return"] = ret
    return out.dropna(subset=["exit_date", "forward_return"])


FEATURE_KINDS: dict[str, Callable[..., pd.Series]] = {
    "momentum": momentum,
    "reversal": reversal,
    "realized_volatility": realized_volatility,
    "volume_zscore": volume_zscore,
    "amihud_illiquidity": amihud_illiquidity,
    "distance_to_high": distance_to_high,
}


def lookback_sessions(spec: Sequence[Mapping[str, Any]]) -> int:
    """Sessions of history before the first output date that ``spec`` needs for full windows.

    A stage that computes features for ``[start, end]`` reads its prices from
    ``calendar.sessions_before(start, lookback_sessions(spec))`` and writes only ``[start, end]``.
    (Counted in sessions; a symbol with missing bars needs more rows than that.)
    """
    import inspect

    needed = 0
    for item in spec:
        kind = item.get("kind")
        if kind not in FEATURE_KINDS:
            raise ValueError(f"Unknown feature kind {kind!r}; known kinds: {sorted(FEATURE_KINDS)}.")
        default = inspect.signature(FEATURE_KINDS[kind]).parameters.get("window")
        window = item.get("window", default.default if default is not None else 1)
        needed = max(needed, int(window))
    return needed


def _run_spec(prices: pd.DataFrame, item: Mapping[str, Any]) -> tuple[str, pd.Series]:
    if not isinstance(item, Mapping) or "name" not in item or "kind" not in item:
        raise ValueError(
            f"Each feature spec must be a mapping with 'name' and 'kind', got {item!r}; e.g. "
            "{'name': 'mom_20', 'kind': 'momentum', 'window': 20}."
        )
    name, kind = str(item["name"]), item["kind"]
    if kind not in FEATURE_KINDS:
        raise ValueError(
            f"Unknown feature kind {kind!r} in spec {name!r}; known kinds: {sorted(FEATURE_KINDS)}."
        )
    params = {k: v for k, v in item.items() if k not in ("name", "kind")}
    try:
        values = FEATURE_KINDS[kind](prices, **params)
    except TypeError as exc:
        raise ValueError(f"Bad parameters {params} for feature {name!r} ({kind}): {exc}") from exc
    return name, values


def compute_features(prices: pd.DataFrame, *, spec: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Compute several features; return ``date, symbol, <name>...`` aligned to ``prices`` rows.

    ``spec`` is a list like ``[{"name": "mom_20", "kind": "momentum", "window": 20}, ...]``;
    every key other than ``name``/``kind`` is passed to the function of that kind
    (see ``FEATURE_KINDS``). Names must be unique and not ``date``/``symbol``.
    """
    if isinstance(spec, Mapping) or not isinstance(spec, Sequence) or len(spec) == 0:
        raise ValueError("spec must be a non-empty list of feature specs (dicts).")
    _check_prices(prices, [])
    out = prices[["date", "symbol"]].copy()
    for item in spec:
        name, values = _run_spec(prices, item)
        if name in out.columns:
            raise ValueError(f"Feature name {name!r} is duplicated or reserved; rename it.")
        out[name] = values
    return out


def at_session_close(
    frame: pd.DataFrame, *, calendar: str = "XNYS", known_after: pd.Timedelta | None = None
) -> pd.DataFrame:
    """``frame`` plus ``event_time`` (the session close of ``date``, UTC) and ``known_time``.

    ``known_time`` is the close plus ``known_after`` (default 0: a value computed from closing
    prices is known at the close). This is the time stamp of every daily feature view.
    """
    from qsdk.quant.calendar import session_closes

    out = frame.copy()
    out["event_time"] = session_closes(out["date"], calendar=calendar)
    out["known_time"] = out["event_time"] + (known_after or pd.Timedelta(0))
    return out
