import math

import numpy as np
import pandas as pd
import pytest

from qsdk.quant.features import (
    FEATURE_KINDS,
    amihud_illiquidity,
    at_session_close,
    compute_features,
    distance_to_high,
    forward_returns,
    label_frame,
    lookback_sessions,
    momentum,
    realized_volatility,
    reversal,
    volume_zscore,
)
from qsdk.quant.metrics import ic_summary, information_coefficient, merge_factor_returns
from qsdk.quant.synthetic import generate_prices

DATES = pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-08"])


@pytest.fixture
def tiny() -> pd.DataFrame:
    """Two symbols, five sessions, rows deliberately shuffled."""
    a = pd.DataFrame(
        {
            "date": DATES,
            "symbol": "A",
            "adj_close": [10.0, 11.0, 12.0, 15.0, 12.0],
            "volume": [100, 200, 300, 600, 600],
        }
    )
    b = pd.DataFrame(
        {
            "date": DATES,
            "symbol": "B",
            "adj_close": [20.0, 18.0, 18.0, 27.0, 30.0],
            "volume": [5, 5, 5, 5, 5],
        }
    )
    df = pd.concat([a, b], ignore_index=True)
    return df.sample(frac=1.0, random_state=3)


def _by_key(values: pd.Series, frame: pd.DataFrame, symbol: str) -> list[float]:
    keyed = pd.Series(values.to_numpy(), index=pd.MultiIndex.from_frame(frame[["symbol", "date"]]))
    return keyed.loc[symbol].sort_index().tolist()


def test_momentum_hand_computed(tiny):
    out = momentum(tiny, window=2)
    assert out.index.equals(tiny.index)
    # A: t2 = 12/10 - 1 = 0.2 ; t3 = 15/11 - 1 = 0.363636... ; t4 = 12/12 - 1 = 0
    np.testing.assert_allclose(
        _by_key(out, tiny, "A"), [np.nan, np.nan, 0.2, 15 / 11 - 1, 0.0], equal_nan=True
    )
    # B: t2 = 18/20 - 1 = -0.1 ; t3 = 27/18 - 1 = 0.5 ; t4 = 30/18 - 1 = 0.6667
    np.testing.assert_allclose(
        _by_key(out, tiny, "B"), [np.nan, np.nan, -0.1, 0.5, 30 / 18 - 1], equal_nan=True
    )


def test_momentum_with_skip_hand_computed(tiny):
    out = momentum(tiny, window=3, skip=1)
    # A: t3 = adj[2]/adj[0] - 1 = 12/10 - 1 = 0.2 ; t4 = adj[3]/adj[1] - 1 = 15/11 - 1
    np.testing.assert_allclose(
        _by_key(out, tiny, "A"), [np.nan, np.nan, np.nan, 0.2, 15 / 11 - 1], equal_nan=True
    )


def test_reversal_hand_computed(tiny):
    out = reversal(tiny, window=1)
    # A: -(11/10 - 1) = -0.1 ; -(12/11 - 1) ; -(15/12 - 1) = -0.25 ; -(12/15 - 1) = +0.2
    np.testing.assert_allclose(
        _by_key(out, tiny, "A"), [np.nan, -0.1, -(12 / 11 - 1), -0.25, 0.2], equal_nan=True
    )


def test_realized_volatility_hand_computed(tiny):
    out = realized_volatility(tiny, window=2, annualize=False)
    # sample std of two numbers a, b (ddof=1) is |a - b| / sqrt(2)
    # A at t2: log returns ln(11/10)=0.0953102, ln(12/11)=0.0870114 -> 0.0082988/1.4142136=0.0058681
    assert _by_key(out, tiny, "A")[2] == pytest.approx(0.0058681, abs=1e-7)
    # A at t3: ln(12/11)=0.0870114, ln(15/12)=0.2231436 -> 0.1361322/1.4142136 = 0.0962600
    assert _by_key(out, tiny, "A")[3] == pytest.approx(0.0962600, abs=1e-7)
    assert math.isnan(_by_key(out, tiny, "A")[1])  # needs window + 1 = 3 prices
    annual = realized_volatility(tiny, window=2)
    assert _by_key(annual, tiny, "A")[2] == pytest.approx(0.0058681 * math.sqrt(252), abs=1e-6)


