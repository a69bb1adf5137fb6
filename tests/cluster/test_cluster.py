"""A flow on a Ray cluster whose second node shares no disk with the driver (issue 17).

All on loopback: the test S3 server (moto, ``tests/services``), an ``mlflow server`` serving its
artifacts, a Ray head, and a second Ray node whose processes live in their own mount namespace
(``unshare --mount --propagation private``): a tmpfs over ``/tmp`` (its temp folder and Ray's
session folder; the test's project copy, ``runs/`` and every pytest folder are under ``/tmp``
too) and a tmpfs over the repository checkout, with only its ``.venv`` mounted back at the same
path. The project's code (the copy's notebooks and registry, and qsdk itself, which the venv has
only as an editable install pointing into the hidden checkout) reaches that node through Ray's
``runtime_env``; the object store's variables reach its workers from the driver, not from the
node's environment. Every task asks for the custom resource ``far`` that only the second node
has (``$QSDK_RAY_TASK_RESOURCES``), so every partition runs there.

Ray starts slowly on a loaded 2-core machine (its raylet gives its agents about 15 s): each
``ray start`` gets 240 s and is tried twice. The test stops only what it started: the head's
processes (found by their private temp folder), and every process in the second node's mount
namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest

from tests.conftest import REPO, Project
from tests.services.fixtures import (
    S3Server,
    free_port,
    processes_naming,
    start_mlflow_server,
    stop_group,
    stop_processes,
)

pytestmark = pytest.mark.cluster

VENV = Path(sys.executable).parent.parent  # the project's venv: <checkout>/.venv
RAY = str(Path(sys.executable).with_name("ray"))
PARAMS = {"source": "synthetic", "n_symbols": 6, "start": "2009-01-01", "end": "2010-12-31"}  # two 5-year blocks
ONLY = ["ingest_prices", "clean_prices"]
TABLES = {"bronze.prices_raw": ["symbol", "date"], "silver.prices": ["symbol", "date"],
          "silver.corporate_actions": ["symbol", "date", "action"]}
START_TIMEOUT = 240  # one `ray start` on the loaded machine
RUN_TIMEOUT = 900

# The second node: a private /tmp, the checkout hidden but for its venv (bind-mounted aside on the
# new /tmp first, since the tmpfs over the checkout hides it, then moved back to its own path).
FAR_NODE = r"""
set -e
# the venv is set aside first, outside /tmp and the checkout: the checkout may itself lie under /tmp
aside=$(mktemp -d /dev/shm/qsdk-venv-aside.XXXXXX)
mount --bind "$QSDK_VENV" "$aside"
mount -t tmpfs qsdk-far-tmp /tmp
mkdir -p "$QSDK_CHECKOUT" && mount -t tmpfs qsdk-far-checkout "$QSDK_CHECKOUT"
mkdir -p "$QSDK_VENV" && mount --move "$aside" "$QSDK_VENV" && rmdir "$aside"
mkdir -p "$HOME" "$XDG_CACHE_HOME"
exec "$QSDK_VENV/bin/ray" start --address="$QSDK_HEAD" --temp-dir="$QSDK_FAR_TEMP" "$@"
"""

DRIVER = """
import json, sys
from qsdk.sdk import QuantSDK
root, runs, address, flow, params, only, track = sys.argv[1:8]
sdk = QuantSDK(root, runs_dir=runs)
result = sdk.run_pipeline(flow, params=json.loads(params), only=json.loads(only) or (), executor="ray",
                          ray_address=address, track=track == "1", cache=False, raise_on_failure=False)
from qsdk.integrations import tracker
rendered = tracker.wait_rendered(timeout=300)  # the HTML renderings, logged by the helper after the run
print(json.dumps({"run_id": result.run_id, "rendered": rendered, "status": result.status, "run_dir": result.run_dir,
                  "mlflow_run_id": result.extra.get("mlflow_run_id"),
                  "errors": [str(r.error) for r in result.failures],
                  "tasks": {r.key: {"status": r.status, "notebook": r.notebook, "node": r.extra.get("node_id"),
                                    "pid": r.extra.get("worker_pid")} for r in result.results}}))
"""

KILL_ONCE = """import os, pathlib, signal, time
marker = pathlib.Path("/tmp/qsdk-killed-worker")  # on the far node's own tmpfs
if marker.exists():
    print("retry after killing worker", marker.read_text())
