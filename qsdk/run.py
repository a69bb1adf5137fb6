"""Run a flow: validate every stage's parameters, plan tasks, schedule them in DAG order.

Stages whose inputs are ready run as soon as their upstream stages are done (graphlib's
``get_ready``/``done`` protocol), so an executor with several workers runs independent
stages and the partitions of one stage at the same time. A stage starts only when every
partition of every upstream stage has succeeded. On the first failure no new stage starts;
running tasks finish, and the rest are reported as skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qsdk import hooks as H
from qsdk.config import Config
from qsdk.errors import FlowFailed
from qsdk.execute import Task, TaskResult
from qsdk.executors import Executor, get_executor
from qsdk.flow import Flow
from qsdk.registry import Registry
from qsdk.runtime import StageContext

RunStatus = Literal["succeeded", "failed"]


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class RunState:
    """What hooks see while a flow runs."""

    run_id: str
    flow: Flow
    params: dict[str, dict[str, Any]]
    run_dir: Path
    config: Config
    tasks: dict[str, list[Task]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_id: str
    flow: str
    status: RunStatus
    run_dir: str
    results: list[TaskResult]
    params: dict[str, dict[str, Any]]
    duration: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[TaskResult]:
        return [r for r in self.results if r.status == "failed"]

    def stage_status(self, stage: str) -> str:
        statuses = {r.status for r in self.results if r.stage == stage}
        for status in ("failed", "skipped"):
            if status in statuses or not statuses:
                return status
        return "cached" if statuses == {"cached"} else "succeeded"

    def to_dict(self) -> dict[str, Any]:
        stages: dict[str, Any] = {}
        for r in self.results:
            entry = stages.setdefault(r.stage, {"status": None, "notebooks": [], "written": {}, "read": {},
                                                "partitions": {}})
            if r.notebook and r.status in ("succeeded", "failed"):
                entry["notebooks"].append(r.notebook)
            for table, version in r.written.items():
                entry["written"][table] = max(version, entry["written"].get(table, -1))
            entry["read"].update(r.read)
            if r.partition is not None:
                entry["partitions"][r.partition] = r.status
            if r.error is not None:
                entry.setdefault("errors", []).append(r.to_dict()["error"])
        for name, entry in stages.items():
            entry["status"] = self.stage_status(name)
        return {
            "run_id": self.run_id,
            "flow": self.flow,
            "status": self.status,
            "run_dir": self.run_dir,
            "duration_s": round(self.duration, 3),
            "parameters": self.params,
            "stages": stages,
            **self.extra,
        }

    def raise_for_status(self) -> RunResult:
        if self.status != "succeeded":
            first = self.failures[0].error if self.failures else None
            raise FlowFailed(
                f"flow {self.flow!r} run {self.run_id} failed: {first or 'see the run manifest'}",
                run_id=self.run_id,
                failures=[r.key for r in self.failures],
            )
        return self


def plan(flow: Flow, params: Mapping[str, dict[str, Any]], *, registry: Registry, config: Config,
         run_id: str, run_dir: Path, pinned_versions: Mapping[str, int] | None = None) -> dict[str, list[Task]]:
    """The tasks of each stage: one per partition, each with its notebook path and context."""
    tasks: dict[str, list[Task]] = {}
    for stage in flow.stages:
        tables = {t: registry.tables[t].to_dict() for t in (*stage.inputs, *stage.outputs)}
        tasks[stage.name] = []
        for key, values in stage.partitions(params[stage.name]):
            slug = stage.name if key is None else f"{stage.name}/{key}"
            context = StageContext(
                run_id=run_id,
                stage=stage.name,
                partition=key,
                lakehouse_root=str(config.lakehouse_root),
                inputs=list(stage.inputs),
                outputs=list(stage.outputs),
                tables=tables,
                staging_dir=str(run_dir / ".staging" / slug),
                pinned_versions={t: v for t, v in (pinned_versions or {}).items() if t in stage.inputs},
            )
            tasks[stage.name].append(Task(
                run_id=run_id,
                stage=stage.name,
                partition=key,
                notebook=str(stage.notebook),
                output_notebook=str(run_dir / f"{slug}.ipynb"),
                parameters=values,
                context=context,
                timeout=stage.timeout,
                retries=stage.retries,
                resources=dict(stage.resources),
            ))
    return tasks


def run_flow(
    flow: Flow,
    *,
    registry: Registry,
    config: Config,
    params: Mapping[str, Any] | None = None,
    executor: Executor | str = "local",
    hooks: Sequence[H.Hook] = (),
    run_id: str | None = None,
    pinned_versions: Mapping[str, int] | None = None,
) -> RunResult:
    resolved = flow.resolve(params)  # every stage validated before any kernel starts
    run_id = run_id or new_run_id()
    run_dir = config.runs_dir / run_id
    tasks = plan(flow, resolved, registry=registry, config=config, run_id=run_id, run_dir=run_dir,
                 pinned_versions=pinned_versions)
    state = RunState(run_id, flow, resolved, run_dir, config, tasks)
    run_dir.mkdir(parents=True, exist_ok=True)
    hook_list = list(hooks)
    H.call(hook_list, "before_flow", run=state)
    ex = get_executor(executor) if isinstance(executor, str) else executor
    started = time.perf_counter()
    results: list[TaskResult] = []
    try:
        ex.init()
        results = _schedule(flow, tasks, ex, state, hook_list)
    finally:
        ex.finalize()
    status: RunStatus = "failed" if any(r.status in ("failed", "skipped") for r in results) else "succeeded"
    result = RunResult(run_id, flow.name, status, str(run_dir), results, resolved,
                       time.perf_counter() - started)
    H.call(hook_list, "after_flow", run=state, result=result)
    _write_manifest(run_dir, result)
    if status == "succeeded":
        shutil.rmtree(run_dir / ".staging", ignore_errors=True)
    return result


def _schedule(flow: Flow, tasks: dict[str, list[Task]], ex: Executor, state: RunState,
              hook_list: list[H.Hook]) -> list[TaskResult]:
    sorter = flow.sorter()
    sorter.prepare()
    running: dict[Future[TaskResult], Task] = {}
    remaining: dict[str, int] = {}
    stage_ok: dict[str, bool] = {}
    results: list[TaskResult] = []
    failed = False
    while True:
        if not failed:
            for stage in sorter.get_ready():
                remaining[stage] = len(tasks[stage])
                stage_ok[stage] = True
                for task in tasks[stage]:
                    for extra in H.call(hook_list, "before_task", run=state, task=task):
                        if extra:
                            task.context.tracking.update(extra)
                    running[ex.submit(task)] = task
                if not tasks[stage]:
                    sorter.done(stage)
        if not running:
            break
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in done:
            task = running.pop(future)
            result = _result_of(future, task)
            results.append(result)
            H.call(hook_list, "after_task", run=state, task=task, result=result)
            remaining[task.stage] -= 1
            stage_ok[task.stage] &= result.status in ("succeeded", "cached")
            if remaining[task.stage] == 0:
                if stage_ok[task.stage]:
                    sorter.done(task.stage)
                else:
                    failed = True
    started = {r.key for r in results}
    for stage_tasks in tasks.values():
        for task in stage_tasks:
            if task.key not in started:
                results.append(TaskResult(task.stage, task.partition, "skipped", "",
                                          parameters=dict(task.parameters)))
    return results


def _result_of(future: Future[TaskResult], task: Task) -> TaskResult:
    from qsdk.errors import StageFailed

    try:
        return future.result()
    except Exception as exc:  # the executor itself failed (e.g. retries of a dead worker exhausted)
        error = exc if isinstance(exc, StageFailed) else StageFailed(
            f"stage {task.key} failed in the executor: {type(exc).__name__}: {exc}",
            stage=task.stage, partition=task.partition, notebook=task.output_notebook,
            cell_index=None, ename=type(exc).__name__, evalue=str(exc), reason="executor",
        )
        return TaskResult(task.stage, task.partition, "failed", task.output_notebook, error=error,
                          parameters=dict(task.parameters))


def _write_manifest(run_dir: Path, result: RunResult) -> None:
    (run_dir / "run.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))


def load_manifest(runs_dir: Path, run_id: str) -> dict[str, Any]:
    return json.loads((runs_dir / run_id / "run.json").read_text())