def test_volume_zscore_hand_computed(tiny):
    out = volume_zscore(tiny, window=3)
    # A t2: window [100, 200, 300], mean 200, std 100 -> (300 - 200) / 100 = 1.0
    # A t3: window [200, 300, 600], mean 366.667, std sqrt((166.67^2+66.67^2+233.33^2)/2)=208.167
    #       -> (600 - 366.667) / 208.167 = 1.120897
    # A t4: window [300, 600, 600], mean 500, std sqrt((200^2+100^2+100^2)/2)=173.205 -> 0.57735
    np.testing.assert_allclose(
        _by_key(out, tiny, "A"), [np.nan, np.nan, 1.0, 1.120897, 0.577350], atol=1e-6
    )
    # B has constant volume: std 0 -> NaN, never inf
    assert all(math.isnan(v) for v in _by_key(out, tiny, "B"))


def test_forward_returns_lag_convention(tiny):
    out = forward_returns(tiny, horizon=1, lag=1)
    # signal at close t -> trade at close t+1 -> return close t+1 .. close t+2
    # A: t0 = 12/11 - 1 ; t1 = 15/12 - 1 = 0.25 ; t2 = 12/15 - 1 = -0.2 ; t3, t4 unavailable
    np.testing.assert_allclose(
        _by_key(out, tiny, "A"), [12 / 11 - 1, 0.25, -0.2, np.nan, np.nan], equal_nan=True
    )
    same_day = forward_returns(tiny, horizon=2, lag=0)
    # A: t0 = 12/10 - 1 = 0.2 ; t1 = 15/11 - 1 ; t2 = 12/12 - 1 = 0
    np.testing.assert_allclose(
        _by_key(same_day, tiny, "A"), [0.2, 15 / 11 - 1, 0.0, np.nan, np.nan], equal_nan=True
    )


def test_compute_features_frame(tiny):
    spec = [
        {"name": "mom_2", "kind": "momentum", "window": 2},
        {"name": "rev_1", "kind": "reversal", "window": 1},
        {"name": "vol_2", "kind": "realized_volatility", "window": 2},
        {"name": "vz_3", "kind": "volume_zscore", "window": 3},
    ]
    out = compute_features(tiny, spec=spec)
    assert list(out.columns) == ["date", "symbol", "mom_2", "rev_1", "vol_2", "vz_3"]
    assert out.index.equals(tiny.index)
    pd.testing.assert_series_equal(out["mom_2"], momentum(tiny, window=2), check_names=False)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([{"name": "x", "kind": "magic"}], "known kinds"),
        ([{"name": "x", "kind": "momentum", "windw": 3}], "Bad parameters"),
        ([{"kind": "momentum", "window": 3}], "'name' and 'kind'"),
        (
            [{"name": "x", "kind": "reversal"}, {"name": "x", "kind": "reversal"}],
            "duplicated or reserved",
        ),
        ([{"name": "date", "kind": "reversal"}], "duplicated or reserved"),
        ([], "non-empty"),
    ],
)
def test_compute_features_bad_spec(tiny, spec, match):
    with pytest.raises(ValueError, match=match):
        compute_features(tiny, spec=spec)


def test_unknown_kind_message_lists_all_kinds(tiny):
    with pytest.raises(ValueError) as info:
        compute_features(tiny, spec=[{"name": "x", "kind": "magic"}])
    for kind in FEATURE_KINDS:
        assert kind in str(info.value)


def test_input_validation(tiny):
    with pytest.raises(ValueError, match="smaller than window"):
        momentum(tiny, window=2, skip=2)
    with pytest.raises(ValueError, match="missing columns"):
        momentum(tiny.drop(columns="adj_close"), window=2)
    with pytest.raises(ValueError, match="duplicated"):
        momentum(pd.concat([tiny, tiny.iloc[:1]], ignore_index=True), window=2)
    with pytest.raises(ValueError, match="horizon"):
        forward_returns(tiny, horizon=0)


SPEC = [
    {"name": "mom_20", "kind": "momentum", "window": 20},
    {"name": "mom_60_5", "kind": "momentum", "window": 60, "skip": 5},
    {"name": "rev_5", "kind": "reversal", "window": 5},
    {"name": "rvol_20", "kind": "realized_volatility", "window": 20},
    {"name": "vz_20", "kind": "volume_zscore", "window": 20},
]


