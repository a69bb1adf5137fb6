"""The real backfill (packaged Quandl WIKI data via bokeh-sampledata) on real kernels."""

import pyarrow.compute as pc
from deltalake import DeltaTable


def test_backfill_is_idempotent_and_readable_with_deltalake(repo_project, tmp_path):
    params = {"start": "2004-11-01", "end": "2005-03-31"}
    first = repo_project.run_pipeline("backfill", params=params)
    assert first.status == "succeeded"
    assert {r.key for r in first.results} >= {
        "ingest_prices[2004-11-01_2004-12-31]", "ingest_prices[2005-01-01_2005-03-31]",
        "clean_prices[2004-11-01_2004-12-31]", "clean_prices[2005-01-01_2005-03-31]",
    }
    assert {r.status for r in first.results} == {"succeeded"}
    lake = tmp_path / "lakehouse"
    prices = DeltaTable(str(lake / "silver" / "prices")).to_pyarrow_table()
    raw = DeltaTable(str(lake / "bronze" / "prices_raw")).to_pyarrow_table()
    # AAPL, GOOG, IBM, MSFT traded every session of the window; FB listed only in 2012
    assert sorted(set(prices.column("symbol").to_pylist())) == ["AAPL", "GOOG", "IBM", "MSFT"]
    from qsdk.quant.calendar import sessions

    n_sessions = len(sessions("2004-11-01", "2005-03-31"))  # the NYSE calendar, independently
    assert prices.num_rows == raw.num_rows == 4 * n_sessions
    actions = DeltaTable(str(lake / "silver" / "corporate_actions")).to_pandas()
    split = actions[(actions.symbol == "AAPL") & (actions.action == "split")]
    assert [str(d) for d in split.date] == ["2005-02-28"] and split.ratio.tolist() == [2.0]
    special = actions[(actions.symbol == "MSFT") & (actions.amount > 1)]
    assert [str(d) for d in special.date] == ["2004-11-15"]  # MSFT's $3 special dividend
    assert abs(special.amount.iloc[0] - 3.0) < 0.05
    aapl = prices.filter(pc.equal(prices.column("symbol"), "AAPL")).to_pandas().set_index("date").sort_index()
    steps = aapl["adj_factor"].pct_change().dropna()
    assert (steps.abs() < 1e-3).sum() == len(steps) - 1  # constant (to rounding) but for one jump
    import datetime as dt

    before, after = aapl.loc[dt.date(2005, 2, 25), "adj_factor"], aapl.loc[dt.date(2005, 2, 28), "adj_factor"]
    assert abs(after / before - 2.0) < 1e-3  # the 2:1 split doubles the factor on the ex-date

    versions = {t: repo_project.lakehouse.version(t) for t in ("bronze.prices_raw", "silver.prices")}
    second = repo_project.run_pipeline("backfill", params=params, force=True)  # really run again
    assert second.status == "succeeded"
    again = DeltaTable(str(lake / "silver" / "prices")).to_pyarrow_table()
    assert again.num_rows == prices.num_rows
    assert again.sort_by([("symbol", "ascending"), ("date", "ascending")]).equals(
        prices.sort_by([("symbol", "ascending"), ("date", "ascending")]))
    assert all(repo_project.lakehouse.version(t) > v for t, v in versions.items())  # it did write again


def test_each_stage_records_the_quant_modules_it_imports_and_dvc_yaml_lists_them(repo_project, tmp_path):
    """The real flow's cache records name the qsdk.quant modules each notebook imports (and only
    those), and the committed dvc.yaml lists every non-machinery module a run recorded."""
    import json

    import yaml

    from tests.conftest import REPO

    params = {"start": "2005-01-01", "end": "2005-03-31"}
    assert repo_project.run_pipeline("backfill", params=params, track=False).status == "succeeded"
    cache = tmp_path / "lakehouse" / "_qsdk_cache"
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    quant: dict[str, set[str]] = {}
    for record in cache.glob("*/*.json"):
        data = json.loads(record.read_text())
        files = set(data["deps"]["files"])
        quant.setdefault(data["stage"], set()).update(f for f in files if f.startswith("qsdk/quant/"))
        outside_machinery = {f for f in files if f.startswith(("qsdk/quant/", "notebooks/")) or not f.startswith("qsdk/")}
        assert outside_machinery <= set(dvc[data["stage"]]["deps"]), data["stage"]
    assert "qsdk/quant/metrics.py" in quant["evaluate"] and "qsdk/quant/metrics.py" not in quant["clean_prices"]
    assert "qsdk/quant/sources.py" in quant["ingest_prices"] and "qsdk/quant/sources.py" not in quant["labels"]
