"""Sequential, in-process execution: simple to debug, no Ray involved."""

from __future__ import annotations

from concurrent.futures import Future

from qsdk.execute import Task, TaskResult, run_task
from qsdk.executors.base import Executor


class LocalExecutor(Executor):
    name = "local"

    def submit(self, task: Task) -> Future[TaskResult]:
        future: Future[TaskResult] = Future()
        future.set_result(run_task(task))
        return future
