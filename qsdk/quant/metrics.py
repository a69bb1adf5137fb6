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

**The date grid.** Turnover, rank autocorrelation and the long-short portfolio's trades compare
date t with the date ``horizon`` places before it on a grid of signal dates: by default the dates
of ``df``; a caller that evaluates a range in pieces passes the same grid to every piece (the
flows pass the sessions that have labels), so a date's value never depends on how the range was
cut. Where the earlier grid date has nothing to compare with, the value is NaN (turnover,
autocorrelation) or counts every name as bought (the portfolio's turnover).

**Quantiles.** The number of quantiles is a parameter, never derived from the data. A date with
fewer valid names than ``quantiles`` (or, with ``ties="drop"``, with ties that make bin edges
repeat) gets no quantile: it has an IC but no quantile returns, spread, turnover or long-short
return. The rule is per date, so it is the same however a range is partitioned.

**Date types.** ``date`` may hold ``datetime.date`` objects (what a Delta ``date`` column reads
as in pandas) or datetime64 values. The per-date functions group on datetime64 either way (a
groupby over Python date objects hashes each one: a 5-year ``evaluate_daily`` partition took
24 s on objects, 16 s on datetime64) and index their output with the caller's kind of date.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
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
    # both sides' dates as date objects (Delta reads): joined and sorted as datetime64, handed back as objects
    objects = _has_date_objects(factor) and _has_date_objects(returns)
    if objects:
        factor, returns = (f.assign(date=pd.to_datetime(f["date"])) for f in (factor, returns))
    for name, frame, col in (
        ("factor", factor, factor_column),
        ("returns", returns, return_column),
    ):
        _require(frame, name, ["date", "symbol", col])
    left = factor[["date", "symbol", factor_column]].rename(columns={factor_column: FACTOR})
    right = returns[["date", "symbol", return_column]].rename(columns={return_column: RETURN})
    merged = left.merge(right, on=["date", "symbol"], how="inner", validate="one_to_one")
    merged = merged.dropna(subset=[FACTOR, RETURN])
    merged = merged.sort_values(["date", "symbol"], kind="mergesort").reset_index(drop=True)
    if objects:
        codes, uniques = pd.factorize(merged["date"])
        merged["date"] = pd.Index(pd.DatetimeIndex(uniques).date, dtype=object).take(codes)
    return merged


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


def _check_horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 (sessions a position is held), got {horizon!r}.")
    return int(horizon)


def _grid(df: pd.DataFrame, dates: Any = None) -> pd.Index:
    """The sorted signal dates against which "``periods`` dates before" is counted."""
    grid = pd.Index(pd.unique(pd.Index(df["date"] if dates is None else dates))).sort_values()
    outside = pd.Index(df["date"]).difference(grid)
    if len(outside):
        raise ValueError(f"df has dates that are not in dates, e.g. {outside[0]}: pass every signal date "
                         "of df in dates (the grid that turnover and autocorrelation step back on).")
    return grid.rename("date")


def _previous(dates: Any, grid: pd.Index, periods: int) -> pd.Index:
    """For each of ``dates``, the grid date ``periods`` places before it (NaT for the first ones)."""
    before = pd.Series(grid[: max(len(grid) - periods, 0)], index=grid[periods:], dtype=grid.dtype)
    return pd.Index(before.reindex(pd.Index(dates)).to_numpy())


def _datetime64_dates(df: pd.DataFrame, dates: Any = None) -> tuple[pd.DataFrame, Any, Callable[[Any], Any]]:
    """``df`` (and the grid ``dates``) with ``date`` as datetime64 when it holds ``datetime.date``
    objects, and the function that turns a date index of a result back into such objects (the
    identity when nothing was converted). See the module docstring's *Date types*."""
    if not _has_date_objects(df):
        return df, dates, lambda result: result
    df = df.assign(date=pd.to_datetime(df["date"]))
    if dates is not None and _date_objects(pd.Index(dates)):
        dates = pd.to_datetime(pd.Index(dates))

    def restore(result: Any) -> Any:
        if isinstance(result.index, pd.DatetimeIndex):
            result = result.set_axis(pd.Index(result.index.date, dtype=object, name=result.index.name))
        return result

    return df, dates, restore


def _has_date_objects(df: Any) -> bool:
    """Whether ``df`` is a frame whose ``date`` column holds ``datetime.date`` objects."""
    return isinstance(df, pd.DataFrame) and "date" in df.columns and _date_objects(df["date"])


def _date_objects(values: pd.Series | pd.Index) -> bool:
    """Whether ``values`` are ``datetime.date`` objects (not datetimes, not text)."""
    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "date"


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
    df, _, restore = _datetime64_dates(df)
    d = _clean(df)
    x, y = d[FACTOR].astype("float64"), d[RETURN].astype("float64")
    if method == "spearman":
        x, y = x.groupby(d["date"]).rank(), y.groupby(d["date"]).rank()
    ic = _rowwise_pearson(x, y, d["date"]).dropna()
    ic.index.name = "date"
    return restore(ic.rename("ic"))


@dataclass(frozen=True)
class ICSummary:
    """Summary of an IC series: ``mean``; ``std`` (sample, ddof=1); ``ir = mean / std``;
    ``t_stat`` and its two-sided ``p_value`` (t distribution, ``n - 1`` degrees of freedom);
    ``n`` = number of dates; ``lags`` = Newey-West lags used for ``t_stat``.

    With ``lags == 0`` (horizon 1): ``t_stat = mean / (std / sqrt(n))``, as
    ``scipy.stats.ttest_1samp`` (and alphalens). With ``lags > 0`` (a horizon of ``lags + 1``
    sessions, whose forward returns overlap): ``t_stat = mean / sqrt(S / n)`` with the
    Hansen-Hodrick long-run variance ``S = g_0 + 2 * sum_{j=1..lags} g_j`` and autocovariances
    ``g_j = sum_t (x_t - mean)(x_{t-j} - mean) / n`` (uniform weights: exact for the moving-average
    errors that h-session overlaps produce; statsmodels' HAC with the uniform kernel). When that
    estimate is not positive (it can be, in small samples), the Newey-West one (Bartlett weights
    ``1 - j / (lags + 1)``) is used. ``ir``, ``t_stat``, ``p_value`` are NaN when ``std == 0``."""

    mean: float
    std: float
    ir: float
    t_stat: float
    p_value: float
    n: int
    lags: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def long_run_variance(values: np.ndarray, *, lags: int, kernel: Literal["uniform", "bartlett"] = "uniform") -> float:
    """Long-run variance of a series around its mean: ``g_0 + 2 * sum_j w_j g_j`` over ``lags``
    autocovariances, with ``w_j = 1`` (Hansen-Hodrick, ``uniform``) or ``1 - j / (lags + 1)``
    (Newey-West, ``bartlett``). See :class:`ICSummary`."""
    x = np.asarray(values, dtype="float64") - float(np.mean(values))
    n = len(x)
    variance = float(x @ x) / n
    for j in range(1, min(lags, n - 1) + 1):
        weight = 1.0 if kernel == "uniform" else 1.0 - j / (lags + 1)
        variance += 2.0 * weight * float(x[j:] @ x[:-j]) / n
    return variance


def ic_summary(ic: pd.Series, *, lags: int = 0) -> ICSummary:
    """Summarize a per-date IC series (NaNs ignored); needs at least 2 observations.

    ``lags``: autocovariance lags of the t statistic's variance; use ``horizon - 1`` when the
    forward returns of consecutive dates overlap (0, the default, is the classic t statistic).
    """
    if isinstance(lags, bool) or not isinstance(lags, int | np.integer) or lags < 0:
        raise ValueError(f"lags must be an integer >= 0, got {lags!r}.")
    values = pd.Series(ic, dtype="float64").dropna().to_numpy()
    n = len(values)
    if n < 2:
        raise ValueError(f"ic_summary needs at least 2 non-missing IC values, got {n}.")
    mean, std = float(values.mean()), float(values.std(ddof=1))
    if std == 0:
        return ICSummary(mean, std, math.nan, math.nan, math.nan, n, int(lags))
    if lags == 0:
        scale = std / math.sqrt(n)
    else:
        variance = long_run_variance(values, lags=lags)
        if variance <= 0:
            variance = long_run_variance(values, lags=lags, kernel="bartlett")
        scale = math.sqrt(max(variance, 0.0) / n)
    t_stat = mean / scale if scale > 0 else math.nan
    from scipy import stats  # imported here: scipy costs ~0.5 s at import, and only this needs it

    p_value = float(2.0 * stats.t.sf(abs(t_stat), df=n - 1))
    return ICSummary(mean, std, mean / std, t_stat, p_value, n, int(lags))


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
    df: pd.DataFrame,
    *,
    quantile: int,
    quantiles: int = 5,
    ties: Ties = "drop",
    period: int = 1,
    dates: Any = None,
) -> pd.Series:
    """Share of names in ``quantile`` on date t that were not in it ``period`` dates before.

    alphalens' definition ``|S_t - S_prev| / |S_t|`` (its ``quantile_turnover(..., period)``),
    with ``prev`` the date ``period`` places before t on the grid ``dates`` (default: the dates of
    ``df``; see the module docstring). NaN when there is no such date or the quantile was empty
    on it. (alphalens steps back over the dates on which the quantile was non-empty; both agree
    when every date has the quantile.) Only ``factor`` is needed (NaN factors dropped). Returns a
    Series named ``turnover`` indexed by the dates on which the quantile is non-empty.
    """
    quantiles = _check_quantiles(quantiles)
    if not 1 <= quantile <= quantiles:
        raise ValueError(f"quantile must be in 1..{quantiles}, got {quantile!r}.")
    period = _check_horizon(period)
    d = _with_quantiles(df, quantiles=quantiles, ties=ties, with_returns=False)
    return _quantile_turnover(d, quantile, _grid(df, dates), period)


