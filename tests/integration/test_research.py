"""The research flows end to end on real kernels, Delta tables and MLflow: a planted signal is
recovered, null data shows nothing (which catches look-ahead anywhere in the notebooks), the
point-in-time join holds on the flow's own tables, and ``daily`` appends one session idempotently.

Small on purpose: 30 synthetic symbols, one year, one partition per stage.
"""

from __future__ import annotations

import pandas as pd
import pytest
from deltalake import DeltaTable

from qsdk.errors import ParameterError, RegistryError
from qsdk.sdk import QuantSDK
from tests.conftest import REPO

SYNTHETIC = {"source": "synthetic", "n_symbols": 30, "start": "2010-01-01", "end": "2010-12-31", "quantiles": 5}
ALPHAS = {"composite", "ic_weighted"}


def _delta(sdk: QuantSDK, name: str) -> DeltaTable:
    layer, table = name.split(".")
    return DeltaTable(str(sdk.config.lakehouse_root / layer / table))


def _table(sdk: QuantSDK, name: str) -> pd.DataFrame:
    return _delta(sdk, name).to_pandas()


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> QuantSDK:
    """A backfill of synthetic data with a planted signal, tracked in a private MLflow store."""
    root = tmp_path_factory.mktemp("planted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        sdk = QuantSDK(REPO, lakehouse_root=root / "lake", runs_dir=root / "runs")
        result = sdk.run_pipeline("backfill", params={**SYNTHETIC, "signal_strength": 0.25})
    assert result.status == "succeeded"
    sdk.result = result  # type: ignore[attr-defined]
    return sdk


def test_planted_signal_is_recovered_by_the_flow(planted):
    evaluation = _table(planted, "gold.alpha_evaluation").set_index("factor")
    assert ALPHAS <= set(evaluation.index) and {"vendor_signal", "mom_21", "vol_63"} <= set(evaluation.index)
    assert (evaluation["start"].astype(str) == "2010-01-01").all() and (evaluation["quantiles"] == 5).all()
    for factor in ("vendor_signal", "ic_weighted"):  # the raw signal, and the alpha that learnt it
        row = evaluation.loc[factor]
        assert row["rank_ic_mean"] > 0.1 and row["rank_ic_t_stat"] > 5 and row["rank_ic_p_value"] < 1e-6
        assert row["top_minus_bottom_mean"] > 0 and row["ls_net_sharpe"] > 2
    quantiles = _table(planted, "gold.alpha_quantile_returns")
    learnt = quantiles[quantiles["factor"] == "ic_weighted"].sort_values("quantile")["mean_return"]
    assert learnt.iloc[-1] > learnt.iloc[0]  # top quintile beats the bottom one
    daily = _table(planted, "gold.alpha_daily")
    assert daily.groupby("factor").size()["ic_weighted"] == evaluation.loc["ic_weighted", "n_dates"]
    # evaluate_daily scores exactly the signal dates whose labels the backfill's window made known
    labels = _table(planted, "gold.labels")
    known = set(labels[labels["exit_date"] <= pd.Timestamp("2010-12-31").date()]["date"])
    assert set(daily[daily["factor"] == "vendor_signal"]["date"]) == known
    # the summary stage's quantile means are the means of evaluate_daily's per-date series
    per_date = _table(planted, "gold.alpha_quantile_daily")
    per_date = per_date[per_date["factor"] == "ic_weighted"].groupby("quantile")["mean_return"].mean()
    assert per_date.to_numpy() == pytest.approx(learnt.to_numpy())


def test_evaluation_metrics_are_logged_to_mlflow(planted):
    from mlflow import MlflowClient

    client = MlflowClient(planted.config.tracking_uri)
    experiment = client.get_experiment_by_name("qsdk/backfill")
    runs = client.search_runs([experiment.experiment_id], "tags.`qsdk.stage` = 'evaluate'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["ic_weighted.rank_ic_mean"] > 0.1
    assert metrics["vendor_signal.rank_ic_t_stat"] > 5
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "figures")]
    assert artifacts == ["figures/alpha_evaluation.png"]


