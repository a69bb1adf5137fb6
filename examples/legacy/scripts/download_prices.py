#!/usr/bin/env python
"""Load the vendor's daily price file, clean it and save it for the factor job.

Run from the repository root:

    python examples/legacy/scripts/download_prices.py --start 2011-01-01 --end 2012-12-31
"""
import argparse
import logging

import numpy as np
import pandas as pd

log = logging.getLogger("download_prices")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", default="examples/legacy/data/prices.csv",
                        help="vendor file (one row per ticker and day)")
    parser.add_argument("--output", default="examples/legacy/out/prices_clean.parquet",
                        help="where the clean prices go")
    parser.add_argument("--start", default="2011-01-01", help="first day to keep")
    parser.add_argument("--end", default="2012-12-31", help="last day to keep")
    parser.add_argument("--symbols", nargs="+", help="tickers to keep (default: all)")
    parser.add_argument("--min-volume", type=int, default=1000, help="drop days with fewer shares traded")
    parser.add_argument("--gaps", choices=["ffill", "drop"], default="drop",
                        help="what to do with missing closes (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="log every step")
    return parser.parse_args()


def clean(raw, start, end, symbols, min_volume, gaps):
    # the vendor's headers are title case with spaces
    df = raw.rename(columns=lambda c: c.strip().lower().replace(" ", "_")).rename(columns={"ticker": "symbol"})
    df["date"] = pd.to_datetime(df["date"])
    df = df[(df["date"] >= start) & (df["date"] <= end)]
    if symbols:
        df = df[df["symbol"].isin(symbols)]
    df = df[df["volume"] >= min_volume]
    df = df.sort_values(["symbol", "date"])
    if gaps == "ffill":
        df["close"] = df.groupby("symbol")["close"].ffill()
    else:
        df = df.dropna(subset=["close"])
    df["adj_factor"] = df["adj_close"] / df["close"]
    df["log_return"] = np.log(df["adj_close"]).groupby(df["symbol"]).diff()
    return df.reset_index(drop=True)


def main(args):
    if args.verbose:
        logging.basicConfig(level=logging.INFO)
    raw = pd.read_csv(args.input)
    log.info("read %d rows from %s", len(raw), args.input)
    prices = clean(raw, args.start, args.end, args.symbols, args.min_volume, args.gaps)

    # one file for the whole history: the factor job reads it
    prices.to_parquet(args.output, index=False)
    print(f"wrote {len(prices)} rows")


if __name__ == "__main__":
    main(parse_args())