def test_features_do_not_change_when_the_future_is_removed():
    prices = generate_prices(n_symbols=8, seed=5)
    cutoff = pd.Timestamp("2015-09-30")
    full = compute_features(prices, spec=SPEC)
    past = compute_features(prices[prices["date"] <= cutoff], spec=SPEC)
    pd.testing.assert_frame_equal(full.loc[past.index], past)


@pytest.fixture(scope="module")
def null_frame() -> pd.DataFrame:
    prices = generate_prices(n_symbols=50, start="2015-01-01", end="2015-12-31", seed=8)
    feats = compute_features(prices, spec=SPEC)
    feats["forward_return"] = forward_returns(prices, horizon=1, lag=1)
    # deliberately mis-aligned feature: the 20-day momentum as of t+2 (contains the label period)
    feats["leak"] = feats.groupby("symbol")["mom_20"].shift(-2)
    return feats


@pytest.mark.parametrize("name", [s["name"] for s in SPEC])
def test_no_look_ahead_ic_on_null_data(null_frame, name):
    df = merge_factor_returns(null_frame, null_frame, factor_column=name)
    t_stat = ic_summary(information_coefficient(df, method="spearman")).t_stat
    assert abs(t_stat) < 3.0, f"{name} has |t| = {abs(t_stat):.2f} on null data: look-ahead?"


def test_look_ahead_check_has_power(null_frame):
    # positive control: a feature built from the future is flagged by the same test
    df = merge_factor_returns(null_frame, null_frame, factor_column="leak")
    assert ic_summary(information_coefficient(df, method="spearman")).t_stat > 3.0


def test_amihud_illiquidity_hand_computed(tiny):
    frame = tiny.assign(close=tiny["adj_close"] * 2.0)  # raw close: a 2:1 split happened later
    out = amihud_illiquidity(frame, window=2)
    # A returns: .1, 1/11, .25, -.2 ; dollar volume close*volume: 22*200, 24*300, 30*600, 24*600
    r = [0.1, 12 / 11 - 1, 0.25, -0.2]
    dv = [22 * 200, 24 * 300, 30 * 600, 24 * 600]
    ratio = [abs(x) / v * 1e6 for x, v in zip(r, dv, strict=True)]
    expected = [np.nan, np.nan, (ratio[0] + ratio[1]) / 2, (ratio[1] + ratio[2]) / 2, (ratio[2] + ratio[3]) / 2]
    np.testing.assert_allclose(_by_key(out, frame, "A"), expected, equal_nan=True)


def test_distance_to_high_hand_computed(tiny):
    out = distance_to_high(tiny, window=3)
    # A: 10 11 12 15 12 -> t2: 12/12-1 = 0 ; t3: 15/15-1 = 0 ; t4: 12/15-1 = -0.2
    np.testing.assert_allclose(_by_key(out, tiny, "A"), [np.nan, np.nan, 0.0, 0.0, -0.2], equal_nan=True)


def test_label_frame_states_the_execution_lag(tiny):
    labels = label_frame(tiny, lag=1, horizon=2)
    a = labels[labels["symbol"] == "A"].sort_values("date")
    # signal at close D0 -> trade at close D1 -> exit at close D3: 15/11 - 1 ; D1 -> D2, D4: 12/12 - 1
    assert list(a["date"]) == list(DATES[:2])
    assert list(a["trade_date"]) == list(DATES[1:3])
    assert list(a["exit_date"]) == list(DATES[3:5])
    np.testing.assert_allclose(a["forward_return"], [15 / 11 - 1, 0.0])


def test_lookback_sessions_is_the_longest_window():
    spec = [{"name": "a", "kind": "momentum", "window": 63}, {"name": "b", "kind": "volume_zscore"},
            {"name": "c", "kind": "momentum", "window": 252, "skip": 21}]
    assert lookback_sessions(spec) == 252
    assert lookback_sessions([{"name": "v", "kind": "realized_volatility"}]) == 20  # the default window
    with pytest.raises(ValueError, match="Unknown feature kind"):
        lookback_sessions([{"name": "x", "kind": "nope"}])


