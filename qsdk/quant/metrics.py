"""Alpha evaluation: information coefficient, quantile analysis, turnover, long/short returns.

Conventions follow alphalens (Quantopian) unless stated otherwise.

**Input frame.** Every function takes one *long* frame ``df`` with one row per
(``date``, ``symbol``) and the columns:

* ``date``, ``symbol`` -- keys;
* ``factor`` -- the score known at the close of ``date``;
* ``forward_return`` -- the return earned by acting on that score, i.e. the label from
  :func:`qsdk.quant.features.forward_returns` (qsdk default: trade at close ``date+1``, return
  from close ``date+1`` to close ``date+2``).

Build it with :func:`merge_factor_returns`. Rows with a missing ``factor`` or ``forward_return``
are dropped before any computation (alphalens' "clean factor data"); turnover and rank
autocorrelation only need ``factor``. All per-date outputs are indexed by the *signal* date.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

FACTOR = "factor"
RETURN = "forward_return"
Ties = Literal["drop", "first"]


# --------------------------------------------------------------------------- input handling


def merge_factor_returns(
    factor: pd.DataFrame,
    returns: pd.DataFrame,
    *,
    factor_column: str = "value",
    return_column: str = "forward_return",
) -> pd.DataFrame:
    """Inner-join a factor frame and a returns frame on (date, symbol).

    Returns columns ``date, symbol, factor, forward_return`` (rows with NaN in either value are
    dropped), sorted by (date, symbol), with a fresh RangeIndex.
    """
    for name, frame, col in (
        ("factor", factor, factor_column),
        ("returns", returns, return_column),
    ):
        _require(frame, name, ["date", "symbol", col])
    left = factor[["date", "symbol", factor_column]].rename(columns={factor_column: FACTOR})
    right = returns[["date", "symbol", return_column]].rename(columns={return_column: RETURN})
    merged = left.merge(right, on=["date", "symbol"], how="inner", validate="one_to_one")
    merged = merged.dropna(subset=[FACTOR, RETURN])
    return merged.sort_values(["date", "symbol"], kind="mergesort").reset_index(drop=True)


def _require(df: pd.DataFrame, name: str, columns: list[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name} is missing columns {missing}; expected a long frame with columns "
            f"{columns} (see qsdk.quant.metrics.merge_factor_returns)."
        )
    if df.duplicated(["date", "symbol"]).any():
        raise ValueError(f"{name} has duplicated (date, symbol) rows; keep one row per pair.")


def _clean(df: pd.DataFrame, *, with_returns: bool = True) -> pd.DataFrame:
    """Validate and drop rows with a missing factor (and forward return if ``with_returns``)."""
    cols = ["date", "symbol", FACTOR] + ([RETURN] if with_returns else [])
    _require(df, "df", cols)
    return df[cols].dropna(subset=cols[2:]).reset_index(drop=True)


def _check_quantiles(quantiles: int) -> int:
    if isinstance(quantiles, bool) or not isinstance(quantiles, int | np.integer) or quantiles < 2:
        raise ValueError(f"quantiles must be an integer >= 2, got {quantiles!r}.")
    return int(quantiles)


def _check_cost(cost_bps: float) -> None:
    if not math.isfinite(float(cost_bps)) or cost_bps < 0:
        raise ValueError(f"cost_bps must be a finite number >= 0, got {cost_bps!r}.")


def _rowwise_pearson(x: pd.Series, y: pd.Series, keys: pd.Series) -> pd.Series:
    """Pearson correlation of x and y within each key; NaN if < 2 rows or x or y constant."""
    gx, gy = x.groupby(keys), y.groupby(keys)
    xc, yc = x - gx.transform("mean"), y - gy.transform("mean")
    cov = (xc * yc).groupby(keys).sum()
    var_x, var_y = (xc * xc).groupby(keys).sum(), (yc * yc).groupby(keys).sum()
    constant = (gx.max() == gx.min()) | (gy.max() == gy.min())
    ok = (gx.size() >= 2) & ~constant
    return (cov / np.sqrt(var_x * var_y)).where(ok)


# --------------------------------------------------------------------------- IC


def information_coefficient(
    df: pd.DataFrame, *, method: Literal["pearson", "spearman"] = "spearman"
) -> pd.Series:
    """Per-date cross-sectional correlation between ``factor`` and ``forward_return``.

    ``spearman`` (alphalens' default) is the Pearson correlation of within-date average ranks.
    Dates with fewer than 2 valid pairs, or a constant factor or return, are dropped.
    Returns a Series named ``ic`` indexed by date.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}.")
    d = _clean(df)
    x, y = d[FACTOR].astype("float64"), d[RETURN].astype("float64")
    if method == "spearman":
        x, y = x.groupby(d["date"]).rank(), y.groupby(d["date"]).rank()
    ic = _rowwise_pearson(x, y, d["date"]).dropna()
    ic.index.name = "date"
    return ic.rename("ic")


