"""commit_staged undoes a failed task's earlier commits inside their own slice (real Delta tables):
appends and merges by primary key, partition overwrites by predicate, whole-table overwrites only
when nothing builds on them; rows of other writers committed in between stay."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from qsdk.errors import ContractViolation, LakehouseError, QsdkError
from qsdk.lakehouse import staging
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.tables import Lakehouse

SPEC = TableSpec(name="silver.t", columns={"k": "int64", "v": "float64"}, primary_key=("k",))
BROKEN = TableSpec(name="silver.broken", columns={"k": "int64", "v": "float64"}, primary_key=("k",))


def rows(ks, v):
    return pa.table({"k": pa.array(ks, pa.int64()), "v": pa.array([float(v)] * len(ks))})


@pytest.fixture
def lake(tmp_path):
    lake = Lakehouse(tmp_path / "lake", {"silver.t": SPEC, "silver.broken": BROKEN})
    # silver.broken on disk no longer matches its contract: any commit to it fails
    write_deltalake(str(lake.path("silver.broken")), pa.table({"other": [1]}))
    return lake


def content(lake, table="silver.t"):
    data = lake.read(table).to_pylist()
    return {r["k"]: r["v"] for r in data}


def commit(lake, tmp_path, *writes):
    folder = tmp_path / "staging"
    for table, data, mode in writes:
        staging.stage_write(folder, table, data, mode=mode, predicate=None)
    return staging.commit_staged(folder, lake, app_prefix="qsdk:run:s:p", metadata={"qsdk.run_id": "run"})


@pytest.mark.parametrize("mode", ["append", "merge"])
def test_a_failed_task_undoes_its_keys_and_keeps_everyone_elses(lake, tmp_path, mode):
    lake.write("silver.t", rows([1, 2], 1), mode="append")
    base = lake.version("silver.t")
    new = [3, 4] if mode == "append" else [2, 3]  # a merge also updates an existing key
    with pytest.raises(ContractViolation, match="silver.broken"):
        commit(lake, tmp_path, ("silver.t", rows(new, 9), mode), ("silver.broken", rows([1], 1), "append"))
    assert content(lake) == {1: 1.0, 2: 1.0}
    history = lake.history("silver.t", limit=1)[0]
    assert history["qsdk.rollback"] == "true" and int(history["qsdk.compensates"]) == base + 1
    from qsdk.lakehouse.lineage import table_lineage

    text = table_lineage(lake, "silver.t").describe()
    assert "rolled back by run run" in text and f"undoes version {base + 1}" in text and "silver.broken" in text


def test_undo_of_keys_leaves_rows_committed_by_others_in_between(lake, tmp_path):
    lake.write("silver.t", rows([1], 1), mode="append")
    folder = tmp_path / "staging"
    entry = staging.stage_write(folder, "silver.t", rows([2, 3], 5), mode="merge", predicate=None)
    mine = lake.write("silver.t", rows([2, 3], 5), mode="merge")
    lake.write("silver.t", rows([7, 8], 2), mode="append")  # another task, after mine
    staging.undo_write(lake, entry, mine, data=lambda: rows([2, 3], 5), metadata={"qsdk.rollback": True})
    assert content(lake) == {1: 1.0, 7: 2.0, 8: 2.0}


def test_a_partition_overwrite_is_undone_by_its_predicate_only(lake, tmp_path):
    lake.write("silver.t", rows([1, 2, 10, 11], 1), mode="append")
    folder = tmp_path / "staging"
    entry = staging.stage_write(folder, "silver.t", rows([1, 2], 5), mode="overwrite", predicate="k < 10")
    mine = lake.write("silver.t", rows([1, 2], 5), mode="overwrite", predicate="k < 10")
    lake.write("silver.t", rows([10, 11], 3), mode="overwrite", predicate="k >= 10")  # another partition
    staging.undo_write(lake, entry, mine, data=None, metadata={"qsdk.rollback": True})
    assert content(lake) == {1: 1.0, 2: 1.0, 10: 3.0, 11: 3.0}


def test_a_table_created_by_the_failed_task_keeps_none_of_its_rows(lake, tmp_path):
    with pytest.raises(ContractViolation):
        commit(lake, tmp_path, ("silver.t", rows([1, 2], 1), "append"), ("silver.broken", rows([1], 1), "append"))
    assert content(lake) == {}


def test_a_whole_table_overwrite_is_undone_only_when_nothing_builds_on_it(lake, tmp_path):
    lake.write("silver.t", rows([1], 1), mode="append")
    folder = tmp_path / "staging"
    entry = staging.stage_write(folder, "silver.t", rows([5], 5), mode="overwrite", predicate=None)
    mine = lake.write("silver.t", rows([5], 5), mode="overwrite")
    lake.write("silver.t", rows([6], 6), mode="append")
    with pytest.raises(LakehouseError, match="later commit"):
        staging.undo_write(lake, entry, mine, data=None, metadata={})
    assert content(lake) == {5: 5.0, 6: 6.0}  # left as it is, and said so


def test_a_retried_write_reports_the_version_its_earlier_attempt_committed(lake):
    first = lake.write("silver.t", rows([1], 1), mode="append", app_id="qsdk:r:s:p:0")
    lake.write("silver.t", rows([2], 2), mode="append")  # someone else, later
    assert lake.write("silver.t", rows([1], 1), mode="append", app_id="qsdk:r:s:p:0") == first


def test_a_failed_undo_says_so_with_both_errors(lake, tmp_path, monkeypatch):
    def broken_undo(*args, **kwargs):
        raise LakehouseError("disk gone")

    monkeypatch.setattr(Lakehouse, "undo_keys", broken_undo)
    lake.write("silver.t", rows([1], 1), mode="append")
    with pytest.raises(QsdkError, match="silver.broken.*undoing the commits.*silver.t version 1: disk gone"):
        commit(lake, tmp_path, ("silver.t", rows([2], 1), "append"), ("silver.broken", rows([1], 1), "append"))


def test_dates_survive_a_round_trip_through_the_slice_read(tmp_path):
    spec = TableSpec(name="silver.d", columns={"date": "date", "v": "float64"}, primary_key=("date",))
    lake = Lakehouse(tmp_path / "lake", {"silver.d": spec})
    days = [dt.date(2020, 1, d) for d in (1, 2, 3)]
    lake.write("silver.d", pa.table({"date": days, "v": [1.0, 2.0, 3.0]}), mode="append")
    got = lake.read_where("silver.d", "date >= '2020-01-02'")
    assert sorted(got.column("date").to_pylist()) == days[1:]