def test_null_data_shows_no_significant_ic(tmp_path):
    """Pure noise: any feature or alpha with a significant IC would be looking ahead. A short IC
    window makes the learnt alpha sensitive: with it, weights that saw a label one session too
    early give a rank IC t-statistic near 7 on this data."""
    sdk = QuantSDK(REPO, lakehouse_root=tmp_path / "lake", runs_dir=tmp_path / "runs")
    sdk.run_pipeline("backfill", params={**SYNTHETIC, "signal_strength": 0.0, "seed": 1, "ic_window": 20,
                                         "min_ic_dates": 5}, track=False)
    evaluation = _table(sdk, "gold.alpha_evaluation").set_index("factor")
    tested = evaluation[evaluation["n_dates"] > 100]
    assert len(tested) >= 10 and ALPHAS <= set(tested.index)
    assert (tested["rank_ic_t_stat"].abs() < 3.5).all(), tested["rank_ic_t_stat"]
    assert (tested["ic_t_stat"].abs() < 3.5).all(), tested["ic_t_stat"]


def test_point_in_time_join_on_the_flow_tables(planted):
    """A query one minute before a session's close sees the previous session's features."""
    from qsdk.quant.calendar import session_closes

    stored = _table(planted, "gold.features_momentum")
    stored = stored[stored["symbol"] == "SYN0001"].set_index("date").sort_index()
    days = stored.index[-3:]
    closes = session_closes(days)
    queries = pd.DataFrame({"symbol": "SYN0001",
                            "timestamp": [closes[1] - pd.Timedelta(minutes=1), closes[1], closes[2]]})
    out = planted.loader().training_set(queries, ["momentum:mom_21", "vendor"])
    assert out["mom_21"].tolist() == stored.loc[[days[0], days[1], days[2]], "mom_21"].tolist()
    vendor = _table(planted, "bronze.signals").set_index(["symbol", "date"])
    assert out["vendor_signal"].iloc[0] == vendor.loc[("SYN0001", days[0]), "value"]


def test_the_flow_uses_only_what_the_vendor_had_published_by_the_decision(planted):
    """The synthetic vendor publishes some values after the next open and restates some later. At
    the close of a date, the point-in-time join returns only values published by then (a late
    value's symbol keeps an earlier value; a restated one its original), and evaluate_daily's IC of
    the vendor signal is the one of those values, not of the values the vendor filed for that date."""
    from qsdk.quant.calendar import session_closes

    signals = _table(planted, "bronze.signals").sort_values(["symbol", "date", "published_at"])
    signals["close"] = session_closes(signals["date"])
    first = ~signals.duplicated(["symbol", "date"])
    late, restated = signals[first & (signals["published_at"] > signals["close"])], signals[~first]
    assert len(late) > 300 and len(restated) > 150
    vendor = _table(planted, "gold.features_vendor")
    assert len(vendor) == len(signals) and set(zip(vendor["symbol"], vendor["date"], vendor["known_time"],
                                                   strict=True)) == set(zip(signals["symbol"], signals["date"],
                                                                            signals["published_at"], strict=True))
    queries = pd.concat([late, restated])[["symbol", "date", "close"]].rename(columns={"close": "timestamp"})
    seen = planted.loader().training_set(queries.reset_index(drop=True), ["vendor"])["vendor_signal"].to_numpy()
    assert not (seen[: len(late)] == late["value"].to_numpy()).any()  # not yet published at the close
    originals = signals[first].set_index(["symbol", "date"]).loc[list(zip(restated["symbol"], restated["date"],
                                                                          strict=True)), "value"]
    assert (seen[len(late):] == originals.to_numpy()).all()  # the restatement is not known yet
    # the flow's own evaluation of a date with late values used what was published by its close
    day = late["date"].value_counts().index[0]
    daily = _table(planted, "gold.alpha_daily")
    stored = daily[(daily["factor"] == "vendor_signal") & (daily["date"] == day)]["rank_ic"].item()
    labels = _table(planted, "gold.labels")
    labels = labels[labels["date"] == day]
    at_close = labels[["symbol"]].assign(timestamp=session_closes([day] * len(labels)))
    known = planted.loader().training_set(at_close, ["vendor"]).assign(forward_return=labels["forward_return"].to_numpy())
    assert stored == pytest.approx(known["vendor_signal"].corr(known["forward_return"], method="spearman"))
    filed = signals[first & (signals["date"] == day)].merge(labels, on=["symbol", "date"])
    assert stored != pytest.approx(filed["value"].corr(filed["forward_return"], method="spearman"))


