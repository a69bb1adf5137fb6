"""A task run on a worker that may share no disk with the driver (a Ray node on another machine).

The driver plans every task with its own paths: the staging folder and the executed notebook
under ``runs/<run_id>/``, the stage's notebook under the project root, the tracker's id file
(:mod:`qsdk.execution.tracking_ref`). On the worker, :func:`run_detached` runs the task with
those replaced by what exists there:

- the staging folder (the stage context's JSON, staged writes, read log, guard records) goes to
  a scratch folder on the worker, deleted after the task: the commit of the staged writes
  happens in the task, on the worker, so nothing staged must travel. A worker killed mid-task
  cannot delete its own: the folder names host and worker pid, and every task removes those of
  this host's dead workers first (:func:`sweep_scratch`);
- the executed notebook, on a node that shares the driver's disk (:func:`shares_run_folder`: an
  embedded Ray, the long-lived head), is written in place under the driver's ``runs/<run_id>/``,
  cell by cell as papermill writes it, so a long task can be followed while it runs; a failed
  task's staged files move to the driver's staging folder there too, as the local executor
  leaves them (:func:`keep_staged`). Elsewhere the notebook is written to the scratch folder and
  comes back inside the result (``TaskResult.notebook_data``): :func:`deliver` writes it under
  the driver's ``runs/<run_id>/`` before any hook sees the result, so the tracking hook logs it
  (and renders its HTML) from there;
- the stage's notebook and the project root are those of ``code_root``, where the project's code
  was shipped (Ray's ``runtime_env`` ``working_dir``), when it was shipped;
- the tracker's ids come from ``fetch_tracking`` (the executor's channel, e.g. Ray's key-value
  store) and are written to a local file for the kernel's ``qsdk.log_metric`` and the commit.

A path the task needs that does not exist on the worker (a local lakehouse or read-root folder,
the stage's notebook) fails the task with a message naming it and what to use on a cluster
instead. A SQLite tracking store is not checked (its URI reaches the worker with the tracker's
ids, after the task started): on a cluster, tracking needs a server (README, "Running on a
cluster").
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qsdk.errors import StageFailed
from qsdk.execution import tracking_ref
from qsdk.execution.task import Task, TaskResult

SCRATCH_PREFIX = "qsdk-task-"


def localize(task: Task, *, scratch: Path, code_root: Path | None = None, notebook_in_place: bool = False) -> Task:
    """``task`` with its staging folder in ``scratch``, its executed notebook there too (unless
    ``notebook_in_place``: the driver's path, on a node that shares its disk), and (when the code
    was shipped to ``code_root``) its notebook and project root there."""
    root = Path(task.project_root) if task.project_root else None
    notebook, project_root = task.notebook, task.project_root
    if code_root is not None and root is not None and Path(task.notebook).is_relative_to(root):
        notebook = str(code_root / Path(task.notebook).relative_to(root))
        project_root = str(code_root)
    tracking = dict(task.context.tracking)
    if tracking_ref.PENDING_KEY in tracking:
        tracking[tracking_ref.PENDING_KEY] = str(scratch / "tracking.json")
    context = dataclasses.replace(task.context, staging_dir=str(scratch / "staging"), tracking=tracking)
    output = task.output_notebook if notebook_in_place else str(scratch / Path(task.output_notebook).name)
    return dataclasses.replace(task, notebook=notebook, project_root=project_root, context=context,
                               output_notebook=output)


def _host_prefix() -> str:
    """This host's scratch folders start so; the worker's pid and a random part follow."""
    return f"{SCRATCH_PREFIX}{socket.gethostname()}-"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie does not; unknown: it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep_scratch(folder: str | Path | None = None) -> list[Path]:
    """Remove the scratch folders (in ``folder``, default the temp folder) that workers of this
    host left when they died mid-task; the removed ones. Another host's (a temp folder shared by
    containers) and a live process's are left alone, as is any folder not named by this module."""
    folder = Path(folder or tempfile.gettempdir())
    mine = re.compile(re.escape(_host_prefix()) + r"(\d+)-")
    removed = []
    for path in folder.glob(f"{SCRATCH_PREFIX}*"):
        match = mine.match(path.name)
        pid = int(match.group(1)) if match else None
        if pid is not None and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def run_detached(task: Task, run: Callable[[Task], TaskResult], *, code_root: Path | None = None,
                 fetch_tracking: Callable[[], dict[str, Any] | None] | None = None) -> TaskResult:
    """Run ``task`` (with ``run``, e.g. a kernel pool's ``run_task``) away from the driver's
    paths; the result names the driver's notebook path and, unless the notebook was written there
    (:func:`shares_run_folder`), carries its bytes."""
    sweep_scratch()
    scratch = Path(tempfile.mkdtemp(prefix=f"{_host_prefix()}{os.getpid()}-"))
    try:
        in_place = shares_run_folder(task)
        local = localize(task, scratch=scratch, code_root=code_root, notebook_in_place=in_place)
        problem = unreachable(local)
        if problem:
            error = task.failure(problem, reason="executor", ename="PathNotOnWorker", evalue=problem)
            return TaskResult(task.stage, task.partition, "failed", task.output_notebook, error=error,
                              parameters=dict(task.parameters))
        pending = local.context.tracking.get(tracking_ref.PENDING_KEY)
        if pending and fetch_tracking is not None:
            threading.Thread(target=lambda: tracking_ref.publish(pending, fetch_tracking()),
                             name="qsdk-tracking-ids", daemon=True).start()
        result = run(local)
        executed = Path(local.output_notebook)
        result.notebook_data = executed.read_bytes() if executed.is_file() and not in_place else None
        if result.status == "failed" and in_place:
            keep_staged(task, local)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.notebook = task.output_notebook if result.notebook else result.notebook
    if result.error is not None and result.error.notebook:
        fields = {**result.error.fields, "notebook": task.output_notebook}
        result.error = StageFailed(result.error.detail, **fields)
    return result