@dataclass(frozen=True)
class ICSummary:
    """Summary of an IC series: ``mean``; ``std`` (sample, ddof=1); ``ir = mean / std``;
    ``t_stat = mean / (std / sqrt(n))``; two-sided ``p_value`` of that t statistic with ``n - 1``
    degrees of freedom (as ``scipy.stats.ttest_1samp``, like alphalens); ``n`` = number of dates.
    ``ir``, ``t_stat`` and ``p_value`` are NaN when ``std == 0``."""

    mean: float
    std: float
    ir: float
    t_stat: float
    p_value: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ic_summary(ic: pd.Series) -> ICSummary:
    """Summarize a per-date IC series (NaNs ignored); needs at least 2 observations."""
    values = pd.Series(ic, dtype="float64").dropna().to_numpy()
    n = len(values)
    if n < 2:
        raise ValueError(f"ic_summary needs at least 2 non-missing IC values, got {n}.")
    mean, std = float(values.mean()), float(values.std(ddof=1))
    if std == 0:
        return ICSummary(mean, std, math.nan, math.nan, math.nan, n)
    t_stat = mean / (std / math.sqrt(n))
    from scipy import stats  # imported here: scipy costs ~0.5 s at import, and only this needs it

    p_value = float(2.0 * stats.t.sf(abs(t_stat), df=n - 1))
    return ICSummary(mean, std, mean / std, t_stat, p_value, n)


# --------------------------------------------------------------------------- quantiles


def quantize(df: pd.DataFrame, *, quantiles: int = 5, ties: Ties = "drop") -> pd.Series:
    """Per-date factor quantile labels ``1..quantiles`` (1 = lowest factor), like alphalens.

    Per date: ``pd.qcut(factor, quantiles, labels=False) + 1`` (equal-count bins). Rows with a
    missing factor, and every row of a date with fewer than ``quantiles`` valid factor values,
    get ``<NA>``. Ties: with ``ties="drop"`` a date whose ties make the bin edges non-unique is
    left unlabeled (alphalens raises or, with ``no_raise``, drops it); ``ties="first"`` cuts the
    ranks ``factor.rank(method="first")`` instead, breaking ties by row order.
    Returns an ``Int64`` Series named ``quantile`` aligned to ``df.index``.

    Vectorized over dates (no per-date ``qcut`` call): the edges are the per-date linear
    quantiles at ``0, 1/q, ..., 1``, and a value's label is the number of edges strictly below
    it (at least 1): ``qcut``'s right-closed bins with the lowest value included.
    """
    quantiles = _check_quantiles(quantiles)
    if ties not in ("drop", "first"):
        raise ValueError(f"ties must be 'drop' or 'first', got {ties!r}.")
    _require(df, "df", ["date", "symbol", FACTOR])
    out = pd.Series(pd.NA, index=df.index, dtype="Int64", name="quantile")
    values = df[FACTOR].astype("float64")
    valid = values.notna().to_numpy()
    if not valid.any():
        return out
    x, dates = values[valid], df["date"][valid]
    if ties == "first":
        x = x.groupby(dates, sort=False).rank(method="first")
    probs = np.linspace(0.0, 1.0, quantiles + 1)
    # as pd.qcut does (pandas >= 3): round a probability up when it is not exact in base 2
    np.putmask(probs, quantiles * probs != np.arange(quantiles + 1), np.nextafter(probs, 1))
    edges = x.groupby(dates, sort=True).quantile(probs).unstack()  # date x (q + 1)
    counts = x.groupby(dates, sort=True).size()
    usable = (counts >= quantiles) & (np.diff(edges.to_numpy(), axis=1) > 0).all(axis=1)
    row_edges = edges.to_numpy()[edges.index.get_indexer(dates)]
    labels = np.maximum((row_edges < x.to_numpy()[:, None]).sum(axis=1), 1)
    keep = usable.reindex(dates).to_numpy()
    out.iloc[np.flatnonzero(valid)[keep]] = labels[keep]
    return out


