"""The Ray executor on a real Ray: embedded, and a real two-node cluster joined by address.

Most tests share one embedded Ray (2 CPUs) started by ``RayExecutor.init`` itself; an executor
created inside a test finds that session and leaves it running.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest

from qsdk.integrations.progress import ConsoleProgress
from tests.conftest import REPO
from tests.services.fixtures import processes_naming, stop_processes

ray = pytest.importorskip("ray")
from qsdk.execution.executors.ray import RayExecutor  # noqa: E402

COLS = {"date": "date", "v": "int64"}
YEARS = 'start: "date" = "2020-01-01"\nend: "date" = "2021-12-31"'
WRITE = """import pandas as pd, qsdk
df = pd.DataFrame({"date": pd.date_range(start, end, freq="MS"), "v": 1})
qsdk.write_table("bronze.k", df, mode="overwrite", predicate=qsdk.between("date", start, end))"""


@pytest.fixture(scope="module")
def ray_session():
    """An embedded Ray started the way a flow starts it: ``RayExecutor().init()``."""
    assert not ray.is_initialized()
    owner = RayExecutor(num_cpus=2)
    owner.init()
    yield owner
    owner.finalize()
    assert not ray.is_initialized()  # the executor that started Ray shut it down


def _rows(sdk, table: str, key: list[str]) -> pd.DataFrame:
    return sdk.lakehouse.read(table).to_pandas().sort_values(key).reset_index(drop=True)


def test_import_qsdk_does_not_import_ray():
    code = ("import sys, qsdk, qsdk.execution.executors, qsdk.sdk, qsdk.cli; "
            "qsdk.execution.executors.known_executors(); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backfill_on_ray_equals_local_and_runs_partitions_in_parallel(ray_session, tmp_path):
    from qsdk.sdk import QuantSDK

    params = {"start": "2009-01-01", "end": "2010-12-31"}  # two 5-year blocks: 2009 and 2010
    stages = ["ingest_prices", "clean_prices"]
    sdks = {ex: QuantSDK(REPO, lakehouse_root=tmp_path / ex / "lake", runs_dir=tmp_path / ex / "runs")
            for ex in ("ray", "local")}
    on_ray = sdks["ray"].run_pipeline("backfill", params=params, only=stages, executor=RayExecutor(),
                                      track=False, cache=False)
    sdks["local"].run_pipeline("backfill", params=params, only=stages, executor="local", track=False,
                               cache=False)
    assert ray.is_initialized()  # an executor that found Ray running leaves it running

    results = [r for r in on_ray.results if r.stage == "clean_prices"]
    assert len(results) == 2 and all(r.status == "succeeded" for r in results)
    assert len({r.extra["worker_pid"] for r in on_ray.results}) == 2  # both CPUs' workers were used
    assert all(r.extra["forks"] == 0 for r in on_ray.results)  # nothing forked after deltalake loaded
    for table, key in [("bronze.prices_raw", ["symbol", "date"]), ("silver.prices", ["symbol", "date"]),
                       ("silver.corporate_actions", ["symbol", "date", "action"])]:
        ray_rows, local_rows = _rows(sdks["ray"], table, key), _rows(sdks["local"], table, key)
        assert len(ray_rows) > 0 and not ray_rows.duplicated(key).any()
        pd.testing.assert_frame_equal(ray_rows, local_rows)


def test_embedded_ray_listens_on_loopback_only(ray_session):
    listening = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            listening |= {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    assert listening, "found no Ray process listening"
    assert listening <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening


def test_an_embedded_rays_raylet_retries_its_connections_often_with_rays_patience(ray_session):
    """The raylet's first connection to the object store it just started usually fails on two
    busy cores; Ray then sleeps a whole second before retrying (about 1 s of every ``ray.init``).
    The Ray qsdk starts retries every 0.1 s, and still gives up only after Ray's 10 s. Read where
    Ray applies it: a worker, which takes its settings from the raylet."""

    @ray.remote
    def settings() -> tuple[int, int]:
        from ray._raylet import Config

        return Config.raylet_client_connect_timeout_milliseconds(), Config.raylet_client_num_connect_attempts()

    interval, attempts = ray.get(settings.remote())
    assert interval <= 100
    assert interval * attempts >= 10_000  # Ray's default: 10 attempts, 1 s apart


STOP_EMBEDDED = """
import json, psutil
from ray._private import node
from qsdk.execution.executors.ray import RayExecutor
stopped = []
kill = node.Node._kill_process_impl
def recording(self, process_type, *args, **kwargs):
    stopped.append(process_type)
    return kill(self, process_type, *args, **kwargs)
