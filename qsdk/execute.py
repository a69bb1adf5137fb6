"""Run one stage partition: the one papermill call, then the commit of its staged writes.

Failures come back as values (:class:`TaskResult` with a picklable :class:`StageFailed`), not
as exceptions, so an executor can tell a notebook that raised (never retried) from a worker
that died (retried by the executor).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qsdk.errors import QsdkError, StageFailed
from qsdk.lakehouse import staging
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.tables import Lakehouse
from qsdk.runtime import ENV_CONTEXT, StageContext

Status = Literal["succeeded", "failed", "cached", "skipped"]


@dataclass(frozen=True)
class Task:
    run_id: str
    stage: str
    partition: str | None
    notebook: str
    output_notebook: str
    parameters: dict[str, Any]
    context: StageContext
    timeout: float | None = None
    retries: int = 0
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.stage if self.partition is None else f"{self.stage}[{self.partition}]"

    @property
    def staging_dir(self) -> Path:
        return Path(self.context.staging_dir or "")


@dataclass
class TaskResult:
    stage: str
    partition: str | None
    status: Status
    notebook: str
    duration: float = 0.0
    written: dict[str, int] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)
    error: StageFailed | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.stage if self.partition is None else f"{self.stage}[{self.partition}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "partition": self.partition,
            "status": self.status,
            "notebook": self.notebook,
            "duration_s": round(self.duration, 3),
            "written": self.written,
            "read": self.read,
            "error": None if self.error is None else {"message": str(self.error), **_jsonable(self.error.fields)},
        }


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, str | int | float | bool | type(None)) else str(v) for k, v in fields.items()}


def run_task(task: Task, *, km: Any = None) -> TaskResult:
    """Execute ``task``'s notebook with papermill, then commit what it staged.

    ``km``: an already started kernel manager (a pre-warmed kernel) to run on instead of
    starting a new kernel; it is used for this one run only.
    """
    from qsdk import engine

    engine.register()
    started = time.perf_counter()
    context_path = task.staging_dir / "context.json"
    if task.staging_dir.exists():  # a retried attempt starts from a clean staging folder
        shutil.rmtree(task.staging_dir)
    task.context.save(context_path)
    Path(task.output_notebook).parent.mkdir(parents=True, exist_ok=True)
    result = TaskResult(task.stage, task.partition, "failed", task.output_notebook,
                        parameters=dict(task.parameters))
    try:
        _papermill(task, context_path, km)
        _check_outputs_written(task)
        result.read = staging.recorded_reads(task.staging_dir)
        result.written = _commit(task)
        result.status = "succeeded"
    except StageFailed as exc:
        result.error = exc
    except QsdkError as exc:
        result.error = _failed(task, f"{type(exc).__name__}: {exc}", reason="commit",
                               ename=type(exc).__name__, evalue=str(exc))
    result.duration = time.perf_counter() - started
    return result


def _papermill(task: Task, context_path: Path, km: Any) -> None:
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    import logging

    # papermill's regex parameter inference misreads annotated parameters and warns about
    # "unknown" ones; qsdk validated every name itself before this call.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {
        "kernel_env": {ENV_CONTEXT: str(context_path)},
        # the kernel's own start-up chatter (e.g. its TCP transport notice) is not stage output
        "extra_arguments": ["--IPKernelApp.log_level=ERROR"],
    }
    if km is not None:
        kwargs["km"] = km
    try:
        pm.execute_notebook(
            task.notebook,
            task.output_notebook,
            parameters=task.parameters,
            engine_name="qsdk",
            kernel_name="python3",
            cwd=str(Path(task.notebook).parent),
            execution_timeout=task.timeout,
            progress_bar=False,
            log_output=False,
            **kwargs,
        )
    except PapermillExecutionError as exc:
        raise _failed(
            task,
            f"cell {exc.cell_index} raised {exc.ename}: {_first_line(exc.evalue)}",
            reason="error", cell_index=exc.cell_index, ename=exc.ename, evalue=exc.evalue,
        ) from None
    except CellTimeoutError as exc:
        raise _failed(task, f"a cell ran longer than the stage timeout of {task.timeout} s",
                      reason="timeout", ename="CellTimeoutError", evalue=_first_line(str(exc))) from None
    except DeadKernelError as exc:
        raise _failed(task, "the kernel died (killed, out of memory, or crashed)",
                      reason="kernel_died", ename="DeadKernelError", evalue=_first_line(str(exc))) from None
    except RuntimeError as exc:  # e.g. "Kernel died before replying to kernel_info"
        raise _failed(task, f"the kernel failed: {_first_line(str(exc))}", reason="kernel_died",
                      ename=type(exc).__name__, evalue=str(exc)) from None


def _check_outputs_written(task: Task) -> None:
    written = {w.table for w in staging.staged_writes(task.staging_dir)}
    missing = [t for t in task.context.outputs if t not in written]
    if missing:
        raise _failed(
            task,
            f"the notebook finished without writing its declared output(s) {missing} (did it call "
            "sys.exit() or return early?); write each declared output with qsdk.write_table, "
            "even an empty frame",
            reason="outputs_missing", ename="OutputsMissing", evalue=", ".join(missing),
        )


def _commit(task: Task) -> dict[str, int]:
    ctx = task.context
    lakehouse = Lakehouse(ctx.lakehouse_root, {n: TableSpec.from_dict(s) for n, s in ctx.tables.items()})
    metadata = {
        "qsdk.run_id": ctx.run_id,
        "qsdk.stage": ctx.stage,
        "qsdk.partition": ctx.partition or "",
        "qsdk.inputs": staging.recorded_reads(task.staging_dir),
        **{f"qsdk.{k}": v for k, v in ctx.tracking.items()},
    }
    app_prefix = f"qsdk:{ctx.run_id}:{ctx.stage}:{ctx.partition or '-'}"
    return staging.commit_staged(task.staging_dir, lakehouse, app_prefix=app_prefix, metadata=metadata)


def _failed(task: Task, detail: str, **fields: Any) -> StageFailed:
    where = task.key
    return StageFailed(
        f"stage {where} failed: {detail} (executed notebook: {task.output_notebook})",
        stage=task.stage,
        partition=task.partition,
        notebook=task.output_notebook,
        **{"cell_index": None, "ename": None, "evalue": None, "reason": "error", **fields},
    )


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
