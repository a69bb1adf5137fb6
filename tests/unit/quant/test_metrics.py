import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from qsdk.quant.metrics import (
    daily_metrics,
    evaluate_factor,
    factor_rank_autocorrelation,
    ic_summary,
    information_coefficient,
    long_short_returns,
    merge_factor_returns,
    performance_summary,
    quantile_returns,
    quantile_turnover,
    quantize,
    top_minus_bottom,
)

D1, D2, D3, D4 = pd.to_datetime(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07"])


def frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["date", "symbol", "factor", "forward_return"])


def day(date: pd.Timestamp, symbols: str, factors: list, returns: list) -> list[tuple]:
    """Rows of one date: one symbol per character of ``symbols``."""
    return list(zip([date] * len(symbols), symbols, factors, returns, strict=True))


@pytest.fixture
def ic_frame() -> pd.DataFrame:
    return frame(
        [
            # D1: factor 1..4, returns .01 .03 .02 .08
            *day(D1, "ABCD", [1.0, 2.0, 3.0, 4.0], [0.01, 0.03, 0.02, 0.08]),
            # D2: factor perfectly inverse to returns
            *day(D2, "ABCD", [4.0, 3.0, 2.0, 1.0], [0.01, 0.02, 0.03, 0.04]),
            # D3: only one valid pair -> dropped
            *day(D3, "ABC", [1.0, np.nan, 2.0], [0.01, 0.02, np.nan]),
            # D4: constant factor -> correlation undefined -> dropped
            *day(D4, "ABC", [2.0, 2.0, 2.0], [0.01, 0.02, 0.03]),
        ]
    )


def test_information_coefficient_spearman_hand_computed(ic_frame):
    ic = information_coefficient(ic_frame, method="spearman")
    # D1: factor ranks 1 2 3 4, return ranks 1 3 2 4; d = 0 -1 1 0, sum d^2 = 2
    #     rho = 1 - 6 * 2 / (4 * (16 - 1)) = 1 - 12/60 = 0.8
    # D2: ranks fully reversed -> -1
    assert ic.index.tolist() == [D1, D2]
    np.testing.assert_allclose(ic.to_numpy(), [0.8, -1.0])


def test_information_coefficient_pearson_hand_computed(ic_frame):
    ic = information_coefficient(ic_frame, method="pearson")
    # D1: f - mean = -1.5 -.5 .5 1.5 ; r - mean(.035) = -.025 -.005 -.015 .045
    #     cov sum = .0375 + .0025 - .0075 + .0675 = .1 ; sum f^2 = 5 ; sum r^2 = .0029
    #     r = .1 / sqrt(5 * .0029) = .1 / .1204159 = 0.8304548
    assert ic.loc[D1] == pytest.approx(0.8304548, abs=1e-7)
    assert ic.loc[D2] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="method"):
        information_coefficient(ic_frame, method="kendall")


def test_ic_summary_hand_computed():
    s = ic_summary(pd.Series([0.1, 0.2, 0.3]))
    # mean .2 ; std (ddof=1) = sqrt((.01 + 0 + .01) / 2) = .1 ; ir = 2
    # t = .2 / (.1 / sqrt(3)) = 2 * sqrt(3) = 3.4641016
    # t with 2 df: two-sided p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12/14) = 0.0741799
    assert s.n == 3
    assert s.mean == pytest.approx(0.2)
    assert s.std == pytest.approx(0.1)
    assert s.ir == pytest.approx(2.0)
    assert s.t_stat == pytest.approx(3.4641016, abs=1e-7)
    assert s.p_value == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-9)
    assert set(s.to_dict()) == {"mean", "std", "ir", "t_stat", "p_value", "n", "lags"}
    with pytest.raises(ValueError, match="at least 2"):
        ic_summary(pd.Series([0.1, np.nan]))
    assert math.isnan(ic_summary(pd.Series([0.1, 0.1])).t_stat)


