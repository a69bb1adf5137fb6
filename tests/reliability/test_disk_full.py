"""The disk fills up during a Delta write: the write fails with a clear error and the table
stays at its last version, readable, with exactly its rows; once space is freed, writing works.

The lakehouse root is a small tmpfs mounted for the test, so this needs root (or
CAP_SYS_ADMIN): CI runs as root. Without it the test fails and says so; it never skips.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from qsdk.errors import LakehouseError
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.tables import Lakehouse
from tests.reliability.conftest import TableState, state

SPEC = TableSpec("silver.t", {"k": "int64", "x": "float64"}, primary_key=("k",))


@contextmanager
def tmpfs(folder: Path, *, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("the disk-full test mounts a tmpfs: run it as root (CI does) or with CAP_SYS_ADMIN")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {folder} (needs CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def _batch(start: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(start)  # random floats: Parquet cannot compress them away
    return pa.table({"k": np.arange(start, start + rows, dtype=np.int64), "x": rng.random(rows)})


def _fill_until_full(lake: Lakehouse, *, rows: int, max_writes: int) -> tuple[TableState, LakehouseError]:
    """Append batches until one fails; return the state before the failing write and its error."""
    written = 0
    for _ in range(max_writes):
        before = state(lake, "silver.t")
        try:
            lake.write("silver.t", _batch(written, rows), mode="append")
        except LakehouseError as exc:
            return before, exc
        written += rows
        expected = 0 if before.version is None else before.version + 1
        assert state(lake, "silver.t") == TableState(expected, written)
    pytest.fail(f"{max_writes} writes of {rows} rows never filled the disk")


@pytest.mark.parametrize("size, rows, max_writes", [
    pytest.param("2m", 20_000, 30, id="2MB"),
    pytest.param("64m", 400_000, 40, id="64MB", marks=pytest.mark.reliability_long),
])
def test_disk_full_during_a_delta_write_leaves_the_table_at_its_last_version(tmp_path, size, rows, max_writes):
    with tmpfs(tmp_path / "lake", size=size) as root:
        lake = Lakehouse(root, {"silver.t": SPEC})
        before, err = _fill_until_full(lake, rows=rows, max_writes=max_writes)
        assert before.version is not None and before.version >= 1  # it filled up mid-table, not at once
        assert "failed writing 'silver.t' (append)" in str(err)
        assert "No space left on device" in str(err) or "os error 28" in str(err), str(err)

        assert state(lake, "silver.t") == before  # unchanged: no partial version
        data = lake.read("silver.t")  # and still readable, every row once
        assert data.num_rows == before.rows
        assert sorted(data.column("k").to_pylist()) == list(range(before.rows))

        # the table stays writable: writes that still fit commit, exactly once each
        lake.write("silver.t", lake.read("silver.t").slice(0, 10), mode="overwrite")
        after = state(lake, "silver.t")
        assert after == TableState(before.version + 1, 10)
        lake.write("silver.t", _batch(before.rows, 5), mode="append")
        assert state(lake, "silver.t") == TableState(before.version + 2, 15)


def test_disk_full_during_a_stage_commit_is_a_failed_stage_and_changes_nothing(project, tmp_path):
    """The notebook succeeds (its write is staged under runs/), the commit hits the full disk."""
    code = """import numpy as np, pandas as pd, qsdk
rng = np.random.default_rng(n)
qsdk.write_table("silver.t", pd.DataFrame({"k": np.arange(n * 100_000, n * 100_000 + rows), "x": rng.random(rows)}),
                 mode="append")"""
    project.table("silver.t", {"k": "int64", "x": "float64"}, primary_key=["k"])
    project.stage("fill", "n: int = 0\nrows: int = 1000", code, outputs=["silver.t"]).flow("f", ["fill"]).save()
    from qsdk.sdk import QuantSDK

    with tmpfs(tmp_path / "lake", size="2m") as root:
        sdk = QuantSDK(project.root, lakehouse_root=root, runs_dir=tmp_path / "runs")
        sdk.run_pipeline("f", params={"n": 0}, executor="local", track=False, cache=False)
        assert state(sdk.lakehouse, "silver.t") == TableState(0, 1000)

        result = sdk.run_pipeline("f", params={"n": 1, "rows": 400_000}, executor="local", track=False,
                                  cache=False, raise_on_failure=False)
        (failed,) = result.failures
        assert failed.error.reason == "commit" and failed.error.ename == "LakehouseError"
        assert "No space left on device" in str(failed.error) or "os error 28" in str(failed.error)
        assert state(sdk.lakehouse, "silver.t") == TableState(0, 1000)
        assert sdk.lakehouse.read("silver.t").num_rows == 1000
