"""Writers racing on one table: no lost rows, no duplicates, no mix of two overwrites.

Threads released together by a barrier call :meth:`Lakehouse.write` (what every stage commit
calls) at the same moment; the last test races two ``qsdk run`` processes whose notebooks are
held at a rendezvous and released together, so their commits collide. Delta's optimistic
concurrency turns a collision into a commit conflict: ``Lakehouse.write`` retries it, and a
retry that would now duplicate a primary key is refused with a ContractViolation.
The default run repeats each race a few times; ``-m reliability_long`` many more, with more writers.
Each table race runs twice: on a local folder and on an S3-compatible object store (a loopback
server, tests/services/s3server.py), where there is no lock file and commits are conditional puts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

from qsdk import storage
from qsdk.errors import ContractViolation, LakehouseError
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.tables import Lakehouse
from tests.reliability.conftest import NOTEBOOK_RENDEZVOUS, TableState, state

SPEC = TableSpec("silver.t", {"k": "int64", "year": "int32", "src": "string"}, primary_key=("k",))
SEED_ROWS = 100  # k 0..99, year 2000

SHORT = pytest.param(3, 2, id="short")
LONG = pytest.param(25, 4, id="long", marks=pytest.mark.reliability_long)


def _rows(keys: range, year: int, src: str) -> pa.Table:
    return pa.table({"k": pa.array(keys, pa.int64()), "year": pa.array([year] * len(keys), pa.int32()),
                     "src": [src] * len(keys)})


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path) -> str:
    """The base of the test's lakehouses: a local folder, or a fresh ``s3://`` prefix."""
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_root")


def _seeded(where: str, rep: int) -> Lakehouse:
    lake = Lakehouse(f"{where}/lake{rep}", {"silver.t": SPEC})
    lake.write("silver.t", _rows(range(SEED_ROWS), 2000, "seed"), mode="append")
    lake.write("silver.t", _rows(range(1000, 1050), 2001, "seed"), mode="append")
    assert state(lake, "silver.t") == TableState(1, SEED_ROWS + 50)
    return lake


def _race(writers: int, write: Callable[[int], Any]) -> list[Any]:
    """Run ``write(i)`` for each writer at the same moment; each outcome: a version or the error."""
    barrier = threading.Barrier(writers)
    outcomes: list[Any] = [None] * writers

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = write(i)
        except Exception as exc:  # noqa: BLE001 (the outcome is inspected by the test)
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes


def _committed(outcomes: list[Any]) -> list[int]:
    for out in outcomes:  # anything but a version must be a clear, qsdk-level error
        assert isinstance(out, int | ContractViolation | LakehouseError), repr(out)
    return sorted(out for out in outcomes if isinstance(out, int))


def _frame(lake: Lakehouse):
    return lake.read("silver.t").to_pandas()


@pytest.mark.parametrize("reps, writers", [SHORT, LONG])
def test_concurrent_appends_of_disjoint_keys_lose_nothing(where, reps, writers):
    for rep in range(reps):
        lake = _seeded(where, rep)
        outcomes = _race(writers, lambda i, lake=lake: lake.write(
            "silver.t", _rows(range(10_000 * (i + 1), 10_000 * (i + 1) + 200), 2002, f"w{i}"), mode="append"))
        assert _committed(outcomes) == [2 + i for i in range(writers)], outcomes  # every append landed
        df = _frame(lake)
        assert state(lake, "silver.t") == TableState(1 + writers, SEED_ROWS + 50 + 200 * writers)
        assert len(df) == SEED_ROWS + 50 + 200 * writers and not df.k.duplicated().any()
        assert sorted(df[df.year == 2002].src.unique()) == [f"w{i}" for i in range(writers)]


