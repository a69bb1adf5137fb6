"""A failed multi-table commit is undone inside its own slice only: rows that a parallel
partition committed to the same table in between stay (real Ray, partitions really in
parallel, real Delta tables). The fault is injected in the Ray workers by
``faults/sitecustomize.py``: partition A commits its first table, partition B commits to the
same table, then A's second commit fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qsdk.execution.executors.ray import RayExecutor
from qsdk.lakehouse.tables import Lakehouse

FAULTS = Path(__file__).parent / "faults"
COLS = {"date": "date", "v": "float64"}
A, B = "2020-01-01_2020-01-31", "2020-02-01_2020-02-29"
CELL = '''import pandas as pd, qsdk
days = pd.date_range(start, end, freq="D")
for table in ("silver.first", "silver.second"):
    qsdk.write_table(table, pd.DataFrame({"date": days, "v": [d.day * scale for d in days]}),
                     mode="overwrite", predicate=qsdk.between("date", start, end))'''


@pytest.fixture(scope="module")
def ray_with_faults(tmp_path_factory):
    """An embedded Ray whose workers load the fault plan (read anew at every write)."""
    import os

    import ray

    plan = tmp_path_factory.mktemp("faults") / "plan.json"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "QSDK_TEST_FAULT_PLAN")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), saved["PYTHONPATH"]]))
    os.environ["QSDK_TEST_FAULT_PLAN"] = str(plan)
    owner = RayExecutor(num_cpus=2)
    owner.init()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    yield plan
    owner.finalize()
    assert not ray.is_initialized()


def _month(lake, table, month):
    rows = lake.read(table).to_pandas()
    rows = rows[pd_month(rows) == month]
    return dict(zip(rows["date"].astype(str), rows["v"], strict=True))


def pd_month(rows):
    import pandas as pd

    return pd.to_datetime(rows["date"]).dt.month


def _expected(month, days, scale):
    import datetime as dt

    return {dt.date(2020, month, d).isoformat(): float(d * scale) for d in range(1, days + 1)}


@pytest.mark.parametrize("rounds", [3, pytest.param(10, marks=pytest.mark.reliability_long)])
def test_a_failed_commit_never_rewinds_a_parallel_partition(project, ray_with_faults, rounds):
    plan = ray_with_faults
    sdk = (project.table("silver.first", COLS, primary_key=["date"])
           .table("silver.second", COLS, primary_key=["date"])
           .stage("two", 'start: "date" = "2020-01-01"\nend: "date" = "2020-02-29"\nscale: float = 1.0', CELL,
                  outputs=["silver.first", "silver.second"], partition={"by": "month"})
           .flow("f", ["two"])).sdk()
    lake = Lakehouse(project.root / "lakehouse", sdk.registry.tables)
    before_a: dict[str, dict[str, float]] = {"silver.first": {}, "silver.second": {}}  # A's slice: absent at first
    for round_ in range(rounds):
        scale = float(round_ + 2)
        plan.write_text(json.dumps({"stage": "two", "failing": A, "other": B,
                                    "first": "silver.first", "second": "silver.second"}))
        failed = sdk.run_pipeline("f", params={"scale": scale}, executor=RayExecutor(), track=False,
                                  raise_on_failure=False)
        plan.unlink()
        by_key = {r.partition: r for r in failed.results}
        assert by_key[B].status == "succeeded", by_key[B].error
        assert by_key[A].status == "failed" and by_key[A].error.fields["reason"] == "commit"
        assert "injected fault" in str(by_key[A].error)
        for table in ("silver.first", "silver.second"):
            assert _month(lake, table, 2) == _expected(2, 29, scale)  # every row of B is still there
            assert _month(lake, table, 1) == before_a[table]  # A's slice as before its commit
        # the history says what happened: A's commit to silver.first, then its compensation
        history = lake.history("silver.first", limit=10)
        undo = next(h for h in history if h.get("qsdk.rollback") == "true")
        assert undo["qsdk.partition"] == A and undo["qsdk.run_id"] == failed.run_id
        undone = lake.commit_info("silver.first", int(undo["qsdk.compensates"]))
        assert undone["qsdk.partition"] == A and undone["qsdk.run_id"] == failed.run_id

        rerun = sdk.run_pipeline("f", params={"scale": scale}, executor=RayExecutor(), track=False)
        assert {r.partition: r.status for r in rerun.results} == {A: "succeeded", B: "cached"}
        for table in ("silver.first", "silver.second"):
            assert _month(lake, table, 1) == _expected(1, 31, scale)
            assert _month(lake, table, 2) == _expected(2, 29, scale)
            assert lake.info(table).rows == 60
            before_a[table] = _expected(1, 31, scale)
