"""One evaluation for a date however the work is cut, on the packaged (bokeh) data.

Two lakes, both from real kernels, Delta tables and the registry's defaults:

* ``extended``: a backfill to 2013-02-27, then ``daily`` for 2013-02-27 (a date the backfill
  already covered: no existing row of any gold table may change), then ``daily`` for 2013-02-28,
  the session after the backfill's end;
* ``longer``: one backfill to 2013-02-28.

The daily run for 2013-02-28 must give exactly the rows that the longer backfill gives, in every
per-row gold table. Short ranges keep it to four flow runs of a few seconds per stage.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from qsdk.sdk import QuantSDK
from tests.conftest import REPO

START, END, NEXT = "2012-01-01", "2013-02-27", "2013-02-28"
PER_ROW = {  # gold tables with one row per key that the flows write, and their keys
    "gold.features_momentum": ["symbol", "date"],
    "gold.features_risk": ["symbol", "date"],
    "gold.features_vendor": ["symbol", "date"],
    "gold.labels": ["symbol", "date"],
    "gold.alpha_scores": ["alpha", "symbol", "date"],
    "gold.alpha_daily": ["factor", "date"],
    "gold.alpha_quantile_daily": ["factor", "date", "quantile"],
}
SUMMARIES = {"gold.alpha_evaluation": ["factor", "start", "end"],
             "gold.alpha_quantile_returns": ["factor", "start", "end", "quantile"]}
GOLD = PER_ROW | SUMMARIES


def _sdk(root: Path) -> QuantSDK:
    return QuantSDK(REPO, lakehouse_root=root / "lake", runs_dir=root / "runs")


def _read(sdk: QuantSDK, name: str) -> pd.DataFrame:
    layer, table = name.split(".")
    path = sdk.config.lakehouse_root / layer / table
    if not path.exists():
        return pd.DataFrame(columns=GOLD[name])
    frame = DeltaTable(str(path)).to_pandas()
    return frame.sort_values(GOLD[name]).reset_index(drop=True)


def _gold(sdk: QuantSDK) -> dict[str, pd.DataFrame]:
    return {name: _read(sdk, name) for name in GOLD}


def _run(sdk: QuantSDK, flow: str, **params) -> None:
    result = sdk.run_pipeline(flow, params=params, track=False)
    assert result.status == "succeeded"


@pytest.fixture(scope="module")
def lakes(tmp_path_factory) -> dict[str, dict[str, pd.DataFrame]]:
    extended = _sdk(tmp_path_factory.mktemp("extended"))
    _run(extended, "backfill", start=START, end=END)
    states = {"backfill": _gold(extended)}
    _run(extended, "daily", date=END)
    states["daily_again"] = _gold(extended)
    _run(extended, "daily", date=NEXT)
    states["daily_next"] = _gold(extended)
    # a flow-level partitioning check: evaluate_daily re-run over one month, as its own partition
    extended.run_pipeline("backfill", params={"start": "2012-06-01", "end": "2012-06-30"},
                          only=["evaluate_daily"], track=False)
    states["month_again"] = _gold(extended)
    states["sdk"] = extended  # type: ignore[assignment]
    longer = _sdk(tmp_path_factory.mktemp("longer"))
    _run(longer, "backfill", start=START, end=NEXT)
    states["longer"] = _gold(longer)
    return states


def _unchanged(before: pd.DataFrame, after: pd.DataFrame, keys: list[str], name: str) -> None:
    """Every row of ``before`` is in ``after`` with identical values."""
    merged = before.merge(after, on=keys, how="left", suffixes=("", "_after"), indicator=True)
    assert (merged["_merge"] == "both").all(), f"{name}: rows disappeared"
    common = after[after.set_index(keys).index.isin(before.set_index(keys).index)]
    pd.testing.assert_frame_equal(common.reset_index(drop=True), before.reset_index(drop=True), check_exact=True,
                                  obj=name)


def test_daily_on_a_backfilled_date_changes_no_row_of_any_gold_table(lakes):
    before, after = lakes["backfill"], lakes["daily_again"]
    assert len(before["gold.alpha_daily"]) > 1000 and len(before["gold.alpha_quantile_daily"]) > 1000
    for name, keys in GOLD.items():
        _unchanged(before[name], after[name], keys, name)
        if name in PER_ROW:  # nothing was missing for that date, so nothing appears
            assert len(after[name]) == len(before[name]), name
    # only the daily flow's own trailing-year summary is new
    added = after["gold.alpha_evaluation"].merge(before["gold.alpha_evaluation"], how="left", indicator=True)
    assert set(added.loc[added["_merge"] == "left_only", "end"].astype(str)) == {END}


def test_daily_for_the_next_session_equals_extending_the_backfill(lakes):
    daily, longer = lakes["daily_next"], lakes["longer"]
    for name in PER_ROW:
        pd.testing.assert_frame_equal(daily[name], longer[name], check_exact=True, obj=name)
    evaluated = daily["gold.alpha_daily"]
    assert pd.Timestamp("2013-02-26").date() in set(evaluated["date"])  # 2013-02-28's label: signal 02-26
    assert (evaluated["quantiles"] == 3).all() and (evaluated["horizon"] == 1).all() and (evaluated["lag"] == 1).all()
    # the registry's declared quantile count, on every date that has enough names, in every partition
    by_date = daily["gold.alpha_quantile_daily"].groupby(["factor", "date"])["quantile"].max()
    assert (by_date == 3).all()


def test_re_evaluating_a_month_as_its_own_partition_changes_no_row(lakes):
    before, after = lakes["daily_next"], lakes["month_again"]
    for name in ("gold.alpha_daily", "gold.alpha_quantile_daily"):
        pd.testing.assert_frame_equal(after[name], before[name], check_exact=True, obj=name)


def test_summaries_describe_themselves(lakes):
    import empyrical

    evaluation = lakes["longer"]["gold.alpha_evaluation"].set_index("factor")
    row = evaluation.loc["composite"]
    daily = lakes["longer"]["gold.alpha_daily"]
    series = daily[daily["factor"] == "composite"].set_index("date").sort_index()
    assert (row["start"], row["end"]) == (pd.Timestamp(START).date(), pd.Timestamp(NEXT).date())
    assert (row["first_date"], row["last_date"]) == (series.index.min(), series.index.max())
    assert (row["quantiles"], row["horizon"], row["lag"], row["n_dates"]) == (3, 1, 1, series["rank_ic"].notna().sum())
    assert row["cost_bps"] == 5.0 and "5 bps" in row["cost_model"]
    net = series["net"].dropna()
    assert row["ls_net_annual_return"] == pytest.approx(empyrical.annual_return(net), rel=1e-9)
    assert row["ls_net_mean_return_annualized"] == pytest.approx(net.mean() * 252, rel=1e-9)
    assert row["ls_net_annual_volatility"] == pytest.approx(empyrical.annual_volatility(net), rel=1e-9)
    assert row["ls_net_sortino"] == pytest.approx(empyrical.sortino_ratio(net), rel=1e-9)
    assert row["ls_net_calmar"] == pytest.approx(empyrical.calmar_ratio(net), rel=1e-9)
    assert row["ls_net_hit_rate"] == pytest.approx((net > 0).mean())


def test_evaluate_refuses_a_window_that_mixes_quantile_counts(lakes):
    """A daily run with another quantile count than the backfill's writes its date under that
    definition; the rolling evaluation then names the mix instead of averaging across it."""
    sdk = lakes["sdk"]
    result = sdk.run_pipeline("daily", params={"date": NEXT, "quantiles": 4}, only=["evaluate_daily", "evaluate"],
                              track=False, raise_on_failure=False)
    (failure,) = result.failures
    assert failure.stage == "evaluate" and failure.error.ename == "ValueError"
    assert "'quantiles': 3" in failure.error.evalue and "'quantiles': 4" in failure.error.evalue
    assert "under one definition" in failure.error.evalue