@pytest.mark.parametrize("reps, writers", [SHORT, LONG])
def test_concurrent_appends_of_the_same_keys_commit_once(where, reps, writers):
    """The append that loses the race must not duplicate keys: a conflict, then a clear refusal."""
    for rep in range(reps):
        lake = _seeded(where, rep)
        outcomes = _race(writers, lambda i, lake=lake: lake.write("silver.t", _rows(range(500, 540), 2003, f"w{i}"),
                                                       mode="append"))
        assert _committed(outcomes) == [2], outcomes
        refused = [o for o in outcomes if isinstance(o, ContractViolation)]
        assert len(refused) == writers - 1
        assert all("would duplicate 40 existing primary key(s)" in str(e) for e in refused)
        df = _frame(lake)
        assert state(lake, "silver.t") == TableState(2, SEED_ROWS + 50 + 40)
        assert not df.k.duplicated().any() and df[df.year == 2003].src.nunique() == 1


@pytest.mark.parametrize("existing", [True, False], ids=["existing-partition", "new-partition"])
@pytest.mark.parametrize("reps, writers", [SHORT, LONG])
def test_concurrent_overwrites_of_one_partition_leave_exactly_one(where, reps, writers, existing):
    year = 2001 if existing else 2004
    for rep in range(reps):
        lake = _seeded(where, rep)
        outcomes = _race(writers, lambda i, lake=lake: lake.write(
            "silver.t", _rows(range(2000 + 7 * i, 2000 + 7 * i + 30), year, f"w{i}"),
            mode="overwrite", predicate=f"year = {year}"))
        versions = _committed(outcomes)
        assert versions, outcomes
        df = _frame(lake)
        part = df[df.year == year]
        (winner,) = part.src.unique()  # one writer's rows, never a mix
        w = int(winner[1:])
        assert sorted(part.k) == list(range(2000 + 7 * w, 2000 + 7 * w + 30))
        assert state(lake, "silver.t") == TableState(1 + len(versions), SEED_ROWS + 30 + (50 if not existing else 0))
        assert sorted(df[df.year == 2000].k) == list(range(SEED_ROWS))  # other partitions untouched
        if existing is False:
            assert sorted(df[df.year == 2001].k) == list(range(1000, 1050))


@pytest.mark.parametrize("reps, writers", [SHORT, LONG])
def test_concurrent_merges_on_the_same_keys_never_duplicate(where, reps, writers):
    for rep in range(reps):
        lake = _seeded(where, rep)
        keys = range(80, 140)  # 80..99 exist, 100..139 are new
        outcomes = _race(writers, lambda i, lake=lake, keys=keys: lake.write(
            "silver.t", _rows(keys, 2005, f"w{i}"), mode="merge"))
        versions = _committed(outcomes)
        assert versions, outcomes
        df = _frame(lake)
        assert state(lake, "silver.t") == TableState(1 + len(versions), 140 + 50)
        assert not df.k.duplicated().any()
        merged = df[df.k.isin(keys)]
        assert len(merged) == len(keys) and merged.src.nunique() == 1  # the last merge, whole


def test_concurrent_first_writes_creating_a_table_do_not_duplicate(where):
    """Delta does not conflict-check creation (delta-rs commits a second concurrent creation as
    version 1); qsdk's creation commit is version 0 or nothing (written only if absent, no retry),
    so the loser's keys are checked against the winner's. No lock file is involved."""
    for rep in range(5):  # without that the race shows in (nearly) every attempt
        lake = Lakehouse(f"{where}/new{rep}", {"silver.t": SPEC})
        outcomes = _race(2, lambda i, lake=lake: lake.write("silver.t", _rows(range(40), 2000, f"w{i}"),
                                                            mode="append"))
        assert _committed(outcomes) == [0], outcomes
        (refused,) = [out for out in outcomes if isinstance(out, ContractViolation)]
        assert "would duplicate 40 existing primary key(s)" in str(refused)
        assert state(lake, "silver.t") == TableState(0, 40)
        assert not _frame(lake).k.duplicated().any()
    assert not storage.listdir(storage.location(where) / f"new{rep}" / "_qsdk_locks")


