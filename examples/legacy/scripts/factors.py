"""Momentum and volatility factors from the clean prices, z-scored per day."""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `scripts.common` imports
from scripts.common import winsorize, zscore  # noqa: E402

PRICES = "examples/legacy/out/prices_clean.parquet"
OUTPUT = "examples/legacy/out/factors.parquet"
MOMENTUM_WINDOW = 20  # sessions of past return in the momentum factor
VOLATILITY_WINDOW = 60  # sessions in the realised volatility
WINSOR_LIMIT = 3.0  # clip each day's cross-section at this many standard deviations

prices = pd.read_parquet(PRICES)
prices = prices.sort_values(["symbol", "date"])

# trailing momentum and volatility, per symbol
grouped = prices.groupby("symbol")["log_return"]
prices["momentum"] = grouped.transform(lambda r: r.rolling(MOMENTUM_WINDOW).sum())
prices["volatility"] = grouped.transform(lambda r: r.rolling(VOLATILITY_WINDOW).std())

# cross-sectional scores, per day
factors = prices.dropna(subset=["momentum", "volatility"])[["date", "symbol", "momentum", "volatility"]].copy()
for name in ("momentum", "volatility"):
    by_day = factors.groupby("date")[name]
    factors[f"{name}_z"] = by_day.transform(lambda v: zscore(winsorize(v, WINSOR_LIMIT)))

factors.to_parquet(OUTPUT, index=False)
print(f"wrote {len(factors)} factor rows")