def _quantile_turnover(d: pd.DataFrame, quantile: int, grid: pd.Index, period: int) -> pd.Series:
    members = d.loc[d["quantile"] == quantile, ["date", "symbol"]]
    if members.empty:
        return pd.Series([], dtype="float64", name="turnover", index=pd.Index([], name="date"))
    previous = pd.MultiIndex.from_arrays([_previous(members["date"], grid, period), members["symbol"]])
    current = pd.MultiIndex.from_frame(members[["date", "symbol"]])
    is_new = pd.Series(~previous.isin(current), index=members.index)
    turnover = is_new.groupby(members["date"]).mean().astype("float64")
    compared = _previous(turnover.index, grid, period).isin(pd.Index(members["date"].unique()))
    turnover[~compared] = np.nan
    turnover.index.name = "date"
    return turnover.rename("turnover")


def factor_rank_autocorrelation(df: pd.DataFrame, *, period: int = 1, dates: Any = None) -> pd.Series:
    """Spearman correlation of the factor between each date and the date ``period`` places before.

    The earlier date is counted on the grid ``dates`` (default: the dates of ``df``). Computed over
    the names present (non-NaN factor) on both dates, re-ranked among those common names.
    alphalens (``factor_rank_autocorrelation``) ranks each full cross-section first and then
    correlates the ranks of the common names: the two agree when the universe does not change
    (tested against alphalens both ways). NaN when there is no earlier date or < 2 common names.
    Returns a Series named ``factor_rank_autocorrelation`` indexed by the dates of ``df``.
    """
    period = _check_horizon(period)
    d = _clean(df, with_returns=False)
    grid = _grid(df, dates)
    wide = d.pivot(index="date", columns="symbol", values=FACTOR).reindex(grid)
    prev = wide.shift(period)
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
    rho = rho.reindex(pd.Index(d["date"].unique()).sort_values().rename("date"))
    return rho.astype("float64").rename("factor_rank_autocorrelation")


