"""Sequential, in-process execution: simple to debug, no Ray involved."""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from qsdk.execution.executors.base import Executor
from qsdk.execution.task import Task, TaskResult, run_task

if TYPE_CHECKING:
    from qsdk.execution.kernels import KernelPool


class LocalExecutor(Executor):
    """``prewarm``: keep this many kernels started ahead of the next task, with the stage's
    imports done (0: papermill starts one per task, as plain papermill does)."""

    name = "local"
    prewarm: int = 1
    _pool: KernelPool | None = None

    def __init__(self, *, prewarm: int = 1) -> None:
        self.prewarm = prewarm

    def init(self) -> None:
        if self.prewarm and self._pool is None:
            from qsdk.execution.kernels import KernelPool

            self._pool = KernelPool(self.prewarm)
            threading.Thread(target=_import_task_modules, name="qsdk-task-imports", daemon=True).start()

    def submit(self, task: Task, *, upcoming: int | None = None) -> Future[TaskResult]:
        future: Future[TaskResult] = Future()
        if self._pool is not None:
            future.set_result(self._pool.run_task(task, replace=upcoming != 0))
        else:
            future.set_result(run_task(task))
        return future

    def finalize(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


#: What the driver imports to run and commit a task, about 1 s of CPU (papermill alone imports
#: boto3 and pyarrow for its S3 and HDFS handlers). Imported on a thread while the first kernel
#: starts (a separate process), so the two overlap instead of following each other.
_TASK_MODULES = ("qsdk.execution.engine", "deltalake")


def _import_task_modules() -> None:
    for name in _TASK_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the task's own import reports it, where it is handled
            return