def test_quantize_hand_computed():
    df = frame(
        [
            # D1: 6 names, factor 6 1 5 2 4 3 -> pairs {1,2} {3,4} {5,6} -> labels 3 1 3 1 2 2
            *day(D1, "ABCDEF", [6.0, 1.0, 5.0, 2.0, 4.0, 3.0], [0] * 6),
            # D2: only 2 names < 3 quantiles -> unlabeled
            *day(D2, "AB", [1.0, 2.0], [0, 0]),
            # D3: NaN factor -> unlabeled; the other 3 names are still labeled
            *day(D3, "ABCD", [np.nan, 1.0, 2.0, 3.0], [0, 0, 0, 0]),
        ]
    )
    q = quantize(df, quantiles=3)
    assert q.dtype == "Int64" and q.index.equals(df.index)
    assert q.iloc[:6].tolist() == [3, 1, 3, 1, 2, 2]
    assert q.iloc[6:8].isna().all()
    # D3 valid factor 1 2 3; qcut edges at 1, 1.667, 2.333, 3 -> labels 1 2 3
    assert pd.isna(q.iloc[8]) and q.iloc[9:].tolist() == [1, 2, 3]


def test_quantize_ties():
    # factor 1 1 1 1 2 3: the 1/3 and 2/3 quantiles are 1 and 1.333 -> edges 1, 1, 1.333, 3
    # are not unique, so the date is left unlabeled by default
    df = frame([(D1, s, v, 0.0) for s, v in zip("ABCDEF", [1, 1, 1, 1, 2, 3], strict=True)])
    assert quantize(df, quantiles=3).isna().all()
    # ties="first" cuts ranks 1..6 (ties broken by row order) -> 1 1 2 2 3 3
    assert quantize(df, quantiles=3, ties="first").tolist() == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="quantiles"):
        quantize(df, quantiles=1)


@pytest.fixture
def q_frame() -> pd.DataFrame:
    # With quantiles=2, quantile 1 = two lowest factors, quantile 2 = two highest.
    return frame(
        [
            *day(D1, "ABCD", [1.0, 2.0, 3.0, 4.0], [0.01, 0.02, 0.03, 0.05]),
            *day(D2, "ABCD", [4.0, 3.0, 2.0, 1.0], [0.02, 0.00, -0.01, 0.01]),
            *day(D3, "ABCD", [1.0, 3.0, 2.0, 4.0], [0.00, 0.01, 0.02, 0.03]),
        ]
    )


def test_quantile_returns_hand_computed(q_frame):
    qr = quantile_returns(q_frame, quantiles=2)
    # D1: bottom {A,B} (.01+.02)/2 = .015 ; top {C,D} (.03+.05)/2 = .04
    # D2: bottom {D,C} (.01-.01)/2 = 0    ; top {A,B} (.02+.00)/2 = .01
    # D3: bottom {A,C} (.00+.02)/2 = .01  ; top {B,D} (.01+.03)/2 = .02
    np.testing.assert_allclose(qr.by_date[1].to_numpy(), [0.015, 0.0, 0.01], atol=1e-12)
    np.testing.assert_allclose(qr.by_date[2].to_numpy(), [0.04, 0.01, 0.02], atol=1e-12)
    # averaged over dates: q1 (.015+0+.01)/3 = .0083333 ; q2 (.04+.01+.02)/3 = .0233333
    np.testing.assert_allclose(qr.mean.to_numpy(), [0.025 / 3, 0.07 / 3], atol=1e-12)
    # spread: .04-.015 = .025 ; .01-0 = .01 ; .02-.01 = .01
    np.testing.assert_allclose(
        top_minus_bottom(q_frame, quantiles=2).to_numpy(), [0.025, 0.01, 0.01]
    )