# --------------------------------------------------------------------------- portfolios


def long_short_returns(
    df: pd.DataFrame,
    *,
    quantiles: int = 5,
    cost_bps: float = 0.0,
    ties: Ties = "drop",
    horizon: int = 1,
    dates: Any = None,
) -> pd.DataFrame:
    """Equal-weight long top quantile / short bottom quantile, one sub-portfolio per signal date.

    Per date t (dates where both legs are non-empty): ``long`` = mean ``forward_return`` of the
    top quantile, ``short`` = mean of the bottom quantile, ``gross = long - short``: the return of
    the sub-portfolio formed at t over its ``horizon`` sessions (the label's horizon). With
    ``horizon`` h the book holds h overlapping sub-portfolios (as alphalens and Qlib), and the one
    formed at t replaces the one formed h grid dates before (``dates``; default: the dates of
    ``df``), so h = 1 is daily rebalancing. Leg weights are ``1/n`` per name (each leg has gross
    weight 1). The one-way turnover of a leg is ``TO_t = sum_i max(w_{t,i} - w_{prev,i}, 0)``
    (the fraction of the leg bought; equals ``0.5 * sum_i |w_{t,i} - w_{prev,i}|``), with ``w = 0``
    when the replaced sub-portfolio does not exist (so the first date has ``TO = 1`` per leg).
    Then ``turnover = TO_long + TO_short``, ``cost = cost_bps / 10_000 * turnover``,
    ``net = gross - cost`` (the sub-portfolio's return net of the trades that formed it). Weight
    drift between rebalances is ignored.
    Returns a DataFrame indexed by date with columns long, short, gross, turnover, cost, net.
    """
    quantiles = _check_quantiles(quantiles)
    _check_cost(cost_bps)
    horizon = _check_horizon(horizon)
    d = _with_quantiles(df, quantiles=quantiles, ties=ties)
    return _long_short(d, quantiles, cost_bps, _grid(df, dates), horizon)


