"""Per-symbol summary for the weekly research note: returns, risk and the latest factor scores."""
import click
import numpy as np
import pandas as pd


@click.command()
@click.option("--prices", default="examples/legacy/out/prices_clean.parquet", help="clean prices")
@click.option("--factors", default="examples/legacy/out/factors.parquet", help="factor scores")
@click.option("--output", default="examples/legacy/out/report.csv", help="the report")
@click.option("--trading-days", default=252, type=int, help="sessions in a year, to annualise")
def main(prices, factors, output, trading_days):
    px = pd.read_parquet(prices)
    fx = pd.read_parquet(factors)

    # annualised return and volatility over the whole history
    stats = px.groupby("symbol")["log_return"].agg(["mean", "std", "count"]).reset_index()
    stats["annual_return"] = np.expm1(stats["mean"] * trading_days)
    stats["annual_volatility"] = stats["std"] * np.sqrt(trading_days)

    # the last day's scores
    last = fx[fx["date"] == fx["date"].max()][["symbol", "momentum_z", "volatility_z"]]
    report = stats.merge(last, on="symbol", how="left")[
        ["symbol", "count", "annual_return", "annual_volatility", "momentum_z", "volatility_z"]]
    report = report.rename(columns={"count": "sessions"})
    report.to_csv(output, index=False)
    print(report.to_string(index=False))


if __name__ == "__main__":
    main()
