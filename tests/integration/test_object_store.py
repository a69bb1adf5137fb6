"""The lakehouse on an S3-compatible object store (a loopback server, tests/services/s3server.py).

Every test gets a fresh ``s3://qsdk-tests/lake-<id>`` root and the standard AWS_* variables; the
same operations as on a local folder must give the same answers, with no file on local disk.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from qsdk import storage
from qsdk.config import Config
from qsdk.errors import ConfigError, ContractViolation
from qsdk.lakehouse import Lakehouse, TableSpec
from qsdk.lakehouse.lineage import table_lineage
from qsdk.reproduce import reproduce

SPEC = TableSpec("silver.t", {"k": "int64", "year": "int32", "src": "string"}, primary_key=("k",),
                 partition_by=("year",))


def rows(keys: range, year: int, src: str) -> pa.Table:
    return pa.table({"k": pa.array(keys, pa.int64()), "year": pa.array([year] * len(keys), pa.int32()),
                     "src": [src] * len(keys)})


@pytest.fixture
def lake(s3_root) -> Lakehouse:
    return Lakehouse(s3_root, {"silver.t": SPEC})


def test_writes_reads_and_versions_on_the_object_store(lake, s3_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder either
    assert isinstance(lake.root, storage.ObjectPath) and str(lake.root) == s3_root
    assert lake.write("silver.t", rows(range(10), 2000, "a"), mode="append") == 0
    assert lake.write("silver.t", rows(range(10, 20), 2001, "a"), mode="append") == 1
    with pytest.raises(ContractViolation, match="would duplicate 5 existing primary key"):
        lake.write("silver.t", rows(range(15, 25), 2001, "b"), mode="append")
    # a partition overwrite replaces only its slice
    assert lake.write("silver.t", rows(range(10, 13), 2001, "o"), mode="overwrite", predicate="year = 2001") == 2
    assert lake.write("silver.t", rows(range(8, 12), 2001, "m"), mode="merge") == 3
    got = lake.read("silver.t").to_pandas().sort_values("k")
    assert got.k.tolist() == [*range(12), 12] and not got.k.duplicated().any()
    assert dict(zip(got.k, got.src, strict=True))[8] == "m" and dict(zip(got.k, got.src, strict=True))[12] == "o"
    # reads with pushdown and pinned versions
    assert lake.read("silver.t", columns=["k"], filters=[("year", "=", 2000)]).column_names == ["k"]
    assert lake.read("silver.t", filters=[("k", ">=", 5), ("year", "=", 2000)]).num_rows == 3
    assert lake.read("silver.t", version=1).num_rows == 20
    assert lake.count_where("silver.t", "year = 2001", version=1) == 10
    # listing, info, history, commit metadata: the same answers as on a folder
    assert lake.list_tables() == ["silver.t"]
    info = lake.info("silver.t")
    assert (info.version, info.rows, info.path, info.broken) == (3, 13, f"{s3_root}/silver/t", None)
    assert lake.commit_info("silver.t", 2)["operation"] == "WRITE"
    assert lake.commit_info("silver.t", 99) is None
    assert [h["version"] for h in lake.history("silver.t")] == [3, 2, 1, 0]
    # time travel: restore is a new commit that brings version 1 back
    assert lake.restore("silver.t", 1) == 4
    assert lake.read("silver.t").num_rows == 20
    # deltalake itself sees the same table at the same place, and nothing was written locally
    dt = DeltaTable(f"{s3_root}/silver/t", storage_options=lake.storage_options)
    assert dt.version() == 4 and dt.metadata().partition_columns == ["year"]
    assert list(tmp_path.iterdir()) == []


def test_lineage_and_undo_on_the_object_store(lake):
    lake.write("silver.t", rows(range(5), 2000, "a"), mode="append",
               metadata={"qsdk.run_id": "r1", "qsdk.stage": "s", "qsdk.inputs": {"bronze.x": 3}})
    lineage = table_lineage(lake, "silver.t")
    assert (lineage.run_id, lineage.stage, lineage.inputs) == ("r1", "s", {"bronze.x": 3})
    lake.write("silver.t", rows(range(3, 8), 2000, "b"), mode="merge")
    assert lake.undo_keys("silver.t", rows(range(3, 8), 2000, "b"), before=0) == 2
    assert sorted(lake.read("silver.t").column("src").to_pylist()) == ["a"] * 5


def test_an_object_store_lakehouse_without_credentials_says_what_to_set(s3_root, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(ConfigError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        Lakehouse(s3_root, {"silver.t": SPEC}).write("silver.t", rows(range(3), 2000, "a"), mode="append")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "false")
    with pytest.raises(ConfigError, match="plain http: set AWS_ALLOW_HTTP=true"):
        Lakehouse(s3_root).list_tables()
    with pytest.raises(ConfigError, match="supports local folders and s3://bucket/prefix"):
        Lakehouse("gs://bucket/lake")


def test_config_takes_an_s3_lakehouse_from_the_environment(project, s3_root, monkeypatch):
    project.save()
    monkeypatch.setenv("QSDK_LAKEHOUSE", s3_root + "/")
    config = Config.load(project.root)
    assert config.lakehouse_root == storage.location(s3_root) and str(config.lakehouse_root) == s3_root


WRITE = """import pandas as pd, qsdk
df = pd.DataFrame({"k": range(start, start + 10), "year": year, "src": "flow"})
qsdk.write_table("silver.t", df, mode="overwrite", predicate=f"year = {year}")"""
READ = """import qsdk
df = qsdk.DataLoader().read("silver.t", filters=[("year", "=", year)])
qsdk.write_table("gold.n", __import__("pandas").DataFrame({"year": [year], "n": [len(df)]}),
                 mode="overwrite", predicate=f"year = {year}")"""


def test_a_flow_runs_caches_lists_and_reproduces_on_an_object_store_lakehouse(project, s3_env, s3_root,
                                                                              monkeypatch):
    """A two-stage flow writes through the contract and commits on S3; its cache records live
    there too (a re-run is a no-op), ``qsdk tables`` lists the tables from there, and
    ``reproduce`` re-runs it into a lakehouse beside it with identical rows."""
    project.table("silver.t", {"k": "int64", "year": "int64", "src": "string"}, primary_key=["k"],
                  partition_by=["year"])
    project.table("gold.n", {"year": "int64", "n": "int64"}, primary_key=["year"])
    project.stage("w", "start: int = 0\nyear: int = 2000", WRITE, outputs=["silver.t"])
    project.stage("r", "year: int = 2000", READ, inputs=["silver.t"], outputs=["gold.n"])
    project.flow("f", ["w", "r"]).save()
    monkeypatch.setenv("QSDK_LAKEHOUSE", s3_root)
    from qsdk.sdk import QuantSDK

    sdk = QuantSDK(project.root, runs_dir=project.root / "runs")
    assert str(sdk.config.lakehouse_root) == s3_root
    first = sdk.run_pipeline("f", executor="local")  # tracked: reproduce reads the run back
    assert first.status == "succeeded", first
    assert sdk.lakehouse.read("gold.n").to_pylist() == [{"year": 2000, "n": 10}]
    assert storage.listdir(storage.location(s3_root) / "_qsdk_cache") == ["r", "w"]
    assert not (project.root / "lakehouse").exists()  # nothing went to the local default
    again = sdk.run_pipeline("f", executor="local", track=False)
    assert [t.status for t in again.results] == ["cached", "cached"], again.results
    out = subprocess.run([sys.executable, "-m", "qsdk", "--project", str(project.root), "tables", "--json"],
                         capture_output=True, text=True, check=True, timeout=120)
    listed = {t["name"]: t for t in json.loads(out.stdout)}
    assert listed["silver.t"]["rows"] == 10 and listed["silver.t"]["path"] == f"{s3_root}/silver/t"
    assert listed["gold.n"]["version"] == 0
    # time travel: reproduce re-runs the flow into s3://.../lakehouse-repro/<run> and compares
    report = reproduce(first.run_id, config=sdk.config, track=False)
    assert report.lakehouse.startswith(f"{s3_env.url('lakehouse-repro')}/"), report.lakehouse
    assert report.identical, report.to_dict()


def test_a_sandbox_on_the_object_store_and_promote_from_it(project, s3_root):
    """``%qsdk stage`` writes land in ``s3://.../_sandbox/<user>``; promote copies them into the
    production table with the contract checked, and records where they came from."""
    from qsdk.lakehouse import sandbox

    project.table("silver.t", {"k": "int64", "year": "int32", "src": "string"}, primary_key=["k"]).save()
    config = Config.load(project.root, lakehouse_root=s3_root)
    mine = Lakehouse(sandbox.sandbox_root(config.lakehouse_root, "tester"), {"silver.t": SPEC})
    assert str(mine.root) == f"{s3_root}/_sandbox/tester"
    mine.write("silver.t", rows(range(4), 2000, "sandbox"), mode="append")
    production = Lakehouse(config.lakehouse_root, {"silver.t": SPEC})
    assert production.list_tables() == []  # `_sandbox` is no layer: no production table yet
    assert sandbox.promote("silver.t", lakehouse_root=config.lakehouse_root, specs={"silver.t": SPEC},
                           user="tester") == 0
    assert production.read("silver.t").column("src").to_pylist() == ["sandbox"] * 4
    assert production.commit_info("silver.t", 0)["qsdk.promoted_from"] == f"{s3_root}/_sandbox/tester/silver/t"
