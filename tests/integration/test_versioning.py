"""DVC with qsdk, for real: a temporary git + DVC repository holding the repo's pipelines/ and
notebooks/, the real `dvc` and `git` command lines, real kernels, real Delta tables and MLflow.

No network: DVC analytics and update checks are off, and the DVC remote is a local folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from qsdk.errors import ParameterError, SnapshotConflict, SnapshotCorrupted, VersioningError
from qsdk.execution.hooks import Hook
from qsdk.integrations.dvc import SnapshotStore, dvcsync
from qsdk.integrations.dvc.command import cache_dir, cache_file
from qsdk.sdk import QuantSDK
from tests.conftest import Project

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMALL = {"start": "2005-01-01", "end": "2005-06-30"}  # one partition per stage
PRICES = ("ingest_prices", "clean_prices")  # the part of the backfill these tests run (2 kernels)


class Repo:
    """A temporary git repository with DVC initialised and a copy of the qsdk project."""

    def __init__(self, tmp: Path, *, source: Path = REPO) -> None:
        self.root = tmp / "repo"
        self.lake, self.runs, self.remote = tmp / "lake", tmp / "runs", tmp / "dvc-remote"
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `qsdk` for dvc.yaml's cmd
            "DVC_NO_ANALYTICS": "1",
            "QSDK_LAKEHOUSE": str(self.lake),
            "QSDK_RUNS": str(self.runs),
            "QSDK_DVC_REMOTE": str(self.remote),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        }
        self.env.pop("QSDK_PROJECT", None)
        for folder in ("pipelines", "notebooks"):
            shutil.copytree(source / folder, self.root / folder)
        self.sh("git", "init", "-q")
        self.sh("git", "config", "user.email", "test@example.com")
        self.sh("git", "config", "user.name", "qsdk test")
        self.sh("dvc", "init", "-q")
        self.sh("dvc", "config", "core.analytics", "false")
        self.sh("dvc", "config", "core.check_update", "false")

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sdk(self) -> QuantSDK:
        return QuantSDK(self.root, lakehouse_root=self.lake, runs_dir=self.runs)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    r = Repo(tmp_path)
    for key in ("DVC_NO_ANALYTICS", "QSDK_LAKEHOUSE", "QSDK_RUNS", "QSDK_DVC_REMOTE", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, r.env[key])  # the same settings for in-process calls
    return r


def sorted_rows(table: pa.Table) -> list[dict]:
    return table.sort_by([("symbol", "ascending"), ("date", "ascending")]).to_pylist()


def bars(symbols: list[str], days: int, *, start: str = "2020-01-01", price: float = 10.0) -> pa.Table:
    first = dt.date.fromisoformat(start)
    rows = [{"date": first + dt.timedelta(days=d), "symbol": s, "open": price, "high": price + 1,
             "low": price - 1, "close": price + d, "volume": 100 + d, "adj_close": price + d, "source": "test"}
            for s in symbols for d in range(days)]
    return pa.Table.from_pylist(rows)


def actions(n: int) -> pa.Table:
    return pa.Table.from_pylist([{"date": dt.date(2020, 1, 1 + i), "symbol": "AAA", "action": "split",
                                  "ratio": 2.0, "amount": 0.0} for i in range(n)])


# ------------------------------------------------------------------ dvc.yaml, dvc repro, dvc dag


def test_dvc_repro_runs_the_registry_pipeline_and_dvc_dag_agrees(repo: Repo):
    out = repo.sh("qsdk", "dvc", "sync")
    assert "dvc.yaml" in out.stdout
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    params["backfill"].update(SMALL)  # the user's edit, kept by later syncs
    (repo.root / "params.yaml").write_text(yaml.safe_dump(params))
    assert repo.sh("qsdk", "dvc", "sync", "--check").returncode == 0

    repro = repo.sh("dvc", "repro", "clean_prices")  # DVC runs it and what it depends on
    assert re.findall(r"Running stage '(\w+)'", repro.stdout) == list(PRICES)
    sdk = repo.sdk()
    lake = sdk.lakehouse
    prices = lake.read("silver.prices")
    assert prices.num_rows > 0 and lake.read("bronze.prices_raw").num_rows == prices.num_rows
    days = prices.column("date").to_pylist()
    assert min(days) >= dt.date(2005, 1, 1) and max(days) <= dt.date(2005, 6, 30)  # params.yaml's range
    markers = {s: json.loads((repo.root / ".qsdk" / "dvc" / f"{s}.json").read_text())
               for s in ("ingest_prices", "clean_prices")}
    assert markers["ingest_prices"]["written"] == {"bronze.prices_raw": lake.version("bronze.prices_raw")}
    assert markers["clean_prices"]["read"] == {"bronze.prices_raw": lake.version("bronze.prices_raw")}
    assert markers["clean_prices"]["parameters"]["start"] == SMALL["start"]
    lock = yaml.safe_load((repo.root / "dvc.lock").read_text())
    assert lock["stages"]["ingest_prices"]["params"]["params.yaml"] == {
        "backfill.start": SMALL["start"], "backfill.end": SMALL["end"]}
    assert not (repo.root / ".gitignore").exists() or "lake" not in (repo.root / ".gitignore").read_text()
    assert repo.sh("git", "status", "--porcelain", "--ignored", ".qsdk").stdout.startswith("!!")  # not for git

    again = repo.sh("dvc", "repro", "clean_prices")  # nothing changed: DVC runs nothing
    assert "Running stage" not in again.stdout
    assert lake.version("silver.prices") == markers["clean_prices"]["written"]["silver.prices"]

    dot = repo.sh("dvc", "dag", "--dot").stdout
    dvc_edges = {(a, b) for a, b in re.findall(r'"([\w-]+)"\s*->\s*"([\w-]+)"', dot)}
    qsdk_edges = set()
    for flow in sdk.registry.flows:  # what `qsdk show FLOW` prints as "after", for every flow
        show = json.loads(repo.sh("qsdk", "show", flow, "--json").stdout)
        qsdk_edges |= {(up, name) for name, stage in show["stages"].items() for up in stage["after"]}
    assert dvc_edges == qsdk_edges == dvcsync.edges(sdk.registry)
    assert ("ingest_prices", "clean_prices") in dvc_edges
    assert set(re.findall(r'^"([\w-]+)";', dot, re.M)) == set(dvcsync.plan(sdk.registry))

    # the registry moves on: dvc.yaml is out of step until the next sync
    doc = yaml.safe_load((repo.root / "pipelines" / "backfill.yaml").read_text())
    doc["flows"]["ingest_only"] = {"stages": ["ingest_prices"]}
    doc["stages"]["ingest_prices"]["notebook"] = "notebooks/backfill/ingest_prices.ipynb"
    doc["stages"]["clean_prices"]["description"] = "changed"
    (repo.root / "pipelines" / "backfill.yaml").write_text(yaml.safe_dump(doc))
    stale = repo.sh("qsdk", "dvc", "sync", "--check", check=False)
    assert stale.returncode == 1 and "+    desc: changed" in stale.stderr


def test_params_yaml_values_reach_the_stage_as_literal_text_through_dvc_repro(tmp_path: Path):
    """A params.yaml value never reaches a shell: dvc.yaml's command reads params.yaml itself."""
    project = Project(tmp_path / "source")
    project.table("bronze.labels", {"k": "int64", "label": "string"})
    project.stage("tag", 'label: str = "plain"', "import pandas as pd, qsdk\n"
                  'qsdk.write_table("bronze.labels", pd.DataFrame({"k": [1], "label": [label]}), mode="overwrite")',
                  outputs=["bronze.labels"])
    project.flow("f", ["tag"], parameters={"label": "plain"}).save()
    repo = Repo(tmp_path, source=project.root)
    repo.sh("qsdk", "dvc", "sync")
    evil = '$(touch pwned) `touch pwned2` "; touch pwned3; "\' $HOME'
    (repo.root / "params.yaml").write_text(yaml.safe_dump({"f": {"label": evil}}))

    repo.sh("dvc", "repro", "tag")
    labels = repo.sdk().lakehouse.read("bronze.labels").column("label").to_pylist()
    assert labels == [evil]  # the literal text, nothing expanded
    assert not list(tmp_path.rglob("pwned*"))  # and nothing ran
    assert "cmd: qsdk dvc run f tag\n" in (repo.root / "dvc.yaml").read_text()
    (repo.root / "params.yaml").write_text(yaml.safe_dump({"f": {"label": "changed"}}))
    assert "f.label" in repo.sh("dvc", "status", "tag").stdout  # DVC still tracks the value