def _create_in_process(root: str, start: int, src: str, barrier) -> None:
    import deltalake  # noqa: F401 (imported before the barrier: the writes start together)

    lake = Lakehouse(root, {"silver.t": SPEC})
    rows = _rows(range(start, start + 40), 2000, src)
    barrier.wait()
    try:
        lake.write("silver.t", rows, mode="append")
    except ContractViolation:
        pass  # the overlapping writer that lost: its keys are already there
    finally:
        if root.startswith("s3://"):
            # a multiprocessing child ends with os._exit, skipping pyarrow's atexit hook: without
            # this, the AWS SDK's threads abort the exiting process ("terminate called without an
            # active exception", exit code -6) after the write has completed
            import pyarrow.fs

            pyarrow.fs.finalize_s3()


def test_processes_creating_one_table_at_once_keep_every_key_once(where):
    """Three processes (as Ray workers are) create one table at once: two write overlapping keys,
    one disjoint keys. Every key lands exactly once and nothing disjoint is lost."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, like a Ray worker
    for rep in range(3):
        root = f"{where}/procs{rep}"  # the children inherit the store's AWS_* variables
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_create_in_process, args=(root, start, f"p{i}", barrier))
                 for i, start in enumerate((0, 0, 1000))]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=120)
        assert [proc.exitcode for proc in procs] == [0, 0, 0]
        df = _frame(Lakehouse(root, {"silver.t": SPEC}))
        assert sorted(df.k) == [*range(40), *range(1000, 1040)]
        assert df[df.k >= 1000].src.unique().tolist() == ["p2"]


# ------------------------------------------------------------------ two flows, two processes
PARAMS = 'start: "date" = "2021-01-01"\nend: "date" = "2021-12-31"\nvalue: int = 1\nport: int = 0'
WRITE = """import pandas as pd, qsdk
df = pd.DataFrame({"date": pd.date_range(start, end, freq="D").date, "v": value})
if port:
""" + "\n".join("    " + line for line in NOTEBOOK_RENDEZVOUS.splitlines()) + """
qsdk.write_table("silver.p", df, mode="overwrite", predicate=qsdk.between("date", start, end))"""


@pytest.mark.parametrize("reps", [pytest.param(1, id="short"),
                                  pytest.param(4, id="long", marks=pytest.mark.reliability_long)])
def test_two_flows_overwriting_one_partition_from_two_processes(project, rendezvous, reps):
    sdk = (project.table("silver.p", {"date": "date", "v": "int64"}, primary_key=["date"])
           .stage("w", PARAMS, WRITE, outputs=["silver.p"], partition={"by": "year"})
           .flow("f", ["w"]).sdk())
    sdk.run_pipeline("f", params={"start": "2020-01-01"}, executor="local", track=False, cache=False)
    version = 1  # one commit per year
    assert state(sdk.lakehouse, "silver.p") == TableState(version, 366 + 365)

    env = {**os.environ, "QSDK_LAKEHOUSE": str(sdk.config.lakehouse_root), "QSDK_RUNS": str(sdk.config.runs_dir)}
    for rep in range(reps):
        values = (10 * rep + 2, 10 * rep + 3)
        procs = [subprocess.Popen(
            [sys.executable, "-m", "qsdk", "--project", str(project.root), "run", "f", "-p", f"value={value}",
             "-p", f"port={rendezvous.port}", "--executor", "local", "--no-track", "--no-cache", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for value in values]
        try:
            held = [rendezvous.wait(timeout=180)[0] for _ in procs]  # both notebooks ran and staged
            for conn in held:  # release both: the two commits race
                rendezvous.release(conn)
            outs = [p.communicate(timeout=180) for p in procs]
        finally:
            for p in procs:
                p.kill()
        runs = [json.loads(out) for out, _ in outs]
        for run, proc, (_, err) in zip(runs, procs, outs, strict=True):  # a loser reports why
            assert (proc.returncode, run["status"]) in {(0, "succeeded"), (1, "failed")}, err
        version += sum(r["status"] == "succeeded" for r in runs)
        assert version > 1 + rep  # at least one of the two committed
        df = sdk.lakehouse.read("silver.p").to_pandas()
        assert state(sdk.lakehouse, "silver.p") == TableState(version, 366 + 365)
        assert not df.date.duplicated().any()
        assert set(df[df.date.astype(str) < "2021"].v) == {1}
        (final,) = set(df[df.date.astype(str) >= "2021"].v)  # one flow's partition, whole
        assert final in values