def test_daily_appends_one_session_idempotently(planted):
    from qsdk.quant import features as F

    before = {t: _table(planted, t) for t in ("gold.alpha_scores", "gold.features_risk", "gold.labels",
                                              "gold.alpha_daily")}
    planted.run_pipeline("daily", params={"date": "2011-01-03", "source": "synthetic", "n_symbols": 30,
                                          "signal_strength": 0.25, "quantiles": 5}, track=False)
    first = {t: _table(planted, t) for t in before}
    planted.run_pipeline("daily", params={"date": "2011-01-03", "source": "synthetic", "n_symbols": 30,
                                          "signal_strength": 0.25, "quantiles": 5}, track=False)
    second = {t: _table(planted, t) for t in before}
    day = pd.Timestamp("2011-01-03").date()
    scores = second["gold.alpha_scores"]
    new = scores[scores["date"] == day]
    prices = _table(planted, "silver.prices")
    listed = (prices["date"] == day).sum()
    assert listed >= 15 and new.groupby("alpha").size().to_dict() == dict.fromkeys(ALPHAS, listed)
    evaluated = {run: frames.pop("gold.alpha_daily") for run, frames in
                 (("before", before), ("first", first), ("second", second))}
    for table, frame in second.items():
        assert not frame.duplicated(["symbol", "date"] + (["alpha"] if "alpha" in frame else [])).any()
        assert len(frame) == len(first[table]) > len(before[table])
        key = ["symbol", "date"] + (["alpha"] if "alpha" in frame else [])
        pd.testing.assert_frame_equal(frame.sort_values(key).reset_index(drop=True),
                                      first[table].sort_values(key).reset_index(drop=True))
    labels = second["gold.labels"]
    signal_day = pd.Timestamp("2010-12-30").date()
    assert set(labels[labels["exit_date"] == day]["date"]) == {signal_day}
    # the evaluation of the signal date whose label the session made known, appended once
    assert signal_day not in set(evaluated["before"]["date"])
    assert not evaluated["second"].duplicated(["factor", "date"]).any()
    added = evaluated["second"][evaluated["second"]["date"] == signal_day].set_index("factor")
    assert ALPHAS <= set(added.index) and "vendor_signal" in added.index
    assert len(evaluated["second"]) == len(evaluated["first"]) == len(evaluated["before"]) + len(added)
    on_day = scores[(scores["date"] == signal_day) & (scores["alpha"] == "ic_weighted")].merge(
        labels[labels["date"] == signal_day], on="symbol")
    assert added.loc["ic_weighted", "rank_ic"] == pytest.approx(
        on_day["score"].corr(on_day["forward_return"], method="spearman"))
    # and a rolling evaluation over the trailing 252 sessions, one row per factor however often it runs
    from qsdk.quant.calendar import sessions_before

    rolling = _table(planted, "gold.alpha_evaluation")
    rolling = rolling[rolling["end"] == day].set_index("factor")
    assert not rolling.index.duplicated().any() and ALPHAS <= set(rolling.index)
    window_start = sessions_before(day, 251).date()
    assert (rolling["start"] == window_start).all()
    series = evaluated["second"]
    in_window = series[(series["factor"] == "ic_weighted") & (series["date"] >= window_start)]
    assert rolling.loc["ic_weighted", "n_dates"] == len(in_window) > 200
    assert rolling.loc["ic_weighted", "rank_ic_mean"] == pytest.approx(in_window["rank_ic"].mean())
    # the appended features equal a recomputation over the whole price history
    prices["date"] = pd.to_datetime(prices["date"])
    spec = [{"name": "vol_63", "kind": "realized_volatility", "window": 63}]
    expected = F.compute_features(prices.reset_index(drop=True), spec=spec)
    expected = expected[expected["date"] == pd.Timestamp(day)].set_index("symbol")["vol_63"]
    risk = second["gold.features_risk"]
    got = risk[risk["date"] == day].set_index("symbol")["vol_63"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)