def test_quantile_turnover_hand_computed(q_frame):
    top = quantile_turnover(q_frame, quantile=2, quantiles=2)
    # top sets: D1 {C,D}, D2 {A,B} (2 of 2 new -> 1.0), D3 {B,D} (D new -> 1/2)
    np.testing.assert_allclose(top.to_numpy(), [np.nan, 1.0, 0.5])
    bottom = quantile_turnover(q_frame, quantile=1, quantiles=2)
    # bottom sets: D1 {A,B}, D2 {C,D} -> 1.0, D3 {A,C} (A new) -> 0.5
    np.testing.assert_allclose(bottom.to_numpy(), [np.nan, 1.0, 0.5])
    with pytest.raises(ValueError, match="quantile must be"):
        quantile_turnover(q_frame, quantile=3, quantiles=2)


def test_factor_rank_autocorrelation_hand_computed(q_frame):
    ac = factor_rank_autocorrelation(q_frame)
    # D2 vs D1: ranks 4 3 2 1 vs 1 2 3 4 -> -1
    # D3 vs D2: ranks 1 3 2 4 vs 4 3 2 1: d = -3 0 0 3, sum d^2 = 18 -> 1 - 6*18/(4*15) = -0.8
    np.testing.assert_allclose(ac.to_numpy(), [np.nan, -1.0, -0.8])


def test_factor_rank_autocorrelation_uses_common_names_only():
    df = frame(
        [
            *day(D1, "ABCD", [1.0, 3.0, 2.0, 9.0], [0, 0, 0, 0]),
            *day(D2, "ABCE", [1.0, 2.0, 3.0, -5.0], [0, 0, 0, 0]),
        ]
    )
    # common names A, B, C: D1 ranks 1 3 2, D2 ranks 1 2 3; d = 0 1 -1, sum d^2 = 2
    # rho = 1 - 6*2/(3*8) = 0.5
    np.testing.assert_allclose(factor_rank_autocorrelation(df).to_numpy(), [np.nan, 0.5])


def test_long_short_returns_with_costs_hand_computed(q_frame):
    ls = long_short_returns(q_frame, quantiles=2, cost_bps=10.0)
    assert list(ls.columns) == ["long", "short", "gross", "turnover", "cost", "net"]
    np.testing.assert_allclose(ls["long"], [0.04, 0.01, 0.02], atol=1e-12)
    np.testing.assert_allclose(ls["short"], [0.015, 0.0, 0.01], atol=1e-12)
    np.testing.assert_allclose(ls["gross"], [0.025, 0.01, 0.01], atol=1e-12)
    # long weights: D1 C,D=.5 (from cash: buys 1.0) ; D2 A,B=.5 (buys .5+.5 = 1.0) ;
    #               D3 B,D=.5 (B unchanged, buy D .5 -> .5)
    # short weights: D1 A,B (1.0) ; D2 C,D (1.0) ; D3 A,C (buy A .5 -> .5)
    # turnover = long + short = 2, 2, 1 ; cost = 10bp * turnover = .002, .002, .001
    np.testing.assert_allclose(ls["turnover"], [2.0, 2.0, 1.0])
    np.testing.assert_allclose(ls["cost"], [0.002, 0.002, 0.001])
    np.testing.assert_allclose(ls["net"], [0.023, 0.008, 0.009], atol=1e-12)
    free = long_short_returns(q_frame, quantiles=2)
    np.testing.assert_allclose(free["net"], free["gross"])


def test_long_short_unequal_leg_sizes_turnover():
    # quantiles=2 on 3 names: qcut puts 2 names in the bottom and 1 in the top bin
    df = frame(
        [
            *day(D1, "ABC", [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]),
            *day(D2, "ABC", [1.0, 3.0, 2.0], [0.0, 0.0, 0.0]),
        ]
    )
    ls = long_short_returns(df, quantiles=2)
    # D1 long {C}=1, short {A,B}=.5/.5 ; D2 long {B}=1 (buy 1.0), short {A,C} (buy C .5)
    np.testing.assert_allclose(ls["turnover"], [2.0, 1.5])