node.Node._kill_process_impl = recording
executor = RayExecutor(num_cpus=1, address="embedded")
executor.init()
started = psutil.Process().children(recursive=True)
executor.finalize()
_, alive = psutil.wait_procs(started, timeout=30)
print(json.dumps({"stopped": stopped, "alive": [" ".join(p.cmdline()) for p in alive]}))
"""


def test_an_embedded_ray_stops_its_autoscaler_before_its_gcs_and_leaves_nothing_running():
    """Ray stops its autoscaler monitor after the GCS; the monitor's SIGTERM handler then waits
    on the dead GCS, and ``ray.shutdown()`` sat out its one-second grace on every run. The
    executor stops it first (``rayenv.shutdown_ray``), and every process Ray started still goes."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", STOP_EMBEDDED], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    done = json.loads(out.stdout.strip().splitlines()[-1])
    stopped = done["stopped"]
    assert "monitor" in stopped and "gcs_server" in stopped, stopped
    assert stopped.index("monitor") < stopped.index("gcs_server"), stopped
    assert done["alive"] == []


# the 2021 partition writes a while after the 2020 one ended, whose notebook the driver then wrote
STAGGERED = """import time, pandas as pd, qsdk
time.sleep(0 if start.startswith("2020") else 6)
df = pd.DataFrame({"date": pd.date_range(start, end, freq="MS"), "v": 1})
qsdk.write_table("bronze.k", df, mode="overwrite", predicate=qsdk.between("date", start, end))"""


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_runs_folder_inside_the_lakehouse_is_not_taken_for_a_direct_write(ray_session, project, executor):
    """qsdk writes executed notebooks (and, on Ray, brings finished partitions' notebooks back)
    into ``runs/`` while other tasks run; with ``runs/`` inside the lakehouse, none of that is a
    stage writing around ``qsdk.write_table``. On Ray the worker's staging folder is a scratch
    folder, so the runs folder must travel in the stage context, not be guessed from that path."""
    from qsdk.sdk import QuantSDK

    project.table("bronze.k", COLS, primary_key=["date"]).stage(
        "k", YEARS, STAGGERED, outputs=["bronze.k"], partition={"by": "year"}).flow("f", ["k"]).save()
    lake = project.root / "lakehouse"
    sdk = QuantSDK(project.root, lakehouse_root=lake, runs_dir=lake / "runs")
    result = sdk.run_pipeline("f", executor=RayExecutor() if executor == "ray" else "local", track=False,
                              cache=False, raise_on_failure=False)
    assert result.status == "succeeded", [str(r.error) for r in result.failures]
    assert len(_rows(sdk, "bronze.k", ["date"])) == 24
    assert {Path(r.notebook).parent.parent.parent for r in result.results} == {lake / "runs"}


def test_killed_worker_is_retried_without_duplicate_or_missing_rows(ray_session, project, tmp_path):
    kill = """import os, pathlib, signal, time
marker = pathlib.Path(markers) / f"{start}.killed"
if start.startswith("2021") and not marker.exists():  # first attempt only
    worker = int(os.environ["JPY_PARENT_PID"])  # the Ray worker running this task: it started the kernel
    marker.write_text(str(worker))  # (the kernel's parent, or its zygote's when the kernel was forked)
    pathlib.Path(markers, "scratch").write_text(os.environ["QSDK_CONTEXT"])  # <scratch>/staging/context.json
    os.kill(worker, signal.SIGKILL)
    time.sleep(60)"""
    sdk = (project.table("bronze.k", COLS, primary_key=["date"])
           .stage("k", YEARS + '\nmarkers: str = ""', WRITE, kill, outputs=["bronze.k"],
                  partition={"by": "year"}, retries=1)
           .flow("f", ["k"]).sdk())
    buf = io.StringIO()
    result = sdk.run_pipeline("f", params={"markers": str(tmp_path)}, executor=RayExecutor(),
                              hooks=[ConsoleProgress(stream=buf, live=True)], track=False, cache=False)

    marker = tmp_path / "2021-01-01.killed"
    killed_pid = int(marker.read_text())  # the first attempt ran and killed its worker
    retried = next(r for r in result.results if r.partition.startswith("2021"))
    assert retried.status == "succeeded" and retried.extra["worker_pid"] != killed_pid
    assert not psutil.pid_exists(killed_pid) or psutil.Process(killed_pid).status() == psutil.STATUS_ZOMBIE
    scratch = Path((tmp_path / "scratch").read_text()).parent.parent
    assert scratch.name.startswith("qsdk-task-") and not scratch.exists()  # the retry removed what the killed worker left
    rows = _rows(sdk, "bronze.k", ["date"])
    assert rows["date"].astype(str).tolist() == [str(d.date()) for d in pd.date_range("2020-01-01", "2021-12-01", freq="MS")]
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert re.search(r"k\s+succeeded\s+2\s+2\s+0\s+0\s+0", text), text  # the summary table