# ------------------------------------------------------------------ snapshots (no kernels)


def test_snapshot_create_list_diff_and_restore_after_the_tables_moved_on(repo: Repo):
    sdk = repo.sdk()
    lake = sdk.lakehouse
    lake.write("bronze.prices_raw", bars(["AAA", "BBB"], 5), mode="overwrite")
    lake.write("silver.corporate_actions", actions(2), mode="overwrite")
    v_raw = lake.write("bronze.prices_raw", bars(["CCC"], 3), mode="append")
    frozen = {"bronze.prices_raw": lake.read("bronze.prices_raw"),
              "silver.corporate_actions": lake.read("silver.corporate_actions")}

    created = repo.sh("qsdk", "snapshot", "create", "gold", "--json")
    gold = json.loads(created.stdout)
    assert gold["tables"] == {"bronze.prices_raw": {"version": v_raw, "rows": 13},
                              "silver.corporate_actions": {"version": 0, "rows": 2}}  # all that exist
    assert gold["md5"].endswith(".dir")
    dvc_file = repo.root / "snapshots" / "gold.dvc"
    assert yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"] == gold["md5"]
    assert (repo.root / "snapshots" / ".gitignore").read_text().split() == ["/gold"]  # data: DVC's
    assert any(p.is_file() for p in repo.remote.rglob("*"))  # pushed to the automatic local remote
    assert "qsdk-local" in repo.sh("dvc", "remote", "list").stdout
    refused = repo.sh("qsdk", "snapshot", "create", "gold", check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr

    # the tables move on: new rows, a changed row, one table rewritten
    lake.write("bronze.prices_raw", bars(["AAA"], 5, price=99.0), mode="merge")
    lake.write("bronze.prices_raw", bars(["DDD"], 4), mode="append")
    lake.write("silver.corporate_actions", actions(1), mode="overwrite")
    moved = {t: lake.read(t) for t in frozen}
    store = SnapshotStore(sdk.config, sdk.registry)
    silver = store.create("silver-only", ["silver.corporate_actions"])
    assert silver.versions == {"silver.corporate_actions": lake.version("silver.corporate_actions")}
    make = subprocess.run(["make", "-s", "-C", str(REPO), "-o", ".venv/.installed", "snapshot", "NAME=later"],
                          env={**repo.env, "QSDK_PROJECT": str(repo.root)}, capture_output=True, text=True)
    assert make.returncode == 0, make.stderr  # `make snapshot NAME=...`, here on the temp project

    listed = json.loads(repo.sh("qsdk", "snapshot", "list", "--json").stdout)
    assert [s["name"] for s in listed] == ["gold", "later", "silver-only"]
    assert listed[0]["md5"] == gold["md5"] and listed[0]["local"] is True
    assert listed[1]["tables"]["bronze.prices_raw"] == {"version": lake.version("bronze.prices_raw"), "rows": 17}

    diff = json.loads(repo.sh("qsdk", "snapshot", "diff", "gold", "later", "--json").stdout)
    by_table = {t["table"]: t for t in diff["tables"]}
    assert (by_table["bronze.prices_raw"]["rows_a"], by_table["bronze.prices_raw"]["rows_b"]) == (13, 17)
    assert by_table["bronze.prices_raw"]["same_data"] is False and not diff["identical"]
    assert by_table["silver.corporate_actions"]["rows_b"] == 1
    assert store.diff("silver-only", "later").tables[0].in_a is False  # bronze only in "later"
    assert store.diff("silver-only", "later").tables[1].same_data is True

    before = {t: lake.version(t) for t in frozen}
    conflict = repo.sh("qsdk", "snapshot", "restore", "gold", check=False)
    assert conflict.returncode == 2 and "--force" in conflict.stderr and "bronze.prices_raw" in conflict.stderr
    with pytest.raises(SnapshotConflict) as err:
        store.restore("gold")
    assert set(err.value.tables) == set(frozen)
    assert {t: lake.version(t) for t in frozen} == before  # refused: nothing written

    shutil.rmtree(repo.root / "snapshots" / "gold")  # only the .dvc file is left: pulled on restore
    report = json.loads(repo.sh("qsdk", "snapshot", "restore", "gold", "--force", "--json").stdout)
    for table, rows in frozen.items():
        entry = report["tables"][table]
        assert entry["status"] == "restored" and entry["previous_version"] == before[table]
        assert entry["version"] == before[table] + 1 == lake.version(table)
        assert sorted_rows(lake.read(table)) == sorted_rows(rows)  # exactly the frozen rows
        assert sorted_rows(lake.read(table, version=before[table])) == sorted_rows(moved[table])  # kept
        meta = lake.commit_metadata(table, entry["version"])
        assert (meta["qsdk.snapshot"], meta["qsdk.snapshot.md5"]) == ("gold", gold["md5"])
    again = store.restore("gold")  # already restored: no conflict, nothing written
    assert {t: e["status"] for t, e in again.tables.items()} == dict.fromkeys(frozen, "already restored")
    assert {t: lake.version(t) for t in frozen} == {t: before[t] + 1 for t in frozen}
    assert store.restore("later", ["silver.corporate_actions"], force=True).tables[
        "silver.corporate_actions"]["rows"] == 1

    # the contract moved on too: refused before anything is written
    tables = yaml.safe_load((repo.root / "pipelines" / "tables.yaml").read_text())
    tables["tables"]["bronze.prices_raw"]["columns"]["vwap"] = "float64"
    (repo.root / "pipelines" / "tables.yaml").write_text(yaml.safe_dump(tables))
    version = lake.version("bronze.prices_raw")
    with pytest.raises(VersioningError, match="vwap"):
        SnapshotStore(sdk.config).restore("later", force=True)
    assert lake.version("bronze.prices_raw") == version


def test_corrupted_or_missing_cache_entries_are_detected_and_named(repo: Repo):
    sdk = repo.sdk()
    lake = sdk.lakehouse
    lake.write("bronze.prices_raw", bars(["AAA", "BBB"], 20), mode="overwrite")
    store = SnapshotStore(sdk.config, sdk.registry)
    info = store.create("gold", ["bronze.prices_raw"])
    frozen = lake.read("bronze.prices_raw")
    folder = repo.root / "snapshots" / "gold"
    part = "snapshots/gold/bronze.prices_raw/part-00000.parquet"
    md5 = next(e["md5"] for e in json.loads(cache_file(cache_dir(repo.root), info.md5).read_text())
               if e["relpath"] == "bronze.prices_raw/part-00000.parquet")
    cached = cache_file(cache_dir(repo.root), md5)
    expected = json.loads((folder / "manifest.json").read_text())["tables"]["bronze.prices_raw"][
        "files"]["bronze.prices_raw/part-00000.parquet"]["sha256"]

    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    cached.chmod(0o644)  # DVC keeps cache files read-only...
    cached.write_bytes(bytes(data))
    cached.chmod(0o444)  # ...and trusts them: it re-hashes only writable ones
    shutil.rmtree(folder)
    lake.write("bronze.prices_raw", bars(["ZZZ"], 2), mode="overwrite")
    version = lake.version("bronze.prices_raw")
    with pytest.raises(SnapshotCorrupted) as err:
        store.restore("gold", force=True)
    problem = next(p for p in err.value.problems if p["file"] == part)
    assert problem["expected"] == expected and problem["actual"] not in (None, expected)
    assert problem["cache"] == str(cached) and str(cached) in str(err.value)
    assert lake.version("bronze.prices_raw") == version  # nothing restored
    checked_out = repo.sh("dvc", "status", "snapshots/gold.dvc").stdout
    assert "up to date" in checked_out  # DVC itself sees nothing wrong

    cached.unlink()  # what the error tells the user to do: the remote has the good copy
    report = store.restore("gold", force=True)
    assert report.tables["bronze.prices_raw"]["status"] == "restored"
    assert sorted_rows(lake.read("bronze.prices_raw")) == sorted_rows(frozen)

    # never pushed and gone from the cache: missing, and named
    lake.write("bronze.prices_raw", bars(["QQQ"], 7), mode="overwrite")  # content the remote lacks
    store.create("local-only", ["bronze.prices_raw"], push=False)
    listing = json.loads(cache_file(cache_dir(repo.root), store.get("local-only").md5).read_text())
    for entry in listing:
        if entry["relpath"].endswith(".parquet"):
            lost = cache_file(cache_dir(repo.root), entry["md5"])
            lost.chmod(0o644)
            lost.unlink()
    shutil.rmtree(repo.root / "snapshots" / "local-only")
    lake.write("bronze.prices_raw", bars(["YYY"], 2), mode="overwrite")
    failed = repo.sh("qsdk", "snapshot", "restore", "local-only", "--force", check=False)
    assert failed.returncode == 1
    assert "snapshots/local-only/bronze.prices_raw/part-00000.parquet" in failed.stderr
    assert "not in the DVC cache" in failed.stderr


# ------------------------------------------------------------------ -p snapshot=NAME and MLflow


def test_backfill_snapshot_option_and_mlflow_tags(repo: Repo):
    from mlflow import MlflowClient

    sdk = repo.sdk()
    with pytest.raises(ParameterError, match="snapshot"):  # still a typo guard for real parameters
        sdk.run_pipeline("backfill", params={**SMALL, "snapshots": "x"}, track=False)
    (repo.root / "snapshots").mkdir()
    (repo.root / "snapshots" / "taken.dvc").write_text("outs: []\n")
    with pytest.raises(VersioningError, match="already exists"):  # refused before any kernel starts
        sdk.run_pipeline("backfill", params=SMALL, snapshot="taken", track=False)
    assert not (repo.lake / "bronze").exists()

    run = repo.sh("qsdk", "run", "backfill", "--only", PRICES[0], "--only", PRICES[1], "-p",
                  f"start={SMALL['start']}", "-p", f"end={SMALL['end']}", "-p", "snapshot=gold", "--json")
    result = json.loads(run.stdout)
    lake = sdk.lakehouse
    written = {t: v for s in result["stages"].values() for t, v in s["written"].items()}
    assert result["snapshot"]["tables"] == written == {t: lake.version(t) for t in written}
    assert set(written) == {"bronze.prices_raw", "silver.prices", "silver.corporate_actions"}
    store = SnapshotStore(sdk.config, sdk.registry)
    gold = store.get("gold")
    assert gold.md5 == result["snapshot"]["md5"] and gold.run_id == result["run_id"]
    client = MlflowClient(tracking_uri=repo.env["MLFLOW_TRACKING_URI"])
    assert client.get_run(result["mlflow_run_id"]).data.tags["qsdk.snapshot.gold"] == gold.md5

    # a later flow run that reads a restored snapshot records it too
    lake.write("bronze.prices_raw", bars(["AAA"], 3), mode="overwrite")
    store.restore("gold", ["bronze.prices_raw"], force=True)
    rerun = sdk.run_pipeline("backfill", params=SMALL, only=["clean_prices"], cache=False)
    assert rerun.extra["snapshots_read"] == {"gold": gold.md5}
    tags = client.get_run(rerun.extra["mlflow_run_id"]).data.tags
    assert tags["qsdk.snapshot.gold"] == gold.md5
    assert lake.read("silver.prices").num_rows == gold.tables["silver.prices"]["rows"]

    # hooks in either order: the same status, provenance and MLflow record (no hook changes the
    # status or needs another before it; the snapshot and its tags come after every hook)
    from qsdk import names as qnames
    from qsdk.execution.hooks import Hook
    from qsdk.execution.scheduling import run_flow
    from qsdk.integrations.dvc import VersioningHook, tag_flow_run
    from qsdk.integrations.mlflow import MlflowTracking

    class SeenStatus(Hook):
        def __init__(self) -> None:
            self.status: list[str] = []

        def after_flow(self, *, run: Any, result: Any, **_: Any) -> None:
            self.status.append(result.status)

    outcomes = []
    for reverse in (False, True):
        first, last = SeenStatus(), SeenStatus()
        hooks: list[Hook] = [MlflowTracking(tracking_uri=sdk.config.tracking_uri), VersioningHook()]
        flow = sdk.registry.flow("backfill").select(only=["clean_prices"])
        result = run_flow(flow, registry=sdk.registry, config=sdk.config, params=SMALL, cache=False,
                          hooks=[first, *(reversed(hooks) if reverse else hooks), last])
        tag_flow_run(result)
        ml = client.get_run(result.extra["mlflow_run_id"])
        outcomes.append((result.status, first.status, last.status, result.extra.get("snapshots_read"),
                         ml.info.status, ml.data.tags.get(qnames.STATUS), ml.data.tags.get("qsdk.snapshot.gold")))
    assert outcomes[0] == outcomes[1] == (
        "succeeded", ["succeeded"], ["succeeded"], {"gold": gold.md5}, "FINISHED", "succeeded", gold.md5)


def test_a_snapshot_that_cannot_be_taken_fails_the_run_after_every_hook(repo: Repo, monkeypatch):
    from qsdk.integrations import dvc as versioning

    sdk = repo.sdk()
    seen: list[str] = []

    class Last(Hook):
        def after_flow(self, *, run: Any, result: Any, **_: Any) -> None:
            seen.append(result.status)

    def no_dvc(*args: Any, **kwargs: Any) -> None:
        raise VersioningError("dvc push failed: remote unreachable")

    monkeypatch.setattr(versioning, "freeze_outputs", no_dvc)
    result = sdk.run_pipeline("backfill", params=SMALL, only=[PRICES[0]], snapshot="later", hooks=[Last()],
                              raise_on_failure=False, track=False)
    assert seen == ["succeeded"]  # every hook saw the run as it ran
    assert result.status == "failed" and "remote unreachable" in result.extra["snapshot"]["error"]
    manifest = json.loads((Path(result.run_dir) / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["snapshot"]["name"] == "later"


def test_snapshot_of_an_s3_lakehouse_to_an_s3_remote_and_back(tmp_path: Path, s3_env, monkeypatch):
    """QSDK_LAKEHOUSE and QSDK_DVC_REMOTE on one object store (a loopback S3 server): the snapshot
    is pushed there, and a restore with neither the snapshot folder nor the DVC cache on this
    machine pulls it back from there."""
    import boto3

    repo = Repo(tmp_path)
    repo.lake = s3_env.url("lake-snap")
    remote = s3_env.url("dvc-remote")
    for key, value in {"QSDK_LAKEHOUSE": repo.lake, "QSDK_DVC_REMOTE": remote, **s3_env.env}.items():
        repo.env[key] = value
        monkeypatch.setenv(key, value)
    lake = repo.sdk().lakehouse
    lake.write("bronze.prices_raw", bars(["AAA", "BBB"], 5), mode="overwrite")
    lake.write("silver.corporate_actions", actions(2), mode="overwrite")
    frozen = {t: lake.read(t) for t in ("bronze.prices_raw", "silver.corporate_actions")}

    gold = json.loads(repo.sh("qsdk", "snapshot", "create", "gold", "--json").stdout)
    assert gold["tables"]["bronze.prices_raw"] == {"version": 0, "rows": 10}
    s3 = boto3.client("s3", endpoint_url=s3_env.endpoint)
    pushed = s3.list_objects_v2(Bucket=s3_env.bucket, Prefix="dvc-remote/").get("KeyCount", 0)
    assert pushed >= 3, pushed  # the manifest and a part file per table, on the object store
    assert not (tmp_path / "dvc-remote").exists()  # not the local default remote

    lake.write("bronze.prices_raw", bars(["AAA"], 5, price=99.0), mode="merge")
    lake.write("silver.corporate_actions", actions(1), mode="overwrite")
    shutil.rmtree(repo.root / "snapshots" / "gold")
    shutil.rmtree(cache_dir(repo.root))  # only the object store has the data now
    report = json.loads(repo.sh("qsdk", "snapshot", "restore", "gold", "--force", "--json").stdout)
    for table, rows in frozen.items():
        assert report["tables"][table]["status"] == "restored"
        assert sorted_rows(lake.read(table)) == sorted_rows(rows)