def test_features_on_a_lookback_slice_equal_the_full_history():
    prices = generate_prices(n_symbols=4, seed=2, listing_delisting=False)
    spec = [{"name": "m", "kind": "momentum", "window": 60, "skip": 5},
            {"name": "h", "kind": "distance_to_high", "window": 40},
            {"name": "v", "kind": "realized_volatility", "window": 30},
            {"name": "z", "kind": "volume_zscore", "window": 25},
            {"name": "a", "kind": "amihud_illiquidity", "window": 30}]
    full = compute_features(prices, spec=spec)
    dates = sorted(prices["date"].unique())
    start = dates[300]
    sliced = prices[prices["date"] >= dates[300 - lookback_sessions(spec)]].reset_index(drop=True)
    part = compute_features(sliced, spec=spec)
    keep = full["date"] >= start
    pd.testing.assert_frame_equal(full[keep].reset_index(drop=True),
                                  part[part["date"] >= start].reset_index(drop=True))


def test_at_session_close_stamps_the_close_including_early_closes():
    frame = pd.DataFrame({"date": pd.to_datetime(["2012-11-23", "2012-11-26"]), "symbol": ["A", "A"]})
    out = at_session_close(frame, known_after=pd.Timedelta(minutes=15))
    assert list(out["event_time"]) == [pd.Timestamp("2012-11-23 18:00", tz="UTC"),  # 13:00 New York
                                       pd.Timestamp("2012-11-26 21:00", tz="UTC")]
    assert (out["known_time"] - out["event_time"] == pd.Timedelta(minutes=15)).all()


def _flow_feature_spec() -> list[dict]:
    """MOMENTUM + RISK as the features stage declares them (read from its notebook)."""
    import ast
    import json

    from tests.conftest import REPO

    cells = json.loads((REPO / "notebooks/research/features.ipynb").read_text())["cells"]
    specs = {}
    for cell in cells:
        if cell["cell_type"] == "code" and "MOMENTUM" in "".join(cell["source"]):
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in ("MOMENTUM", "RISK"):
                    specs[node.targets[0].id] = ast.literal_eval(node.value)
    return specs["MOMENTUM"] + specs["RISK"]


def _changed_by_the_future(compute, prices: pd.DataFrame, cutoffs) -> list[str]:
    """Columns whose values up to each cutoff change when the prices after it are removed."""
    full = compute(prices)
    changed = set()
    for cutoff in cutoffs:
        past = compute(prices[prices["date"] <= cutoff])
        for column in past.columns:
            if not full.loc[past.index, column].equals(past[column]):
                changed.add(column)
    return sorted(changed)


def test_every_feature_the_flow_computes_is_unchanged_when_the_future_is_removed():
    """Values at t from prices truncated after t equal values from the full prices, bit for bit,
    for every feature of the features stage (amihud_illiquidity and distance_to_high included),
    at several cutoffs: a feature that read one session ahead would change at the cutoff."""
    from qsdk.quant.features import FEATURE_KINDS

    spec = _flow_feature_spec()
    assert {item["kind"] for item in spec} == set(FEATURE_KINDS)
    prices = generate_prices(n_symbols=6, start="2014-01-01", end="2015-12-31", seed=5)
    dates = sorted(prices["date"].unique())
    cutoffs = [dates[-60], dates[-30], dates[-2]]
    full = compute_features(prices, spec=spec)
    assert full.loc[full["date"] == cutoffs[0], [s["name"] for s in spec]].notna().any().all()  # windows full
    assert _changed_by_the_future(lambda p: compute_features(p, spec=spec), prices, cutoffs) == []


def test_the_truncation_check_catches_a_one_session_leak():
    spec = [{"name": "rev_5", "kind": "reversal", "window": 5}]
    prices = generate_prices(n_symbols=6, start="2015-01-01", end="2015-12-31", seed=5)
    dates = sorted(prices["date"].unique())

    def leaky(p: pd.DataFrame) -> pd.DataFrame:  # uses the next session's close
        out = compute_features(p, spec=spec)
        out["rev_5"] = out.groupby("symbol")["rev_5"].shift(-1)
        return out

    assert _changed_by_the_future(leaky, prices, [dates[-30]]) == ["rev_5"]