def _with_quantiles(
    df: pd.DataFrame, *, quantiles: int, ties: Ties, with_returns: bool = True
) -> pd.DataFrame:
    d = _clean(df, with_returns=with_returns)
    d["quantile"] = quantize(d, quantiles=quantiles, ties=ties)
    return d.dropna(subset=["quantile"])


@dataclass(frozen=True)
class QuantileReturns:
    """``by_date``: mean forward return per (date, quantile) -- index date, columns 1..q.
    ``mean``: equal-weighted average over dates of ``by_date`` (NaNs skipped), index 1..q.
    (alphalens' ``by_date=False`` pools all rows instead; the two agree when each quantile holds
    the same number of names every date.)"""

    by_date: pd.DataFrame
    mean: pd.Series


def quantile_returns(
    df: pd.DataFrame, *, quantiles: int = 5, ties: Ties = "drop"
) -> QuantileReturns:
    """Equal-weighted mean ``forward_return`` of each factor quantile (see :func:`quantize`)."""
    return _quantile_returns(_with_quantiles(df, quantiles=quantiles, ties=ties), quantiles)


def _quantile_returns(d: pd.DataFrame, quantiles: int) -> QuantileReturns:
    by_date = d.groupby(["date", "quantile"])[RETURN].mean().unstack("quantile")
    by_date = by_date.reindex(columns=pd.Index(range(1, quantiles + 1), name="quantile"))
    return QuantileReturns(by_date=by_date, mean=by_date.mean().rename("mean_return"))


def top_minus_bottom(df: pd.DataFrame, *, quantiles: int = 5, ties: Ties = "drop") -> pd.Series:
    """Per-date spread: mean return of quantile ``quantiles`` minus that of quantile 1.

    Dates where either quantile is empty are dropped.
    """
    by_date = quantile_returns(df, quantiles=quantiles, ties=ties).by_date
    return (by_date[quantiles] - by_date[1]).dropna().rename("top_minus_bottom")


def quantile_turnover(
    df: pd.DataFrame, *, quantile: int, quantiles: int = 5, ties: Ties = "drop"
) -> pd.Series:
    """Share of names in ``quantile`` on date t that were not in it on the previous date.

    alphalens' definition ``|S_t - S_prev| / |S_t|``, where the previous date is the previous
    date on which the quantile was non-empty. Only ``factor`` is needed (NaN factors dropped).
    The first date is NaN. Returns a Series named ``turnover`` indexed by date.
    """
    quantiles = _check_quantiles(quantiles)
    if not 1 <= quantile <= quantiles:
        raise ValueError(f"quantile must be in 1..{quantiles}, got {quantile!r}.")
    d = _with_quantiles(df, quantiles=quantiles, ties=ties, with_returns=False)
    return _quantile_turnover(d, quantile)


def _quantile_turnover(d: pd.DataFrame, quantile: int) -> pd.Series:
    members = d.loc[d["quantile"] == quantile, ["date", "symbol"]]
    if members.empty:
        return pd.Series([], dtype="float64", name="turnover", index=pd.Index([], name="date"))
    dates = pd.Index(members["date"].drop_duplicates().sort_values())
    prev_of = pd.Series(dates[:-1], index=dates[1:])
    previous = pd.MultiIndex.from_arrays([members["date"].map(prev_of), members["symbol"]])
    current = pd.MultiIndex.from_frame(members[["date", "symbol"]])
    is_new = pd.Series(~previous.isin(current), index=members.index)
    turnover = is_new.groupby(members["date"]).mean()
    turnover.loc[dates[:1]] = np.nan
    turnover.index.name = "date"
    return turnover.astype("float64").rename("turnover")


def factor_rank_autocorrelation(df: pd.DataFrame) -> pd.Series:
    """Spearman correlation of the factor between each date and the previous date.

    Computed over the names present (non-NaN factor) on both dates, re-ranked among those common
    names. (alphalens ranks each full cross-section before correlating; both agree when the
    universe does not change.) NaN for the first date and when < 2 common names. Returns a Series
    named ``factor_rank_autocorrelation`` indexed by date.
    """
    d = _clean(df, with_returns=False)
    wide = d.pivot(index="date", columns="symbol", values=FACTOR).sort_index()
    prev = wide.shift(1)
    both = wide.notna() & prev.notna()
    stacked = pd.DataFrame(
        {
            "now": wide.where(both).stack(),
            "before": prev.where(both).stack(),
        }
    ).dropna()
    keys = stacked.index.get_level_values("date")
    ranks_now = stacked["now"].groupby(keys).rank()
    ranks_before = stacked["before"].groupby(keys).rank()
    rho = _rowwise_pearson(ranks_now, ranks_before, pd.Series(keys, index=stacked.index))
    rho = rho.reindex(wide.index)
    rho.index.name = "date"
    return rho.astype("float64").rename("factor_rank_autocorrelation")


