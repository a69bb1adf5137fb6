"""A task detached from the driver's disk (qsdk.execution.detached): what it runs with on the
worker, what comes back, and the clear failure when it needs a folder the worker cannot see.
The kernel part is covered by the Ray tests (tests/integration/test_ray_executor.py) and the
no-shared-disk cluster (tests/cluster/test_cluster.py); here ``run`` is a plain function."""

from __future__ import annotations

import json
import pickle
import tempfile
import threading
from pathlib import Path

import pytest

from qsdk.errors import StageFailed
from qsdk.execution import detached, tracking_ref
from qsdk.execution.context import StageContext
from qsdk.execution.task import Task, TaskResult


def _task(tmp_path: Path, *, lakehouse: str | None = None, pending: bool = False) -> Task:
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True, exist_ok=True)
    (project / "notebooks" / "k.ipynb").write_text("{}")
    runs = tmp_path / "runs" / "r1"
    lake = lakehouse or str(tmp_path / "lake")
    if lakehouse is None:
        Path(lake).mkdir(exist_ok=True)
    tracking = {tracking_ref.PENDING_KEY: str(runs / ".tracking" / "k.json")} if pending else {}
    ctx = StageContext(run_id="r1", stage="k", lakehouse_root=lake, inputs=[], outputs=["bronze.k"], tables={},
                       partition="2020", staging_dir=str(runs / ".staging" / "k" / "2020"), tracking=tracking)
    return Task(run_id="r1", stage="k", partition="2020", notebook=str(project / "notebooks" / "k.ipynb"),
                output_notebook=str(runs / "k" / "2020.ipynb"), parameters={"x": 1}, context=ctx,
                project_root=str(project))


def test_a_detached_task_stages_in_scratch_and_brings_its_notebook_back(tmp_path):
    task = _task(tmp_path)
    seen: list[Task] = []

    def run(local: Task) -> TaskResult:
        seen.append(local)
        assert Path(local.context.staging_dir).is_relative_to(tempfile.gettempdir())
        Path(local.output_notebook).write_text('{"executed": true}')
        return TaskResult(local.stage, local.partition, "succeeded", local.output_notebook)

    result = detached.run_detached(task, run)
    (local,) = seen
    assert local.notebook == task.notebook and local.project_root == task.project_root  # nothing shipped
    assert not Path(local.output_notebook).parent.exists()  # the scratch folder is gone
    assert not Path(task.output_notebook).exists()  # nothing written on the driver's path by the worker
    assert result.notebook == task.output_notebook
    result = pickle.loads(pickle.dumps(result))  # as it travels back through Ray
    detached.deliver(result)
    assert json.loads(Path(task.output_notebook).read_text()) == {"executed": True}
    assert result.notebook_data is None


def test_shipped_code_moves_the_notebook_and_project_root(tmp_path):
    task = _task(tmp_path)
    shipped = tmp_path / "unpacked"
    local = detached.localize(task, scratch=tmp_path / "scratch", code_root=shipped)
    assert local.notebook == str(shipped / "notebooks" / "k.ipynb") and local.project_root == str(shipped)
    assert local.context.staging_dir == str(tmp_path / "scratch" / "staging")
    assert task.context.staging_dir.endswith("2020")  # the driver's task is untouched


def test_a_failure_names_the_notebook_on_the_driver(tmp_path):
    task = _task(tmp_path)

    def run(local: Task) -> TaskResult:
        Path(local.output_notebook).write_text("{}")
        return TaskResult(local.stage, local.partition, "failed", local.output_notebook,
                          error=local.failure("cell 1 raised ValueError", ename="ValueError"))

    result = detached.run_detached(task, run)
    assert isinstance(result.error, StageFailed)
    assert result.error.notebook == task.output_notebook and task.output_notebook in str(result.error)
    assert result.error.ename == "ValueError" and result.notebook_data == b"{}"


def test_a_local_lakehouse_the_worker_cannot_see_fails_with_the_fix(tmp_path):
    task = _task(tmp_path, lakehouse=str(tmp_path / "not-on-this-node"))
    result = detached.run_detached(task, lambda local: (_ for _ in ()).throw(AssertionError("ran")))
    assert result.status == "failed" and result.error is not None
    assert result.error.ename == "PathNotOnWorker" and "QSDK_LAKEHOUSE=s3://" in str(result.error)
    assert str(tmp_path / "not-on-this-node") in str(result.error)


