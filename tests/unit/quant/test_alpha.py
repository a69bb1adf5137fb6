import numpy as np
import pandas as pd
import pytest

from qsdk.quant.alpha import combine, cross_sectional_zscore, feature_ics, point_in_time_ic_weights

D = pd.to_datetime(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07", "2021-01-08"])


def test_cross_sectional_zscore_hand_computed():
    df = pd.DataFrame({"date": [D[0]] * 3 + [D[1]] * 3, "symbol": list("ABCABC"),
                       "x": [1.0, 2.0, 3.0, 5.0, 5.0, np.nan], "y": [0.0, 10.0, 20.0, 1.0, 2.0, 3.0]})
    z = cross_sectional_zscore(df, ["x", "y"])
    # D0: x mean 2, std 1 -> -1 0 1 ; y mean 10, std 10 -> -1 0 1 ; D1: x constant -> NaN
    np.testing.assert_allclose(z["x"], [-1, 0, 1, np.nan, np.nan, np.nan])
    np.testing.assert_allclose(z["y"], [-1, 0, 1, -1, 0, 1])
    wide = pd.DataFrame({"date": [D[0]] * 4, "symbol": list("ABCD"), "x": [0.0, 0.0, 0.0, 100.0]})
    assert cross_sectional_zscore(wide, ["x"], clip=1.0)["x"].max() == 1.0  # (100-25)/50 = 1.5 -> 1
    with pytest.raises(ValueError, match="missing columns"):
        cross_sectional_zscore(df, ["nope"])


def test_combine_fixed_and_per_row_weights():
    z = pd.DataFrame({"a": [1.0, -1.0, np.nan, np.nan], "b": [0.5, np.nan, 2.0, np.nan]})
    # (2*a - 1*b) / 3 ; a missing z counts as 0 ; a row without any z is NaN
    np.testing.assert_allclose(combine(z, {"a": 2.0, "b": -1.0}), [(2 - 0.5) / 3, -2 / 3, -2 / 3, np.nan])
    per_row = pd.DataFrame({"a": [1.0, np.nan, 0.0, 1.0], "b": [1.0, 1.0, 0.0, 1.0]})
    # row 1: only b has a weight and its z is missing -> NaN ; row 2: all weights 0 -> NaN
    np.testing.assert_allclose(combine(z, per_row), [0.75, np.nan, np.nan, np.nan])
    with pytest.raises(ValueError, match="not columns"):
        combine(z, {"c": 1.0})


def test_feature_ics_per_date():
    df = pd.DataFrame({"date": [D[0]] * 3 + [D[1]] * 3, "symbol": list("ABCABC"),
                       "good": [1.0, 2.0, 3.0, 3.0, 2.0, 1.0], "bad": [3.0, 2.0, 1.0, 1.0, 2.0, 3.0],
                       "forward_return": [0.01, 0.02, 0.03, 0.05, 0.0, -0.05]})
    ics = feature_ics(df, ["good", "bad"])
    np.testing.assert_allclose(ics["good"], [1.0, 1.0])
    np.testing.assert_allclose(ics["bad"], [-1.0, -1.0])


def test_ic_weights_use_only_labels_known_at_the_decision():
    # signal dates D0..D3, each IC known at the close two sessions later (lag 1 + horizon 1)
    close = {d: d + pd.Timedelta(hours=21) for d in D}
    ics = pd.DataFrame({"f": [0.1, 0.3, 5.0, 7.0]}, index=D[:4])
    known = pd.Series([close[D[2]], close[D[3]], close[D[4]], close[D[4]] + pd.Timedelta(days=3)], index=D[:4])
    decisions = pd.Series([close[d] for d in D], index=D)
    w = point_in_time_ic_weights(ics, known, decisions, window=2, min_periods=1)
    # D0, D1: nothing known yet ; D2: IC(D0) ; D3: mean(IC D0, D1) ; D4: mean(IC D1, D2) -- the huge
    # IC of D2 enters only at the close of D4, when its label is known; D3's never
    np.testing.assert_allclose(w["f"], [np.nan, np.nan, 0.1, 0.2, (0.3 + 5.0) / 2])
    # a decision one minute before the close of D4 must not see the D2 label
    early = pd.Series([close[D[4]] - pd.Timedelta(minutes=1)], index=D[4:])
    np.testing.assert_allclose(point_in_time_ic_weights(ics, known, early, window=2, min_periods=1)["f"], [0.2])
    needs_two = point_in_time_ic_weights(ics, known, decisions, window=2, min_periods=2)
    np.testing.assert_allclose(needs_two["f"], [np.nan, np.nan, np.nan, 0.2, 2.65])


def test_ic_weights_wait_for_an_earlier_date_published_late():
    # D1's label is published after D2's: D2's rolling mean (which contains D1) waits for it
    close = pd.Timestamp("2021-01-10 21:00", tz="UTC")
    ics = pd.DataFrame({"f": [1.0, 2.0, 3.0]}, index=D[:3])
    known = pd.Series([close, close + pd.Timedelta(days=5), close + pd.Timedelta(days=1)], index=D[:3])
    decision = pd.Series([close + pd.Timedelta(days=2)], index=[D[4]])
    w = point_in_time_ic_weights(ics, known, decision, window=5, min_periods=1)
    assert w["f"].iloc[0] == 1.0


def _alpha_scores(prices: pd.DataFrame, *, leak: bool = False) -> pd.DataFrame:
    """Both alphas as the alpha stage builds them (composite; ic_weighted from the ICs whose labels
    were known at each close). ``leak``: treat a label as known one session early."""
    from qsdk.quant.calendar import session_closes
    from qsdk.quant.features import compute_features, label_frame

    spec = [{"name": "mom_21", "kind": "momentum", "window": 21}, {"name": "rev_5", "kind": "reversal"},
            {"name": "vol_21", "kind": "realized_volatility", "window": 21},
            {"name": "amihud_21", "kind": "amihud_illiquidity", "window": 21},
            {"name": "high_63", "kind": "distance_to_high", "window": 63}]
    names = [s["name"] for s in spec]
    feats = compute_features(prices.reset_index(drop=True), spec=spec)
    z = cross_sectional_zscore(feats, names)
    labels = label_frame(prices, lag=1, horizon=1)
    labels["known_time"] = session_closes(labels["trade_date" if leak else "exit_date"])
    ics = feature_ics(feats[["date", "symbol"]].join(z).merge(labels, on=["date", "symbol"]), names)
    dates = pd.Index(sorted(feats["date"].unique()))
    decisions = pd.Series(session_closes(dates), index=dates)
    weights = point_in_time_ic_weights(ics, labels.groupby("date")["known_time"].max(), decisions,
                                       window=20, min_periods=5)
    return feats[["date", "symbol"]].assign(
        composite=combine(z, {"mom_21": 1.0, "rev_5": 1.0, "vol_21": -1.0}),
        ic_weighted=combine(z, weights.reindex(feats["date"]).set_axis(feats.index)))


def test_alpha_scores_at_a_decision_are_unchanged_when_the_future_is_removed():
    """Scores at t from prices truncated after t (so only the labels known by the close of t exist)
    equal the scores from the full history, bit for bit; a label used one session early breaks it."""
    from qsdk.quant.synthetic import generate_prices

    prices = generate_prices(n_symbols=15, start="2015-01-01", end="2015-12-31", seed=3, signal_strength=0.3)
    dates = sorted(prices["date"].unique())
    for leak in (False, True):
        full = _alpha_scores(prices, leak=leak)
        changed = []
        for cutoff in (dates[150], dates[-2]):
            past = _alpha_scores(prices[prices["date"] <= cutoff], leak=leak)
            on_day = full["date"] == cutoff
            assert full.loc[on_day, "ic_weighted"].notna().all()
            changed += [c for c in ("composite", "ic_weighted")
                        if not full.loc[on_day, c].reset_index(drop=True).equals(
                            past.loc[past["date"] == cutoff, c].reset_index(drop=True))]
        assert changed == (["ic_weighted", "ic_weighted"] if leak else [])
