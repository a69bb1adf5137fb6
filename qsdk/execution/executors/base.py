"""The executor life cycle: ``init`` once, ``submit`` each task, ``finalize`` once."""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future

from qsdk.execution.task import Task, TaskResult


class Executor(ABC):
    name: str = "base"

    def init(self) -> None:  # noqa: B027 - optional step, not abstract
        """Acquire resources (start Ray, warm kernels). Called once before the first submit."""

    @abstractmethod
    def submit(self, task: Task, *, upcoming: int | None = None) -> Future[TaskResult]:
        """Start ``task``; the future resolves to its :class:`TaskResult` (failures included).

        ``upcoming``: how many more tasks of the run may still be submitted after this one (an
        upper bound: some may turn out cached or skipped); ``None`` if unknown. An executor that
        starts resources ahead of the next task (a pre-warmed kernel) starts none when it is 0.
        """

    def finalize(self) -> None:  # noqa: B027 - optional step, not abstract
        """Release resources. Called once, also after a failure."""

    def __enter__(self) -> Executor:
        self.init()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()