elif start.startswith("2021"):  # the first attempt of this partition kills its Ray worker
    worker = int(os.environ["JPY_PARENT_PID"])  # (a forked kernel's parent is its zygote)
    marker.write_text(str(worker))
    os.kill(worker, signal.SIGKILL)
    time.sleep(60)"""
WRITE = """import pandas as pd, qsdk
df = pd.DataFrame({"date": pd.date_range(start, end, freq="MS"), "v": 1})
qsdk.write_table("bronze.k", df, mode="overwrite", predicate=qsdk.between("date", start, end))"""


@dataclass
class Cluster:
    head: str  # the GCS address
    env: dict[str, str]  # what a driver of this cluster runs with
    far_pid: int  # a process in the far node's mount namespace (its raylet)
    far_node_id: str
    far_temp: str  # Ray's temp folder on the far node (on its private /tmp)


def _run_ray_start(args: list[str], env: dict[str, str], *, cleanup: Callable[[], None]) -> None:
    """``ray start`` with a generous timeout, tried twice (a loaded machine fails some starts)."""
    for attempt in (1, 2):
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=START_TIMEOUT)
        if done.returncode == 0:
            return
        cleanup()
        if attempt == 2:
            raise RuntimeError(f"`ray start` failed twice: {done.stderr[-2000:]}")


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _in_namespace(ns: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if p.pid != os.getpid() and _mount_ns(p.pid) == ns]


def _far_processes(far_temp: str) -> list[psutil.Process]:
    namespaces = {_mount_ns(p.pid) for p in processes_naming(far_temp)} - {None, _mount_ns(os.getpid())}
    return [p for ns in namespaces for p in _in_namespace(ns)]


def _in_far_node(pid: int, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--target={pid}", "--mount", "--", *command], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("the cluster test needs unshare(1) and root (a private mount namespace with tmpfs mounts)")
    mlflow = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    head_temp = tempfile.mkdtemp(prefix="qsdk-head-", dir="/tmp")  # short: Ray puts sockets in it
    far_temp = f"/tmp/qsdk-far-{secrets.token_hex(4)}"  # on the far node's own /tmp
    port = free_port()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("AWS_", "MLFLOW_", "QSDK_", "RAY_"))}
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # not ~/.ray/auth_token
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        _run_ray_start([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                        f"--temp-dir={head_temp}", "--num-cpus=1", *common], {**clean, **auth},
                       cleanup=lambda: stop_processes(processes_naming(head_temp)))
        far_env = {**clean, **auth, "QSDK_VENV": str(VENV), "QSDK_CHECKOUT": str(REPO),
                   "QSDK_HEAD": f"127.0.0.1:{port}", "QSDK_FAR_TEMP": far_temp, "HOME": "/tmp/home",
                   "XDG_CACHE_HOME": "/tmp/cache", "TMPDIR": "/tmp"}
        _run_ray_start(["unshare", "--mount", "--propagation", "private", "bash", "-c", FAR_NODE, "far-node",
                        "--num-cpus=2", '--resources={"far": 2}', *common], far_env,
                       cleanup=lambda: stop_processes(_far_processes(far_temp)))
        raylet = next(p for p in processes_naming(far_temp) if "raylet" in " ".join(p.cmdline()))
        env = {**os.environ, **s3_server.env, **auth, "MLFLOW_TRACKING_URI": mlflow.uri,
               "QSDK_RAY_TASK_RESOURCES": json.dumps({"far": 1})}
        env.pop("RAY_ADDRESS", None)
        yield Cluster(f"127.0.0.1:{port}", env, raylet.pid, _node_id(raylet), far_temp)
    finally:
        stop_processes(_far_processes(far_temp))
        stop_processes(processes_naming(head_temp))
        shutil.rmtree(head_temp, ignore_errors=True)
        stop_group(mlflow.process)


def _node_id(raylet: psutil.Process) -> str:
    arg = next(a for a in raylet.cmdline() if a.startswith("--node_id="))
    return arg.split("=", 1)[1]


def _drive(cluster: Cluster, root: Path, runs: Path, lake: str, flow: str, params: dict, only: list[str] | None,
           *, track: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", DRIVER, str(root), str(runs), cluster.head, flow,
                           json.dumps(params), json.dumps(only), "1" if track else "0"],
                          env={**cluster.env, "QSDK_LAKEHOUSE": lake}, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded", "\n".join(out["errors"])
    return out


def _sdk(root: Path, lake: str, runs: Path):
    from qsdk.sdk import QuantSDK

    return QuantSDK(root, lakehouse_root=lake, runs_dir=runs)


def _rows(sdk, table: str) -> pd.DataFrame:
    key = TABLES.get(table, ["date"])
    return sdk.lakehouse.read(table).to_pandas().sort_values(key).reset_index(drop=True)


def test_the_far_node_sees_only_the_venv_and_its_own_temp(cluster, project_copy, tmp_path):
    """What the flows below rely on: nothing of the driver's disk but the venv is visible there,
    and qsdk cannot even be imported from the venv alone (its editable install points into the
    hidden checkout), so the code the tasks run came through Ray's runtime_env."""
    for hidden in (REPO / "pipelines", REPO / "qsdk", project_copy / "pipelines", tmp_path):
        assert _in_far_node(cluster.far_pid, "test", "-e", str(hidden)).returncode == 1, hidden
    assert _in_far_node(cluster.far_pid, "test", "-x", str(VENV / "bin" / "python")).returncode == 0
    imported = _in_far_node(cluster.far_pid, str(VENV / "bin" / "python"), "-c", "import qsdk")
    assert imported.returncode != 0 and "No module named 'qsdk'" in imported.stderr, imported.stderr
    # the far node's /tmp is its own: the driver's folders under /tmp are not there, Ray's session is
    assert _in_far_node(cluster.far_pid, "test", "-d", cluster.far_temp).returncode == 0
    assert not Path(cluster.far_temp).exists()


