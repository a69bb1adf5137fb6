import numpy as np
import pandas as pd
import pytest

from qsdk.quant.calendar import sessions, validate_dates
from qsdk.quant.features import forward_returns
from qsdk.quant.metrics import ic_summary, information_coefficient, merge_factor_returns
from qsdk.quant.synthetic import SyntheticPanel, generate_panel, generate_prices

COLUMNS = ["date", "symbol", "open", "high", "low", "close", "volume", "adj_close"]


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return generate_prices(n_symbols=20, seed=0, split_prob=0.004)


def test_schema_and_dtypes(prices):
    assert list(prices.columns) == COLUMNS
    assert prices["date"].dtype == "datetime64[ns]"
    assert prices["date"].dt.tz is None
    assert (prices["date"] == prices["date"].dt.normalize()).all()
    assert pd.api.types.is_string_dtype(prices["symbol"])
    for col in ["open", "high", "low", "close", "adj_close"]:
        assert prices[col].dtype == "float64"
    assert prices["volume"].dtype == "int64"
    assert prices["symbol"].iloc[0] == "SYN0001"
    assert prices["symbol"].nunique() == 20
    assert isinstance(prices.index, pd.RangeIndex)


def test_sorted_unique_and_on_sessions(prices):
    assert not prices.duplicated(["symbol", "date"]).any()
    assert prices.equals(prices.sort_values(["symbol", "date"]).reset_index(drop=True))
    assert len(validate_dates(prices["date"].unique()).non_sessions) == 0
    all_sessions = sessions("2015-01-01", "2016-12-31")
    for _, g in prices.groupby("symbol"):
        # each symbol trades on a contiguous block of sessions (listed .. delisted)
        lo, hi = all_sessions.get_loc(g["date"].iloc[0]), all_sessions.get_loc(g["date"].iloc[-1])
        assert len(g) == hi - lo + 1


def test_price_invariants(prices):
    assert (prices["high"] >= prices[["open", "close"]].max(axis=1)).all()
    assert (prices["low"] <= prices[["open", "close"]].min(axis=1)).all()
    assert (prices[["open", "high", "low", "close", "adj_close"]] > 0).all().all()
    assert (prices["volume"] > 0).all()
    assert np.isfinite(prices[["open", "high", "low", "close", "adj_close"]]).all().all()


def test_deterministic_and_seed_dependent(prices):
    again = generate_prices(n_symbols=20, seed=0, split_prob=0.004)
    pd.testing.assert_frame_equal(prices, again)
    other = generate_prices(n_symbols=20, seed=1, split_prob=0.004)
    assert not np.allclose(
        prices["close"].to_numpy()[:100], other["close"].to_numpy()[:100], rtol=1e-6
    )


def test_last_adj_close_equals_last_close(prices):
    last = prices.groupby("symbol").tail(1)
    assert (last["adj_close"] == last["close"]).all()


def test_listing_and_delisting():
    n_sessions = len(sessions("2015-01-01", "2016-12-31"))
    with_ld = (
        generate_prices(n_symbols=40, seed=2).groupby("symbol")["date"].agg(["min", "max", "size"])
    )
    assert (with_ld["size"] < n_sessions).sum() >= 2
    assert (with_ld["min"] > pd.Timestamp("2015-01-02")).any()  # listed late
    assert (with_ld["max"] < pd.Timestamp("2016-12-30")).any()  # delisted early
    balanced = generate_prices(n_symbols=40, seed=2, listing_delisting=False)
    assert (balanced.groupby("symbol").size() == n_sessions).all()