# --------------------------------------------------------------------------- portfolios


def _leg_turnover(weights: pd.DataFrame) -> pd.Series:
    """One-way turnover per date: sum of weight increases vs the previous row (first row vs 0)."""
    change = weights.diff()
    change.iloc[0] = weights.iloc[0]
    return change.clip(lower=0.0).sum(axis=1)


def long_short_returns(
    df: pd.DataFrame, *, quantiles: int = 5, cost_bps: float = 0.0, ties: Ties = "drop"
) -> pd.DataFrame:
    """Equal-weight long top quantile / short bottom quantile, rebalanced every date.

    Per date t (dates where both legs are non-empty): ``long`` = mean ``forward_return`` of the
    top quantile, ``short`` = mean of the bottom quantile, ``gross = long - short``.
    Leg weights are ``1/n`` per name (each leg has gross weight 1). The one-way turnover of a
    leg is ``TO_t = sum_i max(w_{t,i} - w_{prev,i}, 0)`` (the fraction of the leg bought; equals
    ``0.5 * sum_i |w_{t,i} - w_{prev,i}|``), with ``prev`` the previous output date and ``w = 0``
    before the first date (so the first date has ``TO = 1`` per leg). Then
    ``turnover = TO_long + TO_short``, ``cost = cost_bps / 10_000 * turnover``,
    ``net = gross - cost``. Weight drift between rebalances is ignored.
    Returns a DataFrame indexed by date with columns long, short, gross, turnover, cost, net.
    """
    quantiles = _check_quantiles(quantiles)
    _check_cost(cost_bps)
    return _long_short(_with_quantiles(df, quantiles=quantiles, ties=ties), quantiles, cost_bps)


def _long_short(d: pd.DataFrame, quantiles: int, cost_bps: float) -> pd.DataFrame:
    top, bottom = d[d["quantile"] == quantiles], d[d["quantile"] == 1]
    dates = pd.Index(sorted(set(top["date"]) & set(bottom["date"])), name="date")
    if len(dates) == 0:
        raise ValueError(
            f"No date has both a top and a bottom quantile; each date needs at least {quantiles} "
            "names with a factor and a forward return (or use fewer quantiles / ties='first')."
        )
    out = pd.DataFrame(index=dates)
    out["long"] = top.groupby("date")[RETURN].mean().reindex(dates)
    out["short"] = bottom.groupby("date")[RETURN].mean().reindex(dates)
    out["gross"] = out["long"] - out["short"]
    turnover = pd.Series(0.0, index=dates)
    for leg in (top, bottom):
        leg = leg[leg["date"].isin(dates)]
        weight = 1.0 / leg.groupby("date")["symbol"].transform("size")
        wide = weight.groupby([leg["date"], leg["symbol"]]).sum().unstack(fill_value=0.0)
        turnover = turnover + _leg_turnover(wide.reindex(dates, fill_value=0.0))
    out["turnover"] = turnover
    out["cost"] = float(cost_bps) / 10_000.0 * out["turnover"]
    out["net"] = out["gross"] - out["cost"]
    return out