def _long_short(d: pd.DataFrame, quantiles: int, cost_bps: float, grid: pd.Index, horizon: int) -> pd.DataFrame:
    top, bottom = d[d["quantile"] == quantiles], d[d["quantile"] == 1]
    # (not a set of the values: iterating datetime64 makes a Timestamp per row, 6 of the script's 54 s)
    dates = pd.Index(top["date"].unique()).intersection(pd.Index(bottom["date"].unique())).sort_values()
    dates = dates.rename("date")
    if len(dates) == 0:
        raise ValueError(
            f"No date has both a top and a bottom quantile; each date needs at least {quantiles} "
            "names with a factor and a forward return (or use fewer quantiles / ties='first')."
        )
    out = pd.DataFrame(index=dates)
    out["long"] = top.groupby("date")[RETURN].mean().reindex(dates)
    out["short"] = bottom.groupby("date")[RETURN].mean().reindex(dates)
    out["gross"] = out["long"] - out["short"]
    replaced = _previous(dates, grid, horizon)
    turnover = np.zeros(len(dates))
    for leg in (top, bottom):
        leg = leg[leg["date"].isin(dates)]
        weight = 1.0 / leg.groupby("date")["symbol"].transform("size")
        wide = weight.groupby([leg["date"], leg["symbol"]]).sum().unstack(fill_value=0.0).reindex(dates)
        before = wide.reindex(replaced).fillna(0.0).to_numpy()
        turnover += np.clip(wide.to_numpy() - before, 0.0, None).sum(axis=1)
    out["turnover"] = turnover
    out["cost"] = float(cost_bps) / 10_000.0 * out["turnover"]
    out["net"] = out["gross"] - out["cost"]
    return out


@dataclass(frozen=True)
class PerformanceSummary:
    """Performance of a periodic return series (zero risk-free rate), as empyrical defines it.

    ``annual_return`` = compound annual growth rate ``(1 + total_return) ** (periods_per_year / n)
    - 1`` (``empyrical.annual_return``); ``mean_return_annualized`` = arithmetic
    ``mean * periods_per_year`` (not a return anyone earned: kept under an honest name);
    ``annual_volatility`` = ``std(ddof=1) * sqrt(periods_per_year)``;
    ``sharpe`` = ``mean / std * sqrt(periods_per_year)`` (NaN if std is 0 or n < 2);
    ``sortino`` = ``mean * periods_per_year / (sqrt(mean(min(r, 0) ** 2)) * sqrt(periods_per_year))``
    (NaN without a negative period); ``calmar`` = ``annual_return / |max_drawdown|`` (NaN without a
    drawdown); ``hit_rate`` = share of periods with a return > 0;
    ``max_drawdown`` = min over time of ``W_t / max_{s<=t} W_s - 1`` (<= 0) for the wealth curve
    ``W = (1 + r).cumprod()`` started from ``W = 1`` before the first return (as empyrical);
    ``peak_date``/``trough_date``: index labels of the drawdown's peak and trough (``peak_date``
    is None when the peak is the starting capital; both None when there is no drawdown);
    ``recovery_date``: first label after the trough where W regains the peak (None if never).
    """

    n: int
    total_return: float
    annual_return: float
    mean_return_annualized: float
    annual_volatility: float
    sharpe: float
    sortino: float
    calmar: float
    hit_rate: float
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


