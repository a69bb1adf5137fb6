"""Split and dividend adjustment from a source's unadjusted close and adjusted close.

The source's adjusted close is adjusted backwards from its latest date (Yahoo/Quandl
convention), so ``factor_t = adj_close_t / close_t`` is constant between corporate actions and
jumps on an ex-date. On ex-date ``t`` the jump ``m = factor_t / factor_{t-1}`` is:

* a split ``n:d`` when ``m`` is within ``tolerance`` of ``n/d`` for small integers (2:1 -> 2.0);
* otherwise, when ``m - 1 > min_dividend``, a cash dividend ``D = close_{t-1} * (1 - 1/m)``
  (from ``factor_{t-1} = factor_t * (1 - D / close_{t-1})``).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd

_SPLIT_RATIOS = sorted({float(Fraction(n, d)) for n in range(1, 11) for d in range(1, 11)
                        if Fraction(n, d) >= Fraction(5, 4)})


def adjustment_factors(prices: pd.DataFrame) -> pd.Series:
    """``adj_close / close`` per row (index aligned with ``prices``)."""
    return prices["adj_close"] / prices["close"]


def corporate_actions(prices: pd.DataFrame, *, tolerance: float = 2e-3, min_dividend: float = 2e-4) -> pd.DataFrame:
    """Detected splits and dividends: columns date, symbol, action, ratio, amount.

    ``prices`` needs date, symbol, close, adj_close; rows of one symbol in date order.
    ``ratio`` is the factor jump ``m``; ``amount`` is the cash dividend per share (NaN for splits).
    """
    df = prices.sort_values(["symbol", "date"]).reset_index(drop=True)
    factor = adjustment_factors(df)
    prev_factor = factor.groupby(df["symbol"]).shift(1)
    prev_close = df["close"].groupby(df["symbol"]).shift(1)
    jump = factor / prev_factor
    out = []
    for i in np.flatnonzero((jump - 1).abs().to_numpy() > min_dividend):
        m = float(jump.iloc[i])
        split = _nearest_split(m, tolerance)
        if split is not None:
            out.append((df["date"].iloc[i], df["symbol"].iloc[i], "split", split, np.nan))
        elif m > 1:
            out.append((df["date"].iloc[i], df["symbol"].iloc[i], "dividend", m,
                        float(prev_close.iloc[i]) * (1 - 1 / m)))
    return pd.DataFrame(out, columns=["date", "symbol", "action", "ratio", "amount"]).astype(
        {"action": "str", "ratio": "float64", "amount": "float64"}
    )


def _nearest_split(m: float, tolerance: float) -> float | None:
    best = min(_SPLIT_RATIOS, key=lambda r: abs(r - m))
    return best if abs(best - m) / best <= tolerance else None


def adjusted_prices(prices: pd.DataFrame) -> pd.DataFrame:
    """``prices`` plus adj_factor, adj_open, adj_high, adj_low (adj_close kept from the source)."""
    out = prices.copy()
    out["adj_factor"] = adjustment_factors(out)
    for col in ("open", "high", "low"):
        out[f"adj_{col}"] = out[col] * out["adj_factor"]
    return out