@dataclass(frozen=True)
class PerformanceSummary:
    """Performance of a periodic return series (zero risk-free rate).

    ``annualized_return`` = arithmetic ``mean * periods_per_year``;
    ``cagr`` = geometric ``(1 + total_return) ** (periods_per_year / n) - 1``;
    ``annualized_volatility`` = ``std(ddof=1) * sqrt(periods_per_year)``;
    ``sharpe`` = ``mean / std * sqrt(periods_per_year)`` (NaN if std is 0 or n < 2);
    ``max_drawdown`` = min over time of ``W_t / max_{s<=t} W_s - 1`` (<= 0) for the wealth curve
    ``W = (1 + r).cumprod()`` started from ``W = 1`` before the first return (as empyrical);
    ``peak_date``/``trough_date``: index labels of the drawdown's peak and trough (``peak_date``
    is None when the peak is the starting capital; both None when there is no drawdown);
    ``recovery_date``: first label after the trough where W regains the peak (None if never).
    """

    n: int
    total_return: float
    annualized_return: float
    cagr: float
    annualized_volatility: float
    sharpe: float
    max_drawdown: float
    peak_date: Hashable | None
    trough_date: Hashable | None
    recovery_date: Hashable | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _drawdown(r: pd.Series) -> tuple[float, Hashable | None, Hashable | None, Hashable | None]:
    wealth = np.concatenate([[1.0], np.cumprod(1.0 + r.to_numpy())])
    drawdown = wealth / np.maximum.accumulate(wealth) - 1.0
    trough = int(np.argmin(drawdown))
    max_dd = float(drawdown[trough])
    if max_dd >= 0.0:
        return 0.0, None, None, None
    peak = int(np.argmax(wealth[: trough + 1]))
    labels = [None, *r.index]
    recovered = np.flatnonzero(wealth[trough:] >= wealth[peak])
    recovery = labels[trough + int(recovered[0])] if len(recovered) else None
    return max_dd, labels[peak], labels[trough], recovery


def performance_summary(returns: pd.Series, *, periods_per_year: int = 252) -> PerformanceSummary:
    """Summarize simple periodic returns (e.g. the ``net`` column of long_short_returns).

    NaN returns are dropped. See :class:`PerformanceSummary` for the exact definitions.
    """
    if periods_per_year <= 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year!r}.")
    r = pd.Series(returns, dtype="float64").dropna()
    n = len(r)
    if n == 0:
        raise ValueError("returns has no non-missing values; pass at least one period return.")
    if (r <= -1.0).any():
        raise ValueError(
            "returns contain values <= -100%; pass simple returns, not log/price data."
        )
    mean = float(r.mean())
    std = float(r.std(ddof=1)) if n > 1 else math.nan
    total = float(np.prod(1.0 + r.to_numpy()) - 1.0)
    max_dd, peak, trough, recovery = _drawdown(r)
    return PerformanceSummary(
        n=n,
        total_return=total,
        annualized_return=mean * periods_per_year,
        cagr=(1.0 + total) ** (periods_per_year / n) - 1.0,
        annualized_volatility=std * math.sqrt(periods_per_year),
        sharpe=mean / std * math.sqrt(periods_per_year) if std and std > 0 else math.nan,
        max_drawdown=max_dd,
        peak_date=peak,
        trough_date=trough,
        recovery_date=recovery,
    )


# --------------------------------------------------------------------------- everything at once


@dataclass(frozen=True)
class FactorEvaluation:
    """Output of :func:`evaluate_factor`.

    ``summary``: flat metrics (see :func:`summarize_daily`); ``daily``: per signal date
    (:data:`DAILY_COLUMNS`); ``quantile_mean``: mean forward return per quantile (index
    ``1..quantiles``); ``quantile_by_date``: the per-date means behind it (date x quantile)."""

    summary: dict[str, float]
    daily: pd.DataFrame
    quantile_mean: pd.Series
    quantile_by_date: pd.DataFrame | None = None


DAILY_COLUMNS = ("ic", "rank_ic", "top_minus_bottom", "long", "short", "gross", "turnover", "cost", "net",
                 "top_turnover", "bottom_turnover", "rank_autocorrelation")


