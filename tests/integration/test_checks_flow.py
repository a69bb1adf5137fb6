"""Data checks in real flows: the shipped backfill's ingest and clean stages on synthetic data
with planted vendor faults (real kernels, Delta tables, MLflow). One project copy serves the
module; each test runs the flow with the faults it needs (``force=True``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from qsdk.lakehouse import check_results
from tests.conftest import REPO

BASE = {"source": "synthetic", "n_symbols": 6, "start": "2010-01-01", "end": "2010-03-31"}
ONLY = ["ingest_prices", "clean_prices"]
TABLES = ("bronze.prices_raw", "silver.prices", "silver.corporate_actions")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checks") / "copy"
    for folder in ("pipelines", "notebooks"):
        shutil.copytree(REPO / folder, root / folder)
    return root


def sdk_of(root: Path):
    from qsdk.sdk import QuantSDK

    return QuantSDK(root, lakehouse_root=root / "lakehouse", runs_dir=root / "runs")


def run(root: Path, **params):
    return sdk_of(root).run_pipeline("backfill", params={**BASE, **params}, only=ONLY, force=True,
                                     raise_on_failure=False)


def versions(root: Path) -> dict[str, int | None]:
    lake = sdk_of(root).lakehouse
    return {t: lake.version(t) for t in TABLES}


@pytest.fixture(scope="module")
def clean(root: Path):
    result = run(root)
    assert result.status == "succeeded", [str(r.error) for r in result.failures]
    return result


def failure(result, stage: str):
    [failed] = [r for r in result.results if r.stage == stage and r.status == "failed"]
    return failed.error


def test_clean_synthetic_data_passes_and_results_are_data(root: Path, clean) -> None:
    as_json = json.loads(json.dumps(clean.to_dict()))  # what `qsdk run --json` prints
    declared = {"ingest_prices": "bronze.prices_raw", "clean_prices": "silver.prices"}
    for stage, table in declared.items():
        results = [c for c in as_json["stages"][stage]["checks"] if c["table"] == table]
        assert results and all(c["passed"] for c in results), results
    table = check_results.latest(root / "lakehouse", "silver.prices").to_pylist()
    assert {r["check"] for r in table} >= {"close > 0", "ohlc_consistent", "sessions XNYS complete"}
    assert all(r["passed"] and r["run_id"] == clean.run_id and r["source"] == "flow" for r in table)
    # MLflow: the partition's run has a metric per check and the summary tag
    import mlflow

    mlflow.set_tracking_uri(sdk_of(root).config.tracking_uri)
    [run_] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.`qsdk.task` LIKE 'clean_prices%' and tags.`qsdk.run_id` = '{clean.run_id}'")
    assert run_.data.metrics["check.silver.prices.close _ 0.failing_rows"] == 0
    assert run_.data.tags["qsdk.checks"].endswith("0 failed")


def test_a_zero_price_fails_ingest_with_check_failed_and_commits_nothing(root: Path, clean) -> None:
    before = versions(root)
    result = run(root, faults=["zero_price"])
    error = failure(result, "ingest_prices")
    assert error.fields["reason"] == "check_failed"
    assert error.fields["table"] == "bronze.prices_raw" and error.fields["check"] == "positive_prices"
    assert error.fields["failing_rows"] == 1
    assert "bronze.prices_raw check 'positive_prices' (error): 1 of" in str(error)
    assert '"close": 0.0' in str(error)  # the example row
    assert versions(root) == before  # no table moved
    assert {r.status for r in result.results if r.stage == "clean_prices"} == {"skipped"}
    failed = [r for r in check_results.latest(root / "lakehouse", "bronze.prices_raw").to_pylist() if not r["passed"]]
    assert [(r["check"], r["failing_rows"], r["run_id"]) for r in failed] == [("positive_prices", 1, result.run_id)]
    json_error = result.to_dict()["stages"]["ingest_prices"]["errors"][0]
    assert json_error["reason"] == "check_failed" and json_error["check"] == "positive_prices"


def test_a_negative_price_fails_the_same_check(root: Path, clean) -> None:
    error = failure(run(root, faults=["negative_price"]), "ingest_prices")
    assert (error.fields["reason"], error.fields["check"]) == ("check_failed", "positive_prices")


def test_a_nan_burst_warns_in_bronze_and_fails_silver(root: Path, clean) -> None:
    before = versions(root)
    result = run(root, faults=["nan_burst"])
    ingest = [c for c in result.to_dict()["stages"]["ingest_prices"]["checks"] if not c["passed"]]
    assert [(c["check"], c["severity"]) for c in ingest] == [("null_fraction close <= 0.0", "warn")]
    assert result.stage_status("ingest_prices") == "succeeded"  # a warning commits
    assert versions(root)["bronze.prices_raw"] > before["bronze.prices_raw"]
    error = failure(result, "clean_prices")
    assert error.fields["reason"] == "check_failed" and error.fields["table"] == "silver.prices"
    assert "not_null open,high,low,close,adj_close,adj_factor" in str(error)
    after = versions(root)
    assert (after["silver.prices"], after["silver.corporate_actions"]) == (
        before["silver.prices"], before["silver.corporate_actions"])  # neither table of the task moved


def test_missing_sessions_fail_silver(root: Path, clean) -> None:
    before = versions(root)
    result = run(root, faults=["missing_session"])
    error = failure(result, "clean_prices")
    assert (error.fields["reason"], error.fields["check"]) == ("check_failed", "sessions XNYS complete")
    assert error.fields["failing_rows"] == 3  # half of 6 symbols miss one session
    assert versions(root)["silver.prices"] == before["silver.prices"]


def test_a_slice_that_shrinks_by_more_than_half_fails_the_row_count_check(root: Path, clean) -> None:
    run(root)  # back to the full universe
    error = failure(run(root, n_symbols=2), "ingest_prices")
    assert (error.fields["reason"], error.fields["check"]) == ("check_failed", "row_count_change max_drop 0.5")
    assert re.search(r"bronze.prices_raw check 'row_count_change max_drop 0.5' \(error\): \d+ row\(s\) replace "
                     r"\d+ \(-[6-9]\d\.\d%\)", str(error))  # 2 of 6 symbols


def test_changing_a_tables_checks_makes_the_tasks_that_write_it_stale(root: Path, clean) -> None:
    run(root)
    sdk = sdk_of(root)
    params = {**BASE}
    status = {s.stage: s for s in sdk.status("backfill", params=params)}
    assert status["ingest_prices"].state == "cached"
    path = root / "pipelines" / "tables.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["tables"]["bronze.prices_raw"]["checks"].append({"column": "volume", "less_than": 10**12})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    status = {s.stage: s for s in sdk_of(root).status("backfill", params=params)}
    assert status["ingest_prices"].state != "cached"
    assert "contract of bronze.prices_raw changed" in status["ingest_prices"].reasons


def test_qsdk_checks_shows_the_latest_results_and_run_evaluates_the_table_now(root: Path, clean, capsys,
                                                                               monkeypatch) -> None:
    from qsdk import cli

    monkeypatch.setenv("QSDK_LAKEHOUSE", str(root / "lakehouse"))
    monkeypatch.setenv("QSDK_RUNS", str(root / "runs"))
    run(root)
    capsys.readouterr()
    assert cli.main(["--project", str(root), "checks", "silver.prices", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {r["check"] for r in shown} >= {"close > 0", "sessions XNYS complete"} and all(r["passed"] for r in shown)
    # a check added since the last run: --run evaluates it against the table as it is now
    path = root / "pipelines" / "tables.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["tables"]["silver.prices"]["checks"].append({"column": "close", "less_than": 1, "name": "penny_stock"})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli.main(["--project", str(root), "checks", "silver.prices", "--run"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  silver.prices" in out and "penny_stock" in out
    latest = {r["check"]: r for r in check_results.latest(root / "lakehouse", "silver.prices").to_pylist()}
    assert latest["penny_stock"]["source"] == "manual" and not latest["penny_stock"]["passed"]