def test_backfill_on_a_node_that_shares_no_disk_equals_the_local_run(cluster, s3_env, project_copy, tmp_path):
    runs = tmp_path / "runs"
    lake = s3_env.url("cluster-" + secrets.token_hex(4))
    out = _drive(cluster, project_copy, runs, lake, "backfill", PARAMS, ONLY, track=True)

    tasks = out["tasks"]
    assert len(tasks) == 4 and {t["status"] for t in tasks.values()} == {"succeeded"}
    assert {t["node"] for t in tasks.values()} == {cluster.far_node_id}  # every partition ran on the far node
    for key, task in tasks.items():  # every executed notebook came back to the driver's runs/
        notebook = Path(task["notebook"])
        assert notebook.is_relative_to(runs / out["run_id"]) and notebook.is_file(), key
        nb = nbformat.read(notebook, as_version=4)
        assert nb.metadata["papermill"]["start_time"] and not nb.metadata["papermill"].get("exception"), key
    assert not (runs / out["run_id"] / ".staging").exists()  # staging happened on the worker

    local = _sdk(project_copy, s3_env.url("local-" + secrets.token_hex(4)), tmp_path / "local-runs")
    local.run_pipeline("backfill", params=PARAMS, only=ONLY, executor="local", track=False, cache=False)
    far = _sdk(project_copy, lake, runs)
    for table in TABLES:
        far_rows, local_rows = _rows(far, table), _rows(local, table)
        assert len(far_rows) > 0 and not far_rows.duplicated(TABLES[table]).any(), table
        pd.testing.assert_frame_equal(far_rows, local_rows)

    from mlflow import MlflowClient

    client = MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])
    parent = client.get_run(out["mlflow_run_id"])
    assert out["rendered"]
    assert parent.info.status == "FINISHED" and parent.data.tags["qsdk.run_id"] == out["run_id"]
    runs_of_tasks = client.search_runs([parent.info.experiment_id],
                                       filter_string=f"tags.`qsdk.run_id` = '{out['run_id']}' and "
                                                     "tags.`qsdk.kind` = 'partition'")
    assert sorted(r.data.tags["qsdk.task"] for r in runs_of_tasks) == sorted(tasks)
    for run in runs_of_tasks:
        assert run.info.status == "FINISHED"
        notebooks = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "notebook")}
        assert notebooks == {f"{run.data.tags['qsdk.partition']}.ipynb", f"{run.data.tags['qsdk.partition']}.html"}
    # each task's Delta commit names its MLflow run: the ids reached the far node through Ray
    committed = {entry.get("qsdk.mlflow_run_id") for table in TABLES for entry in far.lakehouse.history(table)}
    assert {r.info.run_id for r in runs_of_tasks} <= committed


def test_a_worker_killed_on_the_far_node_is_retried_without_duplicates(cluster, s3_env, tmp_path):
    project = (Project(tmp_path / "project")
               .table("bronze.k", {"date": "date", "v": "int64"}, primary_key=["date"])
               .stage("k", 'start: "date" = "2020-01-01"\nend: "date" = "2021-12-31"', WRITE, KILL_ONCE,
                      outputs=["bronze.k"], partition={"by": "year"}, retries=1)
               .flow("f", ["k"]).save())
    runs = tmp_path / "runs"
    lake = s3_env.url("kill-" + secrets.token_hex(4))
    out = _drive(cluster, project.root, runs, lake, "f", {}, None, track=False)

    retried = out["tasks"]["k[2021-01-01_2021-12-31]"]
    assert retried["node"] == cluster.far_node_id
    text = "".join(o.get("text", "") for c in nbformat.read(retried["notebook"], as_version=4).cells
                   for o in c.get("outputs", []))
    killed = int(text.split("retry after killing worker", 1)[1].split()[0])  # said by the retry, from the far node
    assert killed != retried["pid"]
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    rows = _rows(_sdk(project.root, lake, runs), "bronze.k")
    expected = [str(d.date()) for d in pd.date_range("2020-01-01", "2021-12-01", freq="MS")]
    assert rows["date"].astype(str).tolist() == expected  # each month once: nothing lost, nothing twice