def daily_metrics(
    df: pd.DataFrame, *, quantiles: int = 5, cost_bps: float = 0.0, ties: Ties = "drop"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-signal-date series of the evaluation, and the per-date quantile mean returns.

    Returns ``(daily, quantile_by_date)``: ``daily`` indexed by date with the columns
    :data:`DAILY_COLUMNS` (``ic``/``rank_ic``: :func:`information_coefficient`;
    ``top_minus_bottom``: :func:`top_minus_bottom`; ``long``..``net``:
    :func:`long_short_returns`; ``top_turnover``/``bottom_turnover``: :func:`quantile_turnover`;
    ``rank_autocorrelation``: :func:`factor_rank_autocorrelation`); ``quantile_by_date``:
    ``QuantileReturns.by_date``. A series that cannot be computed is all NaN.

    Every value at date t depends only on rows at t and at the previous dates the turnover and
    autocorrelation definitions look back to, so the series of a date range can be computed in
    pieces (each with a few sessions before it) and concatenated: that is how the backfill
    evaluates year partitions in parallel before :func:`summarize_daily`.
    """
    quantiles = _check_quantiles(quantiles)
    _check_cost(cost_bps)
    ic = information_coefficient(df, method="pearson")
    rank_ic = information_coefficient(df, method="spearman")
    with_returns = _with_quantiles(df, quantiles=quantiles, ties=ties)
    factor_only = _with_quantiles(df, quantiles=quantiles, ties=ties, with_returns=False)
    qr = _quantile_returns(with_returns, quantiles)
    spread = (qr.by_date[quantiles] - qr.by_date[1]).dropna().rename("top_minus_bottom")
    top_to = _quantile_turnover(factor_only, quantiles).rename("top_turnover")
    bottom_to = _quantile_turnover(factor_only, 1).rename("bottom_turnover")
    autocorr = factor_rank_autocorrelation(df).rename("rank_autocorrelation")
    try:
        ls = _long_short(with_returns, quantiles, cost_bps)
    except ValueError:
        ls = pd.DataFrame(columns=["long", "short", "gross", "turnover", "cost", "net"], dtype="float64")
    daily = pd.concat([ic.rename("ic"), rank_ic.rename("rank_ic"), spread, ls, top_to, bottom_to, autocorr],
                      axis=1).sort_index()
    daily = daily.reindex(columns=list(DAILY_COLUMNS)).astype("float64")
    daily.index.name = "date"
    return daily, qr.by_date


def summarize_daily(daily: pd.DataFrame, *, periods_per_year: int = 252) -> dict[str, float]:
    """The summary metrics of a factor from its daily series (:func:`daily_metrics`).

    Keys: ``n_dates`` (dates with a rank IC); ``ic_*`` (Pearson) and ``rank_ic_*`` (Spearman)
    ``mean, std, ir, t_stat, p_value`` (:func:`ic_summary`); ``top_minus_bottom_mean``;
    ``top_turnover_mean``/``bottom_turnover_mean``; ``rank_autocorrelation_mean``; ``ls_*`` and
    ``ls_net_*`` ``annual_return, sharpe, max_drawdown`` of the gross and net long-short returns
    (:func:`performance_summary`) and ``ls_turnover_mean``. Means skip NaN; a metric that cannot
    be computed (too few dates or names) is NaN rather than an error.
    """
    nan = math.nan
    daily = daily.sort_index()
    summary: dict[str, float] = {"n_dates": float(daily["rank_ic"].notna().sum())}
    for prefix in ("ic", "rank_ic"):
        try:
            stats_ = ic_summary(daily[prefix]).to_dict()
        except ValueError:
            stats_ = dict.fromkeys(("mean", "std", "ir", "t_stat", "p_value"), nan)
        for key in ("mean", "std", "ir", "t_stat", "p_value"):
            summary[f"{prefix}_{key}"] = float(stats_[key])
    for column in ("top_minus_bottom", "top_turnover", "bottom_turnover", "rank_autocorrelation"):
        values = daily[column].dropna()
        summary[f"{column}_mean"] = float(values.mean()) if len(values) else nan
    ls = daily.dropna(subset=["gross"])
    for prefix, column in (("ls", "gross"), ("ls_net", "net")):
        perf = performance_summary(ls[column], periods_per_year=periods_per_year) if len(ls) else None
        summary[f"{prefix}_annual_return"] = perf.annualized_return if perf else nan
        summary[f"{prefix}_sharpe"] = perf.sharpe if perf else nan
        summary[f"{prefix}_max_drawdown"] = perf.max_drawdown if perf else nan
    summary["ls_turnover_mean"] = float(ls["turnover"].mean()) if len(ls) else nan
    return summary


def evaluate_factor(
    df: pd.DataFrame,
    *,
    quantiles: int = 5,
    cost_bps: float = 0.0,
    periods_per_year: int = 252,
    ties: Ties = "drop",
) -> FactorEvaluation:
    """The alphalens tear sheet's numbers for one factor, each with this module's definition:
    :func:`daily_metrics` then :func:`summarize_daily` (see both for the exact keys).
    Quantiles are computed once per frame (with and without the return filter).
    """
    daily, by_date = daily_metrics(df, quantiles=quantiles, cost_bps=cost_bps, ties=ties)
    return FactorEvaluation(summary=summarize_daily(daily, periods_per_year=periods_per_year), daily=daily,
                            quantile_mean=by_date.mean().rename("mean_return"), quantile_by_date=by_date)
