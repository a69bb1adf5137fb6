"""Hooks around execution: tracking, versioning and progress plug in here, not in executors.

Every method is optional and takes keyword-only arguments plus ``**future_kwargs`` so that
new arguments never break an existing hook (the Hamilton lifecycle convention).
``before_task`` may return a dict; it is merged into the task context's ``tracking`` field,
which is how a tracker hands a per-task run id to the notebook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qsdk.execution.scheduling import RunResult, RunState
    from qsdk.execution.task import Task, TaskResult


class Hook:
    def before_flow(self, *, run: RunState, **future_kwargs: Any) -> None: ...

    def before_task(self, *, run: RunState, task: Task, **future_kwargs: Any) -> dict[str, Any] | None: ...

    def after_task(self, *, run: RunState, task: Task, result: TaskResult, **future_kwargs: Any) -> None: ...

    def after_flow(self, *, run: RunState, result: RunResult, **future_kwargs: Any) -> None: ...


def call(hooks: list[Hook], method: str, **kwargs: Any) -> list[Any]:
    return [getattr(hook, method)(**kwargs) for hook in hooks]