def test_failing_partition_is_not_retried_and_reports_its_cell(ray_session, project, tmp_path):
    attempts = tmp_path / "attempts.txt"
    count = f"open({str(attempts)!r}, 'a').write(start + '\\n')"
    boom = 'if start.startswith("2021"):\n    raise ValueError("bad bar in " + start)'
    sdk = (project.table("bronze.k", COLS, primary_key=["date"])
           .stage("k", YEARS, count, boom, WRITE, outputs=["bronze.k"], partition={"by": "year"}, retries=2)
           .flow("f", ["k"]).sdk())
    buf = io.StringIO()
    result = sdk.run_pipeline("f", executor=RayExecutor(), hooks=[ConsoleProgress(stream=buf, live=False)],
                              track=False, cache=False, raise_on_failure=False)

    assert result.status == "failed"
    assert "[FAIL] k[2021-01-01_2021-12-31]" in buf.getvalue()
    assert re.search(r"✗ stage k\[2021-01-01_2021-12-31\] failed: cell \d+ \(In \[\d+\]\) raised ValueError", buf.getvalue())
    (failed,) = result.failures
    err = pickle.loads(pickle.dumps(failed.error))
    assert (err.stage, err.partition, err.ename, err.reason) == ("k", "2021-01-01_2021-12-31", "ValueError", "error")
    assert "bad bar in 2021-01-01" in err.evalue
    cells = nbformat.read(project.root / "notebooks" / "k.ipynb", as_version=4).cells  # the stage's own notebook
    assert "raise ValueError" in cells[err.cell_index].source
    assert sorted(attempts.read_text().split()) == ["2020-01-01", "2021-01-01"]  # raised once, not retried
    assert len(_rows(sdk, "bronze.k", ["date"])) == 12  # the good partition committed, the bad one did not


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_failed_partitions_staged_writes_are_kept_under_its_run(ray_session, project, executor):
    """A partition that staged a write and then failed: its staged rows stay under the driver's
    ``runs/<run_id>/.staging/<stage>/<partition>`` for inspection, on Ray (staged in the worker's
    scratch folder) as locally; the table has only the good partition's rows."""
    from qsdk.lakehouse import staging

    boom = 'if start.startswith("2021"):\n    raise ValueError("after staging " + start)'
    sdk = (project.table("bronze.k", COLS, primary_key=["date"])
           .stage("k", YEARS, WRITE, boom, outputs=["bronze.k"], partition={"by": "year"})
           .flow("f", ["k"]).sdk())
    result = sdk.run_pipeline("f", executor=RayExecutor() if executor == "ray" else "local", track=False,
                              cache=False, raise_on_failure=False)
    (failed,) = result.failures
    assert failed.partition == "2021-01-01_2021-12-31" and failed.error.ename == "ValueError"
    kept = Path(result.run_dir) / ".staging" / "k" / failed.partition
    (write,) = staging.staged_writes(kept)
    assert (write.table, write.rows) == ("bronze.k", 12)
    assert str(staging.read_staged(kept, write).column("date")[0]) == "2021-01-01"
    assert len(_rows(sdk, "bronze.k", ["date"])) == 12  # 2020 committed, 2021 did not