def test_long_short_errors(q_frame):
    with pytest.raises(ValueError, match="cost_bps"):
        long_short_returns(q_frame, quantiles=2, cost_bps=-1)
    with pytest.raises(ValueError, match="No date has both"):
        long_short_returns(q_frame, quantiles=5)


def test_performance_summary_hand_computed():
    idx = pd.to_datetime(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07"])
    r = pd.Series([0.10, -0.20, 0.05, 0.20], index=idx)
    s = performance_summary(r)
    # mean = .15/4 = .0375 -> annualized (arithmetic) = .0375 * 252 = 9.45
    # deviations .0625 -.2375 .0125 .1625 ; squares sum = .086875 ; var = .086875/3
    std = math.sqrt(0.086875 / 3)  # 0.1701715
    assert s.n == 4
    assert s.mean_return_annualized == pytest.approx(9.45)
    assert s.annual_volatility == pytest.approx(std * math.sqrt(252))
    assert s.sharpe == pytest.approx(0.0375 / std * math.sqrt(252))
    # wealth 1 -> 1.1 -> .88 -> .924 -> 1.1088 ; total return .1088
    assert s.total_return == pytest.approx(0.1088)
    assert s.annual_return == pytest.approx(1.1088 ** (252 / 4) - 1)  # compound, not 9.45
    # peak 1.1 on 01-04, trough .88 on 01-05: .88/1.1 - 1 = -.2 ; regained 1.1 on 01-07
    assert s.max_drawdown == pytest.approx(-0.2)
    # downside deviation sqrt((0 + .04 + 0 + 0) / 4) = .1 ; sortino = .0375 * 252 / (.1 * sqrt(252))
    assert s.sortino == pytest.approx(0.0375 * math.sqrt(252) / 0.1)
    assert s.calmar == pytest.approx(s.annual_return / 0.2)
    assert s.hit_rate == pytest.approx(0.75)
    assert (s.peak_date, s.trough_date, s.recovery_date) == (idx[0], idx[1], idx[3])


def test_performance_summary_drawdown_from_starting_capital_and_no_drawdown():
    idx = pd.to_datetime(["2021-01-04", "2021-01-05"])
    s = performance_summary(pd.Series([-0.10, 0.05], index=idx))
    # wealth 1 -> .9 -> .945: drawdown from the starting capital, not yet recovered
    assert s.max_drawdown == pytest.approx(-0.1)
    assert (s.peak_date, s.trough_date, s.recovery_date) == (None, idx[0], None)
    up = performance_summary(pd.Series([0.01, 0.02], index=idx))
    assert up.max_drawdown == 0.0 and up.peak_date is None and up.trough_date is None


def test_performance_summary_errors():
    with pytest.raises(ValueError, match="no non-missing"):
        performance_summary(pd.Series([np.nan]))
    with pytest.raises(ValueError, match="-100%"):
        performance_summary(pd.Series([0.1, -1.5]))


def test_merge_factor_returns_and_input_validation():
    factor = pd.DataFrame(
        {"date": [D1, D1, D2], "symbol": ["A", "B", "A"], "value": [1.0, np.nan, 3.0]}
    )
    rets = pd.DataFrame(
        {"date": [D1, D1, D2], "symbol": ["A", "B", "B"], "forward_return": [0.1, 0.2, 0.3]}
    )
    out = merge_factor_returns(factor, rets)
    # B/D1 has a NaN factor; (D2, A) and (D2, B) have no partner -> only (D1, A) survives
    assert out.to_dict("records") == [
        {"date": D1, "symbol": "A", "factor": 1.0, "forward_return": 0.1}
    ]
    with pytest.raises(ValueError, match="missing columns"):
        information_coefficient(factor)
    dup = frame(day(D1, "AA", [1.0, 2.0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="duplicated"):
        information_coefficient(dup)


@pytest.mark.parametrize("ties", ["drop", "first"])
def test_vectorized_quantize_equals_a_per_date_qcut(ties):
    rng = np.random.default_rng(0)
    n = 2000
    df = pd.DataFrame({"date": rng.integers(0, 150, n), "symbol": np.arange(n).astype(str),
                       "factor": rng.integers(0, 15, n).astype(float)})  # many ties
    df.loc[rng.random(n) < 0.1, "factor"] = np.nan
    reference = pd.Series(pd.NA, index=df.index, dtype="Int64")
    for _, g in df.groupby("date"):
        values = g["factor"].dropna()
        if len(values) < 5:
            continue
        try:
            cut = pd.qcut(values.rank(method="first") if ties == "first" else values, 5, labels=False)
        except ValueError:
            continue
        reference.loc[values.index] = cut.astype("int64") + 1
    out = quantize(df, quantiles=5, ties=ties)
    assert out.notna().sum() > 500
    pd.testing.assert_series_equal(out, reference.rename("quantile"))


def test_evaluate_factor_bundles_the_hand_computed_metrics(q_frame):
    from qsdk.quant.metrics import evaluate_factor

    ev = evaluate_factor(q_frame, quantiles=2, cost_bps=10.0)
    s = ev.summary
    assert s["n_dates"] == 3
    rank_ic = information_coefficient(q_frame)
    assert s["rank_ic_mean"] == pytest.approx(rank_ic.mean())
    assert s["rank_ic_t_stat"] == pytest.approx(ic_summary(rank_ic).t_stat)
    assert s["ic_mean"] == pytest.approx(information_coefficient(q_frame, method="pearson").mean())
    assert s["top_minus_bottom_mean"] == pytest.approx((0.025 + 0.01 + 0.01) / 3)
    assert s["top_turnover_mean"] == pytest.approx(0.75) and s["bottom_turnover_mean"] == pytest.approx(0.75)
    assert s["rank_autocorrelation_mean"] == pytest.approx(-0.9)
    assert s["ls_mean_return_annualized"] == pytest.approx(0.045 / 3 * 252)
    assert s["ls_net_mean_return_annualized"] == pytest.approx(0.040 / 3 * 252)
    assert s["ls_net_annual_return"] == pytest.approx((1.023 * 1.008 * 1.009) ** (252 / 3) - 1)
    assert s["ls_turnover_mean"] == pytest.approx(5 / 3)
    np.testing.assert_allclose(ev.quantile_mean.to_numpy(), [0.025 / 3, 0.07 / 3])
    np.testing.assert_allclose(ev.daily["net"].to_numpy(), [0.023, 0.008, 0.009], atol=1e-12)
    assert {"ic", "rank_ic", "top_minus_bottom", "gross", "net", "top_turnover", "rank_autocorrelation"} <= set(
        ev.daily.columns)


def test_evaluate_factor_degrades_to_nan_without_enough_names():
    from qsdk.quant.metrics import evaluate_factor

    df = frame([*day(D1, "AB", [1.0, 2.0], [0.01, 0.02]), *day(D2, "AB", [2.0, 1.0], [0.01, 0.02])])
    ev = evaluate_factor(df, quantiles=5)
    assert ev.summary["n_dates"] == 2 and ev.summary["rank_ic_mean"] == pytest.approx(0.0)
    assert math.isnan(ev.summary["ls_sharpe"]) and math.isnan(ev.summary["top_minus_bottom_mean"])


def test_daily_series_computed_in_pieces_summarize_to_the_whole_range_evaluation():
    """The backfill evaluates year partitions separately (each with a few sessions of lookback)
    and summarizes the concatenated daily series: that must equal one evaluation of the range."""
    from qsdk.quant.metrics import daily_metrics, evaluate_factor, summarize_daily

    rng = np.random.default_rng(7)
    dates = pd.bdate_range("2021-01-01", periods=60)
    symbols = [f"S{i:02d}" for i in range(25)]
    df = pd.DataFrame([(d, s) for d in dates for s in symbols], columns=["date", "symbol"])
    df["factor"] = rng.standard_normal(len(df))
    df["forward_return"] = 0.01 * (0.3 * df["factor"] + rng.standard_normal(len(df)))
    df = df.sample(frac=0.9, random_state=1).sort_values(["date", "symbol"]).reset_index(drop=True)

    whole = evaluate_factor(df, quantiles=5, cost_bps=10.0)
    pieces, by_date = [], []
    for lo, hi in ((0, 20), (20, 45), (45, 60)):
        window = df[df["date"].between(dates[max(lo - 3, 0)], dates[hi - 1])]
        daily, q = daily_metrics(window, quantiles=5, cost_bps=10.0)
        pieces.append(daily.loc[dates[lo]:])
        by_date.append(q.loc[dates[lo]:])
    daily = pd.concat(pieces)
    pd.testing.assert_frame_equal(daily, whole.daily)
    pd.testing.assert_frame_equal(pd.concat(by_date), whole.quantile_by_date)
    assert summarize_daily(daily) == pytest.approx(whole.summary, nan_ok=True)
    assert whole.summary["rank_ic_mean"] > 0.1  # the planted factor: the comparison is not vacuous


def _panel_with_gaps(seed: int = 3) -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    """A planted factor on 40 sessions x 12 names, with the awkward dates a partition can hit:
    dates with fewer names than quantiles, and a run of dates where the factor is missing
    altogether (longer than a partition's look-back)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=40)
    symbols = [f"S{i:02d}" for i in range(12)]
    df = pd.DataFrame([(d, s) for d in dates for s in symbols], columns=["date", "symbol"])
    df["factor"] = rng.standard_normal(len(df))
    df["forward_return"] = 0.01 * (0.4 * df["factor"] + rng.standard_normal(len(df)))
    df = df.sample(frac=0.9, random_state=seed)
    few = df["date"].isin(dates[[7, 20, 21]]) & (df["symbol"] > "S02")  # 3 names or fewer: no quantiles
    gap = df["date"].isin(dates[26:33])  # no factor at all for 7 sessions
    df = df[~few & ~gap].sort_values(["date", "symbol"]).reset_index(drop=True)
    return df, dates


def _in_pieces(df, grid, bounds, *, lookback, **kwargs):
    daily, by_date = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        window = df[df["date"].between(grid[max(lo - lookback, 0)], grid[hi - 1])]
        d, q = daily_metrics(window, dates=grid[max(lo - lookback, 0):hi], **kwargs)
        daily.append(d.loc[grid[lo]:])
        by_date.append(q.loc[grid[lo]:])
    return pd.concat(daily), pd.concat(by_date)


@pytest.mark.parametrize("horizon", [1, 3])
def test_daily_metrics_are_identical_for_any_partitioning_of_the_range(horizon):
    """Property: for random partitionings of the range (blocks of any length, single days, one
    pass), every per-date row is bit-identical; each piece reads `horizon + 1` grid dates before it
    and steps back on the same grid of sessions, as the evaluate_daily stage does."""
    df, grid = _panel_with_gaps()
    options = {"quantiles": 4, "cost_bps": 7.0, "horizon": horizon}
    whole, whole_q = daily_metrics(df, dates=grid, **options)
    assert whole["top_turnover"].notna().sum() > 15 and whole["rank_autocorrelation"].notna().sum() > 15
    assert grid[7] in whole.index and np.isnan(whole.loc[grid[7], "top_minus_bottom"])  # too few names
    rng = np.random.default_rng(horizon)
    partitionings = [[0, len(grid)], list(range(len(grid) + 1))]  # one pass, single days
    # random cuts (blocks of any length): 5 per horizon keeps `make test-fast` under a minute; the
    # single days above are the extreme every cut is made of
    partitionings += [sorted({0, len(grid), *rng.integers(1, len(grid), size=rng.integers(1, 8))})
                      for _ in range(5)]
    for bounds in partitionings:
        daily, by_date = _in_pieces(df, grid, bounds, lookback=horizon + 1, **options)
        pd.testing.assert_frame_equal(daily, whole, check_exact=True, obj=f"daily cut at {bounds}")
        pd.testing.assert_frame_equal(by_date, whole_q, check_exact=True)
    # positive control: stepping back over the dates present in each piece instead of the grid
    # would make the date after the gap depend on the cut
    pieces = [daily_metrics(df[df["date"].between(grid[lo], grid[39])], **options)[0].loc[grid[33]:]
              for lo in (0, 31)]
    assert not pieces[0]["top_turnover"].equals(pieces[1]["top_turnover"])


def test_quantile_count_is_the_parameter_and_dates_with_fewer_names_are_left_out():
    df, grid = _panel_with_gaps()
    daily, by_date = daily_metrics(df, quantiles=4, dates=grid)
    assert list(by_date.columns) == [1, 2, 3, 4]
    left_out = {grid[7], grid[20], grid[21]}
    assert left_out.isdisjoint(by_date.dropna(how="all").index)
    assert daily.loc[sorted(left_out), "rank_ic"].notna().all()  # the IC is still computed
    assert daily.loc[sorted(left_out), ["top_minus_bottom", "gross", "top_turnover"]].isna().all().all()
    # the date after a left-out date has no sub-portfolio to replace: its legs are bought in full
    assert daily.loc[grid[8], "turnover"] == pytest.approx(2.0)
    assert np.isnan(daily.loc[grid[8], "top_turnover"])


def test_overlap_t_stat_equals_statsmodels_hac():
    sm = pytest.importorskip("statsmodels.api")
    from qsdk.quant.metrics import long_run_variance

    rng = np.random.default_rng(11)
    x = 0.02 + np.convolve(rng.standard_normal(300), np.ones(5) / 5, mode="valid") * 0.1
    ours = ic_summary(pd.Series(x), lags=4)
    for kernel in ("uniform", "bartlett"):
        fit = sm.OLS(x, np.ones(len(x))).fit(cov_type="HAC", cov_kwds={"maxlags": 4, "kernel": kernel,
                                                                         "use_correction": False})
        se = math.sqrt(long_run_variance(x, lags=4, kernel=kernel) / len(x))
        assert se == pytest.approx(float(fit.bse[0]), rel=1e-10)
    assert ours.t_stat == pytest.approx(x.mean() / math.sqrt(long_run_variance(x, lags=4) / len(x)))
    assert ours.lags == 4 and ic_summary(pd.Series(x)).t_stat == pytest.approx(
        x.mean() / (x.std(ddof=1) / math.sqrt(len(x))))
    with pytest.raises(ValueError, match="lags must be an integer >= 0"):
        ic_summary(pd.Series(x), lags=-1)


def _persistent_signal(seed: int, *, n: int = 50, sessions: int = 750) -> pd.DataFrame:
    """A persistent factor (AR(1), 0.98) that predicts each session's return two sessions later."""
    from qsdk.quant.features import label_frame

    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-01", periods=sessions)
    f = np.zeros((sessions, n))
    f[0] = rng.standard_normal(n)
    for t in range(1, sessions):
        f[t] = 0.98 * f[t - 1] + math.sqrt(1 - 0.98**2) * rng.standard_normal(n)
    r = 0.01 * rng.standard_normal((sessions, n)) + 0.0006 * np.vstack([np.zeros((2, n)), f[:-2]])
    keys = {"date": np.repeat(dates, n), "symbol": np.tile([f"S{i:02d}" for i in range(n)], sessions)}
    prices = pd.DataFrame({**keys, "adj_close": 100 * np.exp(np.cumsum(r, axis=0)).ravel()})
    return merge_factor_returns(pd.DataFrame({**keys, "value": f.ravel()}), label_frame(prices, lag=1, horizon=5))


def test_horizon_5_statistics_match_non_overlapping_dates_not_the_naive_ones():
    """A planted persistent signal at horizon 5: consecutive labels share 4 sessions of returns, so
    the naive t statistic is inflated about sqrt(5)-fold. The overlap-aware t statistic matches the
    one of non-overlapping dates (averaged over the 5 offsets) within sampling error; the Sharpe
    ratio is that of non-overlapping holding periods, annualised by the holding period."""
    ev = evaluate_factor(_persistent_signal(0), quantiles=5, horizon=5)
    ic = ev.daily["rank_ic"].dropna()
    naive = ic_summary(ic).t_stat
    offsets = [ic_summary(ic.iloc[k::5]).t_stat for k in range(5)]
    non_overlapping, spread = float(np.mean(offsets)), float(np.std(offsets))
    overlap_aware = ev.summary["rank_ic_t_stat"]
    assert non_overlapping > 5  # the signal is there
    assert abs(overlap_aware - non_overlapping) < max(1.0, 3 * spread), (overlap_aware, offsets)
    assert naive > 1.8 * overlap_aware
    gross = ev.daily["gross"]
    by_offset = [performance_summary(gross.iloc[k::5].dropna(), periods_per_year=252 / 5) for k in range(5)]
    assert ev.summary["ls_sharpe"] == pytest.approx(np.mean([p.sharpe for p in by_offset]))
    assert ev.summary["ls_annual_return"] == pytest.approx(np.mean([p.annual_return for p in by_offset]))
    assert performance_summary(gross.dropna()).sharpe > 1.8 * ev.summary["ls_sharpe"]  # daily-style: inflated


@pytest.mark.parametrize("horizon", [1, 3])
def test_dates_as_objects_give_the_same_rows_indexed_by_the_same_objects(horizon):
    """A Delta `date` column reads into pandas as `datetime.date` objects: the per-date metrics are
    computed on datetime64 (much faster to group) and indexed by the caller's objects again."""
    df, grid = _panel_with_gaps()
    as_objects = df.assign(date=df["date"].dt.date.astype(object))
    object_grid = pd.Index(grid.date, dtype=object)
    options = {"quantiles": 4, "cost_bps": 7.0, "horizon": horizon}
    daily, by_date = daily_metrics(df, dates=grid, **options)
    daily_o, by_date_o = daily_metrics(as_objects, dates=object_grid, **options)
    for result in (daily_o, by_date_o):
        assert result.index.dtype == object and result.index.name == "date"
        assert {type(d) for d in result.index} == {dt.date}
    pd.testing.assert_frame_equal(daily_o.set_axis(pd.DatetimeIndex(daily_o.index, name="date")), daily,
                                  check_exact=True, check_index_type=False)
    pd.testing.assert_frame_equal(by_date_o.set_axis(pd.DatetimeIndex(by_date_o.index, name="date")), by_date,
                                  check_exact=True, check_index_type=False)
    ic = information_coefficient(as_objects)
    assert {type(d) for d in ic.index} == {dt.date}
    np.testing.assert_array_equal(ic.to_numpy(), information_coefficient(df).to_numpy())
    merged = merge_factor_returns(as_objects[["date", "symbol", "factor"]],
                                  as_objects[["date", "symbol", "forward_return"]], factor_column="factor")
    assert {type(d) for d in merged["date"]} == {dt.date}
    expected = merge_factor_returns(df[["date", "symbol", "factor"]], df[["date", "symbol", "forward_return"]],
                                    factor_column="factor")
    pd.testing.assert_frame_equal(merged.assign(date=pd.to_datetime(merged["date"])), expected,
                                  check_exact=True, check_dtype=False)
    # strings are not converted: a date column of text keeps its own index
    as_text = df.assign(date=df["date"].dt.strftime("%Y-%m-%d"))
    assert information_coefficient(as_text).index[0] == grid[0].strftime("%Y-%m-%d")