def performance_summary(returns: pd.Series, *, periods_per_year: float = 252) -> PerformanceSummary:
    """Summarize simple periodic returns (e.g. the ``net`` column of long_short_returns).

    NaN returns are dropped. ``periods_per_year`` is 252 for daily returns and ``252 / h`` for
    the returns of positions held h sessions. See :class:`PerformanceSummary` for the definitions.
    """
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year!r}.")
    r = pd.Series(returns, dtype="float64").dropna()
    n = len(r)
    if n == 0:
        raise ValueError("returns has no non-missing values; pass at least one period return.")
    if (r <= -1.0).any():
        raise ValueError(
            "returns contain values <= -100%; pass simple returns, not log/price data."
        )
    values = r.to_numpy()
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    downside = math.sqrt(float(np.mean(np.minimum(values, 0.0) ** 2)))
    total = float(np.prod(1.0 + values) - 1.0)
    annual = (1.0 + total) ** (periods_per_year / n) - 1.0
    max_dd, peak, trough, recovery = _drawdown(r)
    return PerformanceSummary(
        n=n,
        total_return=total,
        annual_return=annual,
        mean_return_annualized=mean * periods_per_year,
        annual_volatility=std * math.sqrt(periods_per_year),
        sharpe=mean / std * math.sqrt(periods_per_year) if std and std > 0 else math.nan,
        sortino=mean * math.sqrt(periods_per_year) / downside if downside > 0 else math.nan,
        calmar=annual / abs(max_dd) if max_dd < 0 else math.nan,
        hit_rate=float((values > 0).mean()),
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
PERFORMANCE_KEYS = ("annual_return", "mean_return_annualized", "annual_volatility", "sharpe", "sortino",
                    "calmar", "max_drawdown", "hit_rate")


def daily_metrics(
    df: pd.DataFrame,
    *,
    quantiles: int = 5,
    cost_bps: float = 0.0,
    ties: Ties = "drop",
    horizon: int = 1,
    dates: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-signal-date series of the evaluation, and the per-date quantile mean returns.

    Returns ``(daily, quantile_by_date)``: ``daily`` indexed by date with the columns
    :data:`DAILY_COLUMNS` (``ic``/``rank_ic``: :func:`information_coefficient`;
    ``top_minus_bottom``: :func:`top_minus_bottom`; ``long``..``net``:
    :func:`long_short_returns`; ``top_turnover``/``bottom_turnover``: :func:`quantile_turnover`
    and ``rank_autocorrelation``: :func:`factor_rank_autocorrelation`, both with
    ``period=horizon``, as alphalens does per forward-return period); ``quantile_by_date``:
    ``QuantileReturns.by_date``. A series that cannot be computed is all NaN.

    Every value at date t depends only on rows at t and at the grid date ``horizon`` places
    before it (``dates``, default the dates of ``df``), so a range computed in pieces (each
    piece with at least ``horizon`` grid dates before it, and the same grid) concatenates to
    exactly the one-pass result: that is how the flows evaluate partitions in parallel.
    """
    quantiles = _check_quantiles(quantiles)
    _check_cost(cost_bps)
    horizon = _check_horizon(horizon)
    df, dates, restore = _datetime64_dates(df, dates)
    grid = _grid(df, dates)
    ic = information_coefficient(df, method="pearson")
    rank_ic = information_coefficient(df, method="spearman")
    with_returns = _with_quantiles(df, quantiles=quantiles, ties=ties)
    factor_only = _with_quantiles(df, quantiles=quantiles, ties=ties, with_returns=False)
    qr = _quantile_returns(with_returns, quantiles)
    spread = (qr.by_date[quantiles] - qr.by_date[1]).dropna().rename("top_minus_bottom")
    top_to = _quantile_turnover(factor_only, quantiles, grid, horizon).rename("top_turnover")
    bottom_to = _quantile_turnover(factor_only, 1, grid, horizon).rename("bottom_turnover")
    autocorr = factor_rank_autocorrelation(df, period=horizon, dates=grid).rename("rank_autocorrelation")
    try:
        ls = _long_short(with_returns, quantiles, cost_bps, grid, horizon)
    except ValueError:
        ls = pd.DataFrame(columns=["long", "short", "gross", "turnover", "cost", "net"], dtype="float64")
    daily = pd.concat([ic.rename("ic"), rank_ic.rename("rank_ic"), spread, ls, top_to, bottom_to, autocorr],
                      axis=1).sort_index()
    daily = daily.reindex(columns=list(DAILY_COLUMNS)).astype("float64")
    daily.index.name = "date"
    return restore(daily), restore(qr.by_date)


def sub_portfolio_performance(
    returns: pd.Series, *, horizon: int = 1, periods_per_year: int = 252
) -> dict[str, float]:
    """Performance of a book of ``horizon`` overlapping sub-portfolios, from their returns.

    ``returns``: per signal date, the ``horizon``-session return of the sub-portfolio formed that
    date (the ``gross``/``net`` columns of :func:`long_short_returns`), in date order. Sub-
    portfolio k holds the dates ``k, k + h, k + 2h, ...``: a series of non-overlapping h-session
    returns, summarized by :func:`performance_summary` with ``periods_per_year / h`` periods a
    year (annualising by the holding period). Each figure of :data:`PERFORMANCE_KEYS` is the mean
    over the h sub-portfolios; with ``horizon=1`` it is exactly ``performance_summary(returns)``.
    Overlapping h-session returns are never compounded or annualised as if they were daily.
    """
    horizon = _check_horizon(horizon)
    r = pd.Series(returns, dtype="float64").sort_index()
    perfs = [performance_summary(part, periods_per_year=periods_per_year / horizon)
             for k in range(horizon) if len(part := r.iloc[k::horizon].dropna())]
    if not perfs:
        return dict.fromkeys(PERFORMANCE_KEYS, math.nan)
    return {key: float(np.nanmean([getattr(p, key) for p in perfs]))
            if any(not math.isnan(getattr(p, key)) for p in perfs) else math.nan for key in PERFORMANCE_KEYS}


def summarize_daily(daily: pd.DataFrame, *, periods_per_year: int = 252, horizon: int = 1) -> dict[str, float]:
    """The summary metrics of a factor from its daily series (:func:`daily_metrics`).

    Keys: ``n_dates`` (dates with a rank IC); ``ic_*`` (Pearson) and ``rank_ic_*`` (Spearman)
    ``mean, std, ir, t_stat, p_value`` (:func:`ic_summary` with ``horizon - 1`` lags (Hansen-Hodrick),
    since the forward returns of consecutive dates overlap for ``horizon > 1``);
    ``top_minus_bottom_mean``; ``top_turnover_mean``/``bottom_turnover_mean``;
    ``rank_autocorrelation_mean``; ``ls_*`` and ``ls_net_*`` for each of :data:`PERFORMANCE_KEYS`
    (``annual_return`` is the compound annual growth rate, as ``empyrical.annual_return``) of the
    gross and net long-short book (:func:`sub_portfolio_performance`); ``ls_turnover_mean``.
    Means skip NaN; a metric that cannot be computed (too few dates or names) is NaN rather than
    an error.
    """
    nan = math.nan
    horizon = _check_horizon(horizon)
    daily = daily.sort_index()
    summary: dict[str, float] = {"n_dates": float(daily["rank_ic"].notna().sum())}
    for prefix in ("ic", "rank_ic"):
        try:
            stats_ = ic_summary(daily[prefix], lags=horizon - 1).to_dict()
        except ValueError:
            stats_ = dict.fromkeys(("mean", "std", "ir", "t_stat", "p_value"), nan)
        for key in ("mean", "std", "ir", "t_stat", "p_value"):
            summary[f"{prefix}_{key}"] = float(stats_[key])
    for column in ("top_minus_bottom", "top_turnover", "bottom_turnover", "rank_autocorrelation"):
        values = daily[column].dropna()
        summary[f"{column}_mean"] = float(values.mean()) if len(values) else nan
    for prefix, column in (("ls", "gross"), ("ls_net", "net")):
        perf = sub_portfolio_performance(daily[column], horizon=horizon, periods_per_year=periods_per_year)
        summary |= {f"{prefix}_{key}": value for key, value in perf.items()}
    turnover = daily.dropna(subset=["gross"])["turnover"]
    summary["ls_turnover_mean"] = float(turnover.mean()) if len(turnover) else nan
    return summary


def evaluate_factor(
    df: pd.DataFrame,
    *,
    quantiles: int = 5,
    cost_bps: float = 0.0,
    periods_per_year: int = 252,
    ties: Ties = "drop",
    horizon: int = 1,
) -> FactorEvaluation:
    """The alphalens tear sheet's numbers for one factor, each with this module's definition:
    :func:`daily_metrics` then :func:`summarize_daily` (see both for the exact keys).
    ``horizon``: sessions each position is held (the labels' horizon).
    """
    daily, by_date = daily_metrics(df, quantiles=quantiles, cost_bps=cost_bps, ties=ties, horizon=horizon)
    summary = summarize_daily(daily, periods_per_year=periods_per_year, horizon=horizon)
    return FactorEvaluation(summary=summary, daily=daily, quantile_mean=by_date.mean().rename("mean_return"),
                            quantile_by_date=by_date)
