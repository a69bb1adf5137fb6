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


def _rolling(values: pd.Series, symbols: pd.Series, window: int) -> Any:
    """Per-symbol rolling window (a pandas RollingGroupBy) over full windows only."""
    return values.groupby(symbols, sort=False).rolling(window, min_periods=window)


def _unstack_group(result: pd.Series) -> pd.Series:
    """Drop the group level that ``groupby(...).rolling(...)`` prepends to the index."""
    return result.reset_index(level=0, drop=True)


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
        return _unstack_group(_rolling(log_ret, symbols, window).std(ddof=1)) * scale

    return _per_symbol(prices, "adj_close", fn).rename("realized_volatility")


def volume_zscore(prices: pd.DataFrame, *, window: int = 20) -> pd.Series:
    """``(volume[t] - mean) / std`` over the trailing ``window`` sessions *including* ``t``.

    Uses raw ``volume`` (ddof=1). NaN until the window is full or when the window's std is 0.
    """
    window = _check_window("window", window, minimum=2)
    _check_prices(prices, ["volume"])

    def fn(values: pd.Series, symbols: pd.Series) -> pd.Series:
        mean = _unstack_group(_rolling(values, symbols, window).mean())
        std = _unstack_group(_rolling(values, symbols, window).std(ddof=1))
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


FEATURE_KINDS: dict[str, Callable[..., pd.Series]] = {
    "momentum": momentum,
    "reversal": reversal,
    "realized_volatility": realized_volatility,
    "volume_zscore": volume_zscore,
}


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