def test_the_trackers_ids_reach_the_kernel_through_a_local_file(tmp_path):
    task = _task(tmp_path, pending=True)
    release = threading.Event()

    def fetch() -> dict[str, str]:
        release.wait(10)
        return {"mlflow_run_id": "abc"}

    def run(local: Task) -> TaskResult:
        pending = local.context.tracking[tracking_ref.PENDING_KEY]
        assert not pending.startswith(str(tmp_path / "runs"))  # never the driver's file
        release.set()
        ids = tracking_ref.resolve(dict(local.context.tracking), timeout=10)
        return TaskResult(local.stage, local.partition, "succeeded", local.output_notebook, extra=ids)

    result = detached.run_detached(task, run, fetch_tracking=fetch)
    assert result.extra == {"mlflow_run_id": "abc"}


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # the dialect Ray uses
def test_the_shipped_code_keeps_every_qsdk_module_and_leaves_out_runs_and_tables(tmp_path):
    """Ray applies the runtime_env's excludes (gitwildmatch) to the project's folder and to qsdk's
    own (py_modules) alike: none may drop a file of qsdk (as "lakehouse" once dropped
    qsdk/lakehouse on the cluster)."""
    import pathspec

    from qsdk.execution.executors import rayenv

    runtime = rayenv.cluster_runtime_env(project_root=tmp_path, env={"AWS_REGION": "eu-west-1", "HOME": "/x"})
    assert runtime["working_dir"] == str(tmp_path.resolve())
    assert runtime["env_vars"] == {"AWS_REGION": "eu-west-1"}  # only what a worker needs, never PYTHONPATH
    (package,) = runtime["py_modules"]
    spec = pathspec.PathSpec.from_lines("gitwildmatch", runtime["excludes"])
    qsdk_files = [str(p.relative_to(package)) for p in Path(package).rglob("*.py")]
    assert len(qsdk_files) > 50 and not [f for f in qsdk_files if spec.match_file(f)]
    for data in ("runs/r1/k/2020.ipynb", "lakehouse/bronze/k/_delta_log/00000000000000000000.json",
                 "lakehouse/bronze/k/part-00000-x.parquet", "lakehouse/_qsdk_cache/k.json", "mlflow.db",
                 "mlartifacts/1/a.png"):
        assert spec.match_file(data), data
    for code in ("notebooks/backfill/ingest_prices.ipynb", "pipelines/backfill.yaml", "mylib/lakehouse.py"):
        assert not spec.match_file(code), code


def test_a_task_removes_what_dead_workers_of_its_host_left_in_scratch_and_nothing_else(tmp_path, monkeypatch):
    """A worker killed mid-task never reaches its ``finally``: its scratch folder stays. The next
    task on the host removes it, and leaves a live worker's, another host's, and folders it did
    not name."""
    import socket
    import subprocess
    import sys

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    made = {name: tmp_path / "tmp" / name for name in (
        f"qsdk-task-{host}-{dead}-abc", f"qsdk-task-{host}-{live.pid}-def", f"qsdk-task-elsewhere-{dead}-ghi",
        "qsdk-task-xyz", f"other-{host}-{dead}-jkl")}
    for path in made.values():
        (path / "staging").mkdir(parents=True)
    try:
        scratch: list[Path] = []

        def run(local: Task) -> TaskResult:
            scratch.append(Path(local.output_notebook).parent)
            return TaskResult(local.stage, local.partition, "succeeded", local.output_notebook)

        detached.run_detached(_task(tmp_path), run)
    finally:
        live.kill()
        live.wait()
    assert {name for name, path in made.items() if path.exists()} == set(made) - {f"qsdk-task-{host}-{dead}-abc"}
    (own,) = scratch
    assert own.name.startswith(f"qsdk-task-{host}-") and not own.exists()  # named for the sweep, removed after
    # once its worker is gone, a live worker's folder goes too
    assert detached.sweep_scratch(tmp_path / "tmp") == [made[f"qsdk-task-{host}-{live.pid}-def"]]


@pytest.mark.parametrize("shares_disk", [True, False])
def test_the_driver_paths_are_used_only_where_the_runs_folder_exists(tmp_path, shares_disk):
    """On a node that shares the driver's disk the run's folder exists: the executed notebook is
    written in place (nothing to carry back) and a failed task's staged files move there. On one
    that does not, the notebook comes back in the result and no driver path is created."""
    import dataclasses

    task = _task(tmp_path)
    task = dataclasses.replace(task, context=dataclasses.replace(task.context, runs_dir=str(tmp_path / "runs")))
    if shares_disk:
        (tmp_path / "runs" / "r1").mkdir(parents=True)
    written: list[str] = []

    def run(local: Task) -> TaskResult:
        Path(local.context.staging_dir).mkdir(parents=True)
        (Path(local.context.staging_dir) / "writes.jsonl").write_text("{}\n")
        Path(local.output_notebook).parent.mkdir(parents=True, exist_ok=True)
        Path(local.output_notebook).write_text('{"executed": true}')
        written.append(local.output_notebook)
        return TaskResult(local.stage, local.partition, "failed", local.output_notebook)

    result = detached.run_detached(task, run)
    assert result.notebook == task.output_notebook
    if shares_disk:
        assert written == [task.output_notebook] and result.notebook_data is None
        assert (task.staging_dir / "writes.jsonl").is_file()
    else:
        assert written != [task.output_notebook] and result.notebook_data == b'{"executed": true}'
        assert not (tmp_path / "runs").exists()
