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
    history_start: str = "2000-01-03",
) -> pd.DataFrame:
    """Bars from ``source`` for [start, end]. The synthetic history is generated from
    ``history_start`` so that every partition of a backfill sees the same path."""
    if source == "bokeh":
        return load_bokeh(symbols, start=start, end=end)
    if source == "synthetic":
        from qsdk.quant.synthetic import generate_prices

        data = generate_prices(n_symbols=n_symbols, start=history_start, end=end, seed=seed)
        data = data[(data["date"] >= pd.Timestamp(start)) & (data["date"] <= pd.Timestamp(end))]
        if symbols:
            data = data[data["symbol"].isin(symbols)]
        return data[PRICE_COLUMNS].reset_index(drop=True)
    raise ValueError(f"unknown source {source!r}; use 'bokeh' or 'synthetic'")
