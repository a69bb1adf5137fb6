"""Market data sources. No network: real data comes from packages that ship it.

``bokeh`` is the Quandl WIKI daily history (public domain) shipped by ``bokeh-sampledata``:
unadjusted OHLCV plus the source's split- and dividend-adjusted close for AAPL, FB, GOOG, IBM
and MSFT, 2000-03-01 to 2013-03-01. ``synthetic`` is the seeded generator in
:mod:`qsdk.quant.synthetic`, for tests and scale benchmarks.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import pandas as pd

Source = Literal["bokeh", "synthetic"]
BOKEH_SYMBOLS = ("AAPL", "FB", "GOOG", "IBM", "MSFT")
PRICE_COLUMNS = ["date", "symbol", "open", "high", "low", "close", "volume", "adj_close"]
SYNTHETIC_HISTORY_START = "2000-01-03"


def load_bokeh(symbols: list[str] | None = None, *, start: str | dt.date, end: str | dt.date) -> pd.DataFrame:
    """Daily bars of ``symbols`` (default: all five) between ``start`` and ``end`` inclusive."""
    from bokeh_sampledata import stocks

    symbols = list(symbols or BOKEH_SYMBOLS)
    unknown = sorted(set(symbols) - set(BOKEH_SYMBOLS))
    if unknown:
        raise ValueError(f"bokeh sample data has no symbol(s) {unknown}; available: {', '.join(BOKEH_SYMBOLS)}")
    frames = []
    for symbol in symbols:
        raw = getattr(stocks, symbol)
        frame = pd.DataFrame({k: raw[k] for k in PRICE_COLUMNS if k not in ("symbol",)})
        frame["symbol"] = symbol
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    data["date"] = pd.to_datetime(data["date"])
    data["volume"] = data["volume"].astype("int64")
    for col in ("open", "high", "low", "close", "adj_close"):
        data[col] = data[col].astype("float64")
    mask = (data["date"] >= pd.Timestamp(start)) & (data["date"] <= pd.Timestamp(end))
    return data.loc[mask, PRICE_COLUMNS].sort_values(["symbol", "date"]).reset_index(drop=True)


def load(
    source: Source,
    *,
    start: str,
    end: str,
    symbols: list[str] | None = None,
    n_symbols: int = 20,
    seed: int = 0,
    signal_strength: float = 0.0,
    history_start: str = SYNTHETIC_HISTORY_START,
    faults: list[str] | None = None,
) -> pd.DataFrame:
    """Bars from ``source`` for [start, end].

    ``faults`` (synthetic only): vendor faults to plant, for tests of the data checks (see
    :func:`qsdk.quant.synthetic.inject_faults`: ``zero_price``, ``negative_price``,
    ``missing_session``, ``nan_burst``).

    The synthetic market is generated from ``history_start`` (prefix-stable, adjustment
    anchored at each symbol's first session: see :mod:`qsdk.quant.synthetic`), so every
    partition of a backfill, and every later daily run, sees one and the same market.
    ``signal_strength`` plants the signal of :func:`load_signals` into the synthetic returns.
    """
    if source == "bokeh":
        if faults:
            raise ValueError("faults= plants errors into synthetic data only; use source='synthetic'")
        return load_bokeh(symbols, start=start, end=end)
    if source == "synthetic":
        from qsdk.quant.synthetic import inject_faults

        panel = _synthetic_panel(start=start, end=end, n_symbols=n_symbols, seed=seed,
                                 signal_strength=signal_strength, history_start=history_start)
        if panel is None:
            return _empty(PRICE_COLUMNS)
        bars = _slice(panel.prices, start=start, end=end, symbols=symbols)[PRICE_COLUMNS]
        return inject_faults(bars, faults) if faults else bars
    raise ValueError(f"unknown source {source!r}; use 'bokeh' or 'synthetic'")


def coverage(source: Source, *, history_start: str = SYNTHETIC_HISTORY_START) -> tuple[dt.date, dt.date | None]:
    """The first and last date ``source`` has bars for; the last is ``None`` for the synthetic
    market, which is generated for any date from ``history_start`` on."""
    if source == "bokeh":
        dates = load_bokeh(start="1900-01-01", end="2100-12-31")["date"]
        return dates.min().date(), dates.max().date()
    if source == "synthetic":
        return dt.date.fromisoformat(history_start), None
    raise ValueError(f"unknown source {source!r}; use 'bokeh' or 'synthetic'")


def require_bars(bars: pd.DataFrame, *, source: Source, start: str, end: str,
                 history_start: str = SYNTHETIC_HISTORY_START) -> None:
    """Raise ``ValueError`` when ``bars`` is empty, naming the dates ``source`` covers.

    A daily run for a date the source does not cover must fail where the cause is, at ingest,
    not stages later as "no label became known".
    """
    if len(bars):
        return
    first, last = coverage(source, history_start=history_start)
    covers = f"{first} to {last}" if last else f"every session from {first}"
    raise ValueError(f"source {source!r} has no bars between {start} and {end}: it covers {covers}; "
                     "pick dates inside that range")


def load_signals(
    source: Source,
    *,
    start: str,
    end: str,
    symbols: list[str] | None = None,
    n_symbols: int = 20,
    seed: int = 0,
    signal_strength: float = 0.0,
    history_start: str = SYNTHETIC_HISTORY_START,
) -> pd.DataFrame:
    """A vendor's daily alpha signal: columns ``date, symbol, value``, published at the close of
    ``date``.

    ``synthetic``: the generator's planted signal (same arguments as :func:`load` give the
    matching market; it predicts the return from close ``date+1`` to close ``date+2`` with
    strength ``signal_strength``, and is pure noise at 0). ``bokeh`` ships no signal: an
    empty frame.
    """
    if source == "bokeh":
        return _empty(["date", "symbol", "value"])
    if source == "synthetic":
        panel = _synthetic_panel(start=start, end=end, n_symbols=n_symbols, seed=seed,
                                 signal_strength=signal_strength, history_start=history_start)
        if panel is None:
            return _empty(["date", "symbol", "value"])
        return _slice(panel.signal, start=start, end=end, symbols=symbols)
    raise ValueError(f"unknown source {source!r}; use 'bokeh' or 'synthetic'")


def _empty(columns: list[str]) -> pd.DataFrame:
    types = {"date": "datetime64[ns]", "symbol": "str", "volume": "int64"}
    return pd.DataFrame({c: pd.Series([], dtype=types.get(c, "float64")) for c in columns})


def _synthetic_panel(*, start: str, end: str, n_symbols: int, seed: int, signal_strength: float, history_start: str):
    """The synthetic market from ``history_start`` through ``end`` (at least the generator's
    minimum length: prefix stability makes the extra sessions harmless); None before it starts."""
    from qsdk.quant.calendar import sessions
    from qsdk.quant.synthetic import MIN_SESSIONS, generate_panel

    if pd.Timestamp(end) < pd.Timestamp(history_start):
        return None
    first_sessions = sessions(history_start, pd.Timestamp(history_start) + pd.Timedelta(days=3 * MIN_SESSIONS))
    until = max(pd.Timestamp(end), first_sessions[MIN_SESSIONS - 1])
    return generate_panel(n_symbols=n_symbols, start=history_start, end=until, seed=seed,
                          signal_strength=signal_strength, adjustment_anchor="first",
                          rows_from=max(pd.Timestamp(start), pd.Timestamp(history_start)))


def _slice(frame: pd.DataFrame, *, start: str, end: str, symbols: list[str] | None) -> pd.DataFrame:
    keep = (frame["date"] >= pd.Timestamp(start)) & (frame["date"] <= pd.Timestamp(end))
    if symbols:
        keep &= frame["symbol"].isin(symbols)
    return frame[keep].reset_index(drop=True)