FIRST = 'print("first cell done")'
WAIT_UNTIL_SEEN = """import pathlib, time
deadline = time.time() + 60
while not pathlib.Path(markers, "seen").exists():
    if time.time() > deadline:
        raise TimeoutError("no one saw the first cell's output while the task ran")
    time.sleep(0.2)"""


def test_a_running_tasks_notebook_can_be_followed_under_its_run(ray_session, project, tmp_path):
    """On a Ray that shares the driver's disk the worker writes the executed notebook in place,
    cell by cell: the driver's ``runs/<run_id>/`` shows the first cell's output while the second
    still runs (which waits until the test has seen it, and fails the task after 60 s)."""
    sdk = project.stage("follow", 'markers: str = ""', FIRST, WAIT_UNTIL_SEEN).flow("f", ["follow"]).sdk()

    def watch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            for notebook in (project.root / "runs").glob("*/follow.ipynb"):
                if "first cell done" in notebook.read_text(errors="replace"):
                    (tmp_path / "seen").write_text(str(notebook))
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result = sdk.run_pipeline("f", params={"markers": str(tmp_path)}, executor=RayExecutor(), track=False,
                              cache=False, raise_on_failure=False)
    watcher.join(timeout=5)
    assert result.status == "succeeded", [str(r.error) for r in result.failures]
    (done,) = result.results
    assert Path((tmp_path / "seen").read_text()) == Path(done.notebook)


BIG = """import numpy as np, pandas as pd, qsdk
days = pd.date_range(start, end, freq="D")
rng = np.random.default_rng(0)
n = len(days) * rows_per_day
df = pd.DataFrame({"date": np.repeat(days, rows_per_day), "k": np.tile(np.arange(rows_per_day), len(days)),
                   **{f"x{i}": rng.standard_normal(n) for i in range(8)}})
qsdk.write_table("bronze.big", df, mode="overwrite", predicate=qsdk.between("date", start, end))"""


def _private_mib(pids: set[int]) -> float:
    """The summed unique set sizes of ``pids``: memory no other process shares."""
    return sum(psutil.Process(pid).memory_full_info().uss for pid in pids) / 2**20


def test_a_worker_gives_back_what_a_large_commit_used(ray_session, project):
    """A Ray worker commits every task it runs (qsdk.lakehouse.staging.commit_staged): after a
    commit of about 80 MB a partition, its private memory is back near what it was after a
    tiny commit of the same table, not held by pyarrow's allocator for good (which it was:
    about 100 MiB a worker)."""
    cols = {"date": "date", "k": "int64", **{f"x{i}": "float64" for i in range(8)}}
    sdk = (project.table("bronze.big", cols)
           .stage("big", YEARS + "\nrows_per_day: int = 1", BIG, outputs=["bronze.big"], partition={"by": "year"})
           .flow("f", ["big"]).sdk())

    def run(rows: int) -> set[int]:
        result = sdk.run_pipeline("f", params={"rows_per_day": rows}, executor=RayExecutor(), track=False,
                                  cache=False)
        assert [r.status for r in result.results] == ["succeeded", "succeeded"]
        return {r.extra["worker_pid"] for r in result.results}

    warm = run(1) | run(1)  # what every worker pays once: imports, Delta's runtime, a first commit
    before = _private_mib(warm)
    used = run(3000)  # 1.1M rows of 10 columns a partition
    assert used <= warm, "the large commits ran on workers the warm-up did not use"
    assert len(sdk.lakehouse.read("bronze.big").to_pandas()) == 2 * 366 * 3000 - 3000  # 2020 has 366 days
    growth = _private_mib(warm) - before
    assert growth < 50 * len(used), f"the workers kept {growth:.0f} MiB after committing"