def test_splits_and_dividends_are_unadjusted_in_close_but_adjusted_in_adj_close():
    panel = generate_panel(n_symbols=20, seed=0, split_prob=0.004)
    p = panel.prices.copy()
    g = p.groupby("symbol")
    p["raw_ratio"] = p["close"] / g["close"].shift(1)
    p["adj_ratio"] = p["adj_close"] / g["adj_close"].shift(1)
    p["prev_close"] = g["close"].shift(1)
    p["prev_volume"] = g["volume"].shift(1)
    acts = panel.corporate_actions
    assert set(acts.columns) == {"date", "symbol", "split_ratio", "dividend"}
    splits = acts[acts["split_ratio"] != 1.0]
    divs = acts[acts["dividend"] > 0]
    assert len(splits) >= 5 and len(divs) >= 5
    assert set(splits["split_ratio"]) <= {2.0, 3.0, 1.5}
    assert not ((acts["split_ratio"] != 1.0) & (acts["dividend"] > 0)).any()

    events = p.merge(acts, on=["date", "symbol"], how="left")
    events["split_ratio"] = events["split_ratio"].fillna(1.0)
    events["dividend"] = events["dividend"].fillna(0.0)
    rows = events.dropna(subset=["raw_ratio"])
    quiet = rows[(rows["split_ratio"] == 1.0) & (rows["dividend"] == 0.0)]
    # no corporate action: raw and adjusted returns agree
    np.testing.assert_allclose(quiet["raw_ratio"], quiet["adj_ratio"], rtol=1e-9)
    # k:1 split: the raw price drops by k, adj_close is continuous (raw ratio * k == adj ratio)
    sp = rows[rows["split_ratio"] != 1.0]
    np.testing.assert_allclose(sp["raw_ratio"] * sp["split_ratio"], sp["adj_ratio"], rtol=1e-9)
    # on average raw volume scales up by ~k on the split date
    assert (sp["volume"] / sp["prev_volume"]).median() > 1.2
    # dividend D: Yahoo factor (1 - D / previous close) => adj ratio == close / (prev_close - D)
    dv = rows[rows["dividend"] > 0]
    np.testing.assert_allclose(
        dv["close"] / (dv["prev_close"] - dv["dividend"]), dv["adj_ratio"], rtol=1e-9
    )
    assert ((dv["dividend"] / dv["prev_close"]).between(0.002, 0.008)).all()


def test_generate_panel_prices_match_generate_prices_and_signal_schema():
    kwargs = {"n_symbols": 5, "seed": 4, "signal_strength": 0.3}
    panel = generate_panel(**kwargs)
    assert isinstance(panel, SyntheticPanel)
    pd.testing.assert_frame_equal(panel.prices, generate_prices(**kwargs))
    assert list(panel.signal.columns) == ["date", "symbol", "value"]
    pd.testing.assert_frame_equal(
        panel.signal[["date", "symbol"]], panel.prices[["date", "symbol"]]
    )


def _signal_ic_t(signal_strength: float, *, lag: int, seed: int = 0) -> float:
    panel = generate_panel(
        n_symbols=50,
        start="2015-01-01",
        end="2015-12-31",
        seed=seed,
        signal_strength=signal_strength,
    )
    px = panel.prices.assign(forward_return=forward_returns(panel.prices, horizon=1, lag=lag))
    df = merge_factor_returns(panel.signal, px)
    return ic_summary(information_coefficient(df, method="spearman")).t_stat


def test_planted_signal_is_recovered_at_the_lag_one_label():
    assert _signal_ic_t(0.2, lag=1) > 3.0
    # ...and it predicts only that return: the same-day-trade label (lag=0) shows nothing
    assert abs(_signal_ic_t(0.2, lag=0)) < 3.0