def test_daily_evaluation_without_known_labels_is_a_clear_error_that_writes_nothing(planted):
    """No label became known on 2011-06-01 (the prices stop at 2011-01-03): evaluate_daily says
    what is missing instead of writing an empty evaluation."""
    before = _delta(planted, "gold.alpha_daily").version()
    result = planted.run_pipeline("daily", params={"date": "2011-06-01"}, only=["evaluate_daily"], track=False,
                                  raise_on_failure=False)
    assert result.status == "failed"
    err = result.failures[0].error
    assert err.ename == "ValueError"
    assert "gold.labels has no label that became known between 2011-06-01 and 2011-06-01" in err.evalue
    assert "backfill them" in err.evalue
    assert _delta(planted, "gold.alpha_daily").version() == before


def test_daily_for_a_date_the_source_does_not_cover_fails_at_ingest(planted):
    """The packaged real data ends in March 2013: the daily flow's ingest says so, and writes nothing."""
    before = _delta(planted, "bronze.prices_raw").version()
    result = planted.run_pipeline("daily", params={"date": "2013-03-05", "source": "bokeh"}, only=["ingest_prices"],
                                  track=False, raise_on_failure=False)
    (failure,) = result.failures
    assert failure.stage == "ingest_prices" and failure.error.ename == "ValueError"
    assert "source 'bokeh' has no bars between 2013-03-05 and 2013-03-05: it covers 2000-03-01" in failure.error.evalue
    assert _delta(planted, "bronze.prices_raw").version() == before


def test_daily_rejects_a_non_session_before_any_kernel(planted):
    runs_before = set(planted.config.runs_dir.iterdir())
    with pytest.raises(ParameterError) as info:
        planted.run_pipeline("daily", params={"date": "2011-01-01"}, track=False)
    message = str(info.value)
    assert "date=2011-01-01 is not a trading session of calendar XNYS" in message
    assert "previous 2010-12-31" in message and "next 2011-01-03" in message
    with pytest.raises(ParameterError, match="needs -p date="):
        planted.run_pipeline("daily", params={}, track=False)
    with pytest.raises(ParameterError, match="not both"):
        planted.run_pipeline("daily", params={"date": "2011-01-03", "start": "2011-01-03"}, track=False)
    assert set(planted.config.runs_dir.iterdir()) == runs_before  # no run started


def test_bindings_are_validated_when_the_registry_loads(project):
    cols = {"k": "int64"}
    (project.table("bronze.a", cols)
     .stage("one", 'start: "date" = "2020-01-01"\nend: "date" = "2020-12-31"', outputs=["bronze.a"])
     .flow("f", ["one"], bind={"day": {"to": ["start", "end"]}}))
    flow = project.sdk().registry.flow("f")
    assert flow.resolve({"day": "2020-06-01"})["one"] == {"start": "2020-06-01", "end": "2020-06-01"}
    project.flow("g", ["one"], bind={"day": {"to": ["begin"]}})
    with pytest.raises(RegistryError, match="undeclared targets: \\['begin'\\]"):
        project.sdk().registry.flow("g")