def test_resources_and_timeouts(ray_session, project):
    sleep = "import time; time.sleep({})"
    sdk = (project
           .stage("sized", "x: int = 0", "y = x", resources={"num_cpus": 0.5, "memory": 50_000_000})
           .stage("too_big", "x: int = 0", "y = x", resources={"num_cpus": 64})
           .stage("cell_timeout", "x: int = 0", sleep.format(60), timeout=2)
           .stage("wall_clock", "x: int = 0", *[sleep.format(1)] * 4, timeout=2)
           .flow("cells", ["sized", "too_big", "cell_timeout"])
           .flow("notebook", ["wall_clock"]).sdk())
    # The wall clock counts from the notebook's start (bootstrap and parameter cells included),
    # so each limit gets its own run: a generous grace lets the one slow cell hit the cell
    # timeout however loaded the machine is; a small one lets four short cells hit the wall clock.
    started = time.perf_counter()
    cells = sdk.run_pipeline("cells", executor=RayExecutor(wall_clock_grace=20), track=False, cache=False,
                             raise_on_failure=False)
    notebook = sdk.run_pipeline("notebook", executor=RayExecutor(wall_clock_grace=0.3), track=False,
                                cache=False, raise_on_failure=False)
    assert time.perf_counter() - started < 55  # nobody waited for the 60 s cell
    by_stage = {r.stage: r for r in cells.results + notebook.results}

    assert by_stage["sized"].status == "succeeded"
    assert by_stage["sized"].extra["assigned_resources"] == {"CPU": 0.5, "memory": 50_000_000}
    too_big = by_stage["too_big"].error
    assert (too_big.reason, too_big.ename) == ("resources", "InfeasibleResources")
    assert "'CPU': 64.0" in str(too_big)
    cell = by_stage["cell_timeout"].error
    assert (cell.reason, cell.ename) == ("timeout", "CellTimeoutError")
    wall = by_stage["wall_clock"].error  # each cell stays under 2 s, the notebook does not
    assert (wall.reason, wall.ename) == ("timeout", "WallClockTimeout")
    assert "+0.3 s grace" in str(wall)


# ---------------------------------------------------------------- a real two-node cluster
DRIVER = """
import json, sys
from qsdk.sdk import QuantSDK
root, address = sys.argv[1], sys.argv[2]
sdk = QuantSDK(root, lakehouse_root=root + "/lakehouse", runs_dir=root + "/runs")
result = sdk.run_pipeline("f", executor="ray", ray_address=address, track=False, cache=False,
                          raise_on_failure=False)
print(json.dumps({"status": result.status, "errors": [str(r.error) for r in result.failures],
                  "nodes": {r.key: r.extra.get("node_id") for r in result.results}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir: str) -> None:
    """Stop only this cluster's processes: every process naming its temp dir, and their
    children (workers, kernels). ``ray stop`` would stop every Ray on the machine."""
    stop_processes(processes_naming(temp_dir))


def test_flow_on_a_two_node_cluster_runs_partitions_on_both_nodes(project):
    sdk = (project.table("bronze.k", COLS, primary_key=["date"])
           .stage("k", YEARS, WRITE, outputs=["bronze.k"], partition={"by": "year"})
           .stage("pinned", "x: int = 0", "y = x", resources={"num_cpus": 0, "node2": 1})
           .flow("f", ["k", "pinned"]).sdk())
    temp_dir = tempfile.mkdtemp(prefix="qsdk-ray-", dir="/tmp")  # short: Ray puts sockets in it
    port = _free_port()
    # a private token: the cluster does not depend on, or touch, ~/.ray/auth_token
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--include-dashboard=false",
                        f"--temp-dir={temp_dir}", *common], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{port}", "--resources={\"node2\": 1}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        done = subprocess.run([sys.executable, "-c", DRIVER, str(project.root), f"127.0.0.1:{port}"],
                              env=env, capture_output=True, text=True, timeout=180)
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded", out["errors"]
    nodes = out["nodes"]
    partitions = {nodes["k[2020-01-01_2020-12-31]"], nodes["k[2021-01-01_2021-12-31]"]}
    assert len(partitions) == 2  # one partition per node: each node has one CPU
    assert nodes["pinned"] in partitions  # the node with the custom resource is one of the two
    assert len(_rows(sdk, "bronze.k", ["date"])) == 24


def _kernels_of(worker_pid: int) -> list[psutil.Process]:
    """The live kernels a Ray worker's pool holds (forked kernels are named ``qsdk-kernel``)."""
    out = []
    for proc in psutil.Process(worker_pid).children(recursive=True):
        try:
            if proc.name() == "qsdk-kernel" and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def test_a_worker_starts_a_spare_kernel_only_while_tasks_may_follow(ray_session, project):
    """Each task takes its worker's pre-started kernel; it starts the next one only if a task may
    still come. After a flow's last task its worker holds no kernel: Ray ends a job's workers
    with its driver, so that spare would be a kernel's start and memory for nothing."""
    sdk = project.a_then_b().sdk()
    for _ in range(2):  # the second time on workers whose pools already exist
        result = sdk.run_pipeline("f", executor=RayExecutor(), track=False, cache=False)
        assert [r.status for r in result.results] == ["succeeded", "succeeded"]
        first, last = (r.extra["worker_pid"] for r in result.results)
        deadline = time.monotonic() + 30  # a used kernel is shut down in the background
        while _kernels_of(last) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _kernels_of(last) == [], "the flow's last task left a spare kernel on its worker"
        if first != last:  # positive control: the first task (one more to come) did start one
            assert len(_kernels_of(first)) == 1