@pytest.mark.parametrize("seed", [0, 1])
def test_null_mode_signal_has_no_significant_ic(seed):
    assert abs(_signal_ic_t(0.0, lag=1, seed=seed)) < 3.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_symbols": 0}, "n_symbols"),
        ({"seed": -1}, "seed"),
        ({"split_prob": 1.5}, "split_prob"),
        ({"signal_strength": -0.1}, "signal_strength"),
        ({"start": "2015-01-01", "end": "2015-01-20"}, "at least"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_prices(**kwargs)


def test_values_never_depend_on_the_end_of_the_range():
    """Prefix stability: a partitioned backfill generates one continuous market."""
    kwargs = {"n_symbols": 12, "start": "2015-01-01", "seed": 7, "signal_strength": 0.1, "split_prob": 0.01}
    short = generate_panel(end="2015-08-31", adjustment_anchor="first", **kwargs)
    long = generate_panel(end="2016-12-31", adjustment_anchor="first", **kwargs)
    cut = pd.Timestamp("2015-08-31")
    for name in ("prices", "signal", "corporate_actions"):
        longer = getattr(long, name)
        pd.testing.assert_frame_equal(getattr(short, name), longer[longer["date"] <= cut].reset_index(drop=True))
    # the anchor changes adj_close only (Yahoo anchoring restates it when the range grows)
    yahoo = generate_prices(end="2015-08-31", **kwargs)
    pd.testing.assert_frame_equal(yahoo.drop(columns="adj_close"), short.prices.drop(columns="adj_close"))
    first_rows = short.prices.groupby("symbol").head(1)
    assert (first_rows["adj_close"] == first_rows["close"]).all()


def test_synthetic_source_partitions_join_into_one_market():
    from qsdk.quant import sources

    args = {"n_symbols": 6, "seed": 3, "signal_strength": 0.2}
    whole = sources.load("synthetic", start="2003-01-01", end="2004-12-31", **args)
    parts = pd.concat([sources.load("synthetic", start="2003-01-01", end="2003-12-31", **args),
                       sources.load("synthetic", start="2004-01-01", end="2004-12-31", **args)], ignore_index=True)
    pd.testing.assert_frame_equal(whole.sort_values(["symbol", "date"]).reset_index(drop=True),
                                  parts.sort_values(["symbol", "date"]).reset_index(drop=True))
    signal = sources.load_signals("synthetic", start="2004-01-01", end="2004-12-31", **args)
    assert list(signal.columns) == ["date", "symbol", "value"]
    assert len(signal) == len(whole[whole["date"] >= "2004-01-01"])
    assert len(sources.load_signals("bokeh", start="2004-01-01", end="2004-12-31")) == 0
    # the market starts on 2000-01-03: nothing before, and a short first window is its prefix
    assert len(sources.load("synthetic", start="1999-01-01", end="1999-12-31", **args)) == 0
    early = sources.load("synthetic", start="1999-01-01", end="2000-01-10", **args)
    longer = sources.load("synthetic", start="2000-01-01", end="2000-03-31", **args)
    assert early["date"].min() == pd.Timestamp("2000-01-03")
    pd.testing.assert_frame_equal(early, longer[longer["date"] <= "2000-01-10"].reset_index(drop=True))


def test_rows_from_returns_the_same_rows_as_filtering_the_full_panel():
    args = {"n_symbols": 30, "start": "2015-01-01", "end": "2016-12-31", "seed": 3, "signal_strength": 0.1}
    full = generate_panel(**args)
    part = generate_panel(**args, rows_from="2016-03-01")
    for name in ("prices", "signal", "corporate_actions"):
        expected = getattr(full, name)
        expected = expected[expected["date"] >= pd.Timestamp("2016-03-01")].reset_index(drop=True)
        assert len(expected) > 0
        pd.testing.assert_frame_equal(getattr(part, name), expected)


def test_vendor_delivery_publishes_late_and_restates_the_same_rows_in_any_range():
    from qsdk.quant.calendar import session_closes
    from qsdk.quant.synthetic import generate_panel, vendor_delivery

    panel = generate_panel(n_symbols=20, start="2015-01-01", end="2015-12-31", seed=2)
    delivered = vendor_delivery(panel.signal, seed=2)
    close = session_closes(delivered["date"])
    first = ~delivered.duplicated(["date", "symbol"])
    on_time, late = first & (delivered["published_at"] == close), first & (delivered["published_at"] > close)
    restated = ~first
    assert 0.85 < on_time.mean() < 0.95 and 0.07 < late.mean() < 0.13 and 0.03 < restated.mean() < 0.07
    # late: one hour after the next session's open (14:30 or 13:30 UTC), so after the next open
    next_day = delivered.loc[late, "published_at"] - pd.Timedelta(hours=1)
    assert (next_day.dt.hour.isin([13, 14]) & (next_day.dt.minute == 30)).all()
    assert (delivered.loc[late, "published_at"].dt.normalize().dt.tz_localize(None) >
            pd.to_datetime(delivered.loc[late, "date"])).all()
    # restated: the original value first, a revised one three sessions later
    original = delivered[first].set_index(["date", "symbol"])
    revised = delivered[restated].set_index(["date", "symbol"])
    assert (revised["published_at"] > original.loc[revised.index, "published_at"] + pd.Timedelta(days=2)).all()
    assert (revised["value"] != original.loc[revised.index, "value"]).all()
    signal = panel.signal.set_index(["date", "symbol"])["value"]
    assert (original["value"] == signal.loc[original.index]).all()
    # which rows are late or restated does not depend on the range delivered
    part = vendor_delivery(panel.signal[panel.signal["date"] >= pd.Timestamp("2015-07-01")], seed=2)
    tail = delivered[delivered["date"] >= pd.Timestamp("2015-07-01")].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, tail)
