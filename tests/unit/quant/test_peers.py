"""qsdk's metrics against the peer libraries, as oracles: alphalens-reloaded (IC, quantile
returns, turnover, rank autocorrelation) and empyrical-reloaded (Sharpe, compound annual return,
annual volatility, Sortino, Calmar, maximum drawdown), on synthetic and on the packaged data.

alphalens measures a forward return from the close of the signal date (no execution lag); qsdk's
label is traded ``lag`` sessions later. The alignment is explicit: alphalens gets the prices
shifted back by ``lag`` sessions, so its ``1D`` return at t is ``adj_close[t+lag+1] /
adj_close[t+lag] - 1``, and the test first checks that this is qsdk's label.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from qsdk.quant import metrics
from qsdk.quant.features import compute_features, label_frame

alphalens = pytest.importorskip("alphalens")
empyrical = pytest.importorskip("empyrical")

LAG = 1
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore:.*:Warning:alphalens")


def _bokeh_prices() -> pd.DataFrame:
    from qsdk.quant.sources import load_bokeh

    bars = load_bokeh(start="2011-01-01", end="2012-12-31")
    bars = bars[bars["symbol"] != "FB"]  # listed mid-2012: a fixed universe of 4 names
    return bars[["date", "symbol", "adj_close", "close", "volume"]].assign(date=lambda f: pd.to_datetime(f["date"]))


def _synthetic_prices() -> pd.DataFrame:
    from qsdk.quant.synthetic import generate_panel

    panel = generate_panel(n_symbols=30, start="2015-01-01", end="2015-12-31", seed=3, signal_strength=0.3,
                           listing_delisting=False)
    return panel.prices[["date", "symbol", "adj_close", "close", "volume"]]


@pytest.fixture(scope="module", params=["synthetic", "bokeh"])
def case(request):
    """(qsdk frame, alphalens factor data, quantiles) for 21-session momentum."""
    prices = (_synthetic_prices() if request.param == "synthetic" else _bokeh_prices()).reset_index(drop=True)
    quantiles = 5 if request.param == "synthetic" else 3
    factor = compute_features(prices, spec=[{"name": "mom_21", "kind": "momentum", "window": 21}])
    df = metrics.merge_factor_returns(factor, label_frame(prices, lag=LAG, horizon=1), factor_column="mom_21")
    wide = prices.pivot(index="date", columns="symbol", values="adj_close").sort_index()
    al_factor = df.set_index(["date", "symbol"])["factor"].rename_axis(["date", "asset"])
    shifted = wide.shift(-LAG)  # row t holds the close of t+lag: alphalens' 1D return is qsdk's label
    al_returns = alphalens.utils.compute_forward_returns(al_factor, shifted, periods=(1,), filter_zscore=None)
    ours = df.set_index(["date", "symbol"])["forward_return"].rename_axis(["date", "asset"])
    pd.testing.assert_series_equal(al_returns["1D"].reindex(ours.index), ours, check_names=False, check_freq=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = alphalens.utils.get_clean_factor_and_forward_returns(
            al_factor, shifted, quantiles=quantiles, periods=(1,), filter_zscore=None, max_loss=1.0)
    df = df[df.set_index(["date", "symbol"]).index.isin(data.index)].reset_index(drop=True)
    assert len(data) > 500 and len(df) == len(data)
    return df, data, quantiles


def _by_date(series: pd.Series) -> pd.Series:
    out = series.copy()
    out.index = pd.DatetimeIndex(np.asarray(out.index, dtype="datetime64[ns]"), name="date")
    return out.astype("float64")


def test_rank_ic_equals_alphalens(case):
    df, data, _ = case
    theirs = alphalens.performance.factor_information_coefficient(data)["1D"]
    ours = metrics.information_coefficient(df, method="spearman")
    pd.testing.assert_series_equal(_by_date(ours), _by_date(theirs.dropna()), check_names=False, rtol=1e-10)
    pearson = df.groupby("date")[["factor", "forward_return"]].apply(lambda g: g["factor"].corr(g["forward_return"]))
    pd.testing.assert_series_equal(_by_date(metrics.information_coefficient(df, method="pearson")),
                                   _by_date(pearson.dropna()), check_names=False, rtol=1e-10)


def test_quantiles_and_mean_return_by_quantile_equal_alphalens(case):
    df, data, quantiles = case
    ours = metrics.quantize(df, quantiles=quantiles)
    np.testing.assert_array_equal(ours.to_numpy(dtype="int64"), data["factor_quantile"].to_numpy())
    theirs, _ = alphalens.performance.mean_return_by_quantile(data, by_date=True, demeaned=False)
    theirs = theirs["1D"].unstack("factor_quantile")
    by_date = metrics.quantile_returns(df, quantiles=quantiles).by_date
    np.testing.assert_allclose(by_date.to_numpy(), theirs.to_numpy(), rtol=1e-12)


def test_quantile_turnover_equals_alphalens(case):
    df, data, quantiles = case
    for quantile in (1, quantiles):
        theirs = alphalens.performance.quantile_turnover(data["factor_quantile"], quantile, period=1)
        ours = metrics.quantile_turnover(df, quantile=quantile, quantiles=quantiles)
        pd.testing.assert_series_equal(_by_date(ours), _by_date(theirs), check_names=False, check_freq=False)


def test_factor_rank_autocorrelation_equals_alphalens_on_a_fixed_universe(case):
    df, data, _ = case
    theirs = alphalens.performance.factor_rank_autocorrelation(data, period=1)
    ours = metrics.factor_rank_autocorrelation(df)
    pd.testing.assert_series_equal(_by_date(ours), _by_date(theirs), check_names=False, check_freq=False, rtol=1e-10)


def test_factor_rank_autocorrelation_differs_from_alphalens_when_the_universe_changes():
    """The documented difference: alphalens ranks each full cross-section, then correlates the
    common names' ranks; qsdk re-ranks among the common names (a name that left or arrived does
    not shift the others' ranks)."""
    dates = pd.to_datetime(["2021-01-04", "2021-01-05"])
    df = pd.DataFrame({"date": [dates[0]] * 4 + [dates[1]] * 3, "symbol": list("ABCDABC"),
                       "factor": [4.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0], "forward_return": 0.0})
    data = df.set_index(["date", "symbol"]).rename_axis(["date", "asset"])[["factor"]]
    theirs = alphalens.performance.factor_rank_autocorrelation(data, period=1).iloc[-1]
    ours = metrics.factor_rank_autocorrelation(df).iloc[-1]
    # common names A B C: day one ranks 4 1 2 among ABCD, 3 1 2 among ABC; day two 1 2 3
    assert ours == pytest.approx(pd.Series([3.0, 1.0, 2.0]).corr(pd.Series([1.0, 2.0, 3.0])))  # -0.5
    assert theirs == pytest.approx(pd.Series([4.0, 1.0, 2.0]).corr(pd.Series([1.0, 2.0, 3.0])))
    assert ours != pytest.approx(theirs)


def test_performance_equals_empyrical(case):
    df, _, quantiles = case
    returns = metrics.long_short_returns(df, quantiles=quantiles, cost_bps=5.0)["net"]
    ours = metrics.performance_summary(returns)
    assert ours.n > 200 and ours.max_drawdown < 0
    expected = {
        "sharpe": empyrical.sharpe_ratio(returns),
        "annual_return": empyrical.annual_return(returns),
        "annual_volatility": empyrical.annual_volatility(returns),
        "max_drawdown": empyrical.max_drawdown(returns),
        "sortino": empyrical.sortino_ratio(returns),
        "calmar": empyrical.calmar_ratio(returns),
    }
    for key, value in expected.items():
        assert getattr(ours, key) == pytest.approx(float(value), rel=1e-10), key
    assert ours.mean_return_annualized == pytest.approx(returns.mean() * 252)
    assert ours.annual_return != pytest.approx(ours.mean_return_annualized)  # the honest name matters