def test_while_a_task_may_follow_every_running_tasks_worker_starts_a_spare(ray_session, project):
    """Two partitions run side by side on two workers, one task follows: Ray, not qsdk, decides
    which worker takes it, so both workers start a spare and the last task finds one started
    whichever it lands on; the other spare is left over (one kernel's start). Counted spares
    (as many as tasks may follow) left one of the two workers without one."""
    wait = 'import time\ntime.sleep(2)\n'  # long enough for both partitions to be running at once
    (project.table("bronze.k", {"date": "date", "v": "int64"}).table("silver.k", {"date": "date", "v": "int64"})
     .stage("k", YEARS, wait + WRITE, outputs=["bronze.k"], partition={"by": "year"})
     .stage("m", "x: int = 1", "import qsdk\nqsdk.write_table('silver.k', qsdk.DataLoader().read('bronze.k'), "
            "mode='overwrite')", inputs=["bronze.k"], outputs=["silver.k"])
     .flow("f", ["k", "m"]).save())
    result = project.sdk().run_pipeline("f", executor=RayExecutor(), track=False, cache=False)
    assert [r.status for r in result.results] == ["succeeded"] * 3
    partitions = [r.extra["worker_pid"] for r in result.results if r.stage == "k"]
    last = next(r.extra["worker_pid"] for r in result.results if r.stage == "m")
    assert len(set(partitions)) == 2, "the two partitions did not run on two workers"
    (other,) = set(partitions) - {last}
    deadline = time.monotonic() + 30  # a used kernel is shut down in the background
    while (_kernels_of(last) or len(_kernels_of(other)) > 1) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _kernels_of(last) == [], "the flow's last task left a spare kernel on its worker"
    assert len(_kernels_of(other)) == 1, "the worker the last task did not take had started no spare"


WARM_PROBE = """import json, os, sys
warm = "qsdk_warm_mod" in sys.modules
import qsdk_warm_mod
print(json.dumps({"warm": warm, "imported_by": qsdk_warm_mod.PID, "pid": os.getpid()}))"""
FIRST_TASK = """
import json, sys
from qsdk.sdk import QuantSDK
root = sys.argv[1]
sdk = QuantSDK(root, lakehouse_root=root + "/lakehouse", runs_dir=root + "/runs")
result = sdk.run_pipeline("f", executor="ray", ray_address="embedded", track=False, cache=False)
print(json.dumps([r.notebook for r in result.results]))
"""


def test_a_workers_first_kernel_is_warmed_with_its_stages_preload(project, tmp_path):
    """A worker's kernel pool starts with its first task's preload modules, so even that task's
    kernel has imported them, once, in the zygote it was forked from, before the notebook runs.
    On a Ray of its own: its workers are new."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "qsdk_warm_mod.py").write_text("import os\nPID = os.getpid()\n")
    project.stage("warm", "value: int = 0", WARM_PROBE, preload=["qsdk_warm_mod"]).flow("f", ["warm"]).save()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", FIRST_TASK, str(project.root)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (notebook,) = json.loads(out.stdout.strip().splitlines()[-1])
    nb = nbformat.read(notebook, as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    probe = json.loads(printed.strip().splitlines()[-1])
    assert probe["warm"] is True, "the worker's first kernel started without its stage's preload modules"
    assert probe["imported_by"] != probe["pid"]  # imported by the zygote, before the kernel was forked