def shares_run_folder(task: Task) -> bool:
    """Whether this node sees the driver's folder of ``task``'s run: only the driver makes it, so
    a node without the driver's disk has no folder of that run id."""
    runs = task.context.runs_dir
    return runs is not None and (Path(runs) / task.run_id).is_dir()


def keep_staged(task: Task, local: Task) -> Path | None:
    """Move a failed task's staged files (writes, read log, context) from the scratch folder to
    where the local executor leaves them, the driver's ``runs/<run_id>/.staging/...`` (on a node
    that :func:`shares_run_folder`), for inspection; the new folder, or ``None`` if nothing was
    staged."""
    if not (task.context.staging_dir and local.context.staging_dir):
        return None
    source, target = Path(local.context.staging_dir), Path(task.context.staging_dir)
    if not source.is_dir():
        return None
    try:
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
    except OSError:  # best effort: the failure itself is what the task reports
        return None
    return target


def deliver(result: TaskResult) -> TaskResult:
    """On the driver: write the executed notebook a detached task brought back to its path
    under ``runs/<run_id>/`` (``result.notebook``); the bytes leave the result."""
    data, result.notebook_data = result.notebook_data, None
    if data is not None and result.notebook:
        path = Path(result.notebook)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return result


def unreachable(task: Task) -> str | None:
    """What ``task`` needs from a disk this machine does not have, said with the fix (``None``: nothing)."""
    from qsdk import storage

    ctx = task.context
    for what, root in [("lakehouse", ctx.lakehouse_root), *(("read root", r) for r in ctx.read_roots.values())]:
        if not storage.is_remote(root) and not Path(root).is_dir():
            return (f"the {what} folder {root} does not exist on this worker: its node shares no disk "
                    "with the driver; on a cluster put the lakehouse on an object store "
                    "(QSDK_LAKEHOUSE=s3://bucket/prefix, README: Running on a cluster)")
    if not Path(task.notebook).is_file():
        return (f"the stage's notebook {task.notebook} does not exist on this worker: its node shares "
                "no disk with the driver; let the Ray executor ship the project's code (it does when "
                "it joins a cluster by address: ship_code) or install the project on every node")
    return None
