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

from qsdk.cache import Cache, CacheRecord, code_hash, params_hash
from qsdk.config import DEFAULT_EXECUTOR, Config
from qsdk.errors import FlowFailed
from qsdk.execution import hooks as H
from qsdk.execution.context import new_context
from qsdk.execution.executors import Executor, get_executor
from qsdk.execution.task import Task, TaskResult
from qsdk.lakehouse.tables import Lakehouse
from qsdk.model.flow import Flow
from qsdk.model.registry import Registry

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
            for check in r.extra.get("checks", []):
                entry.setdefault("checks", []).append({**check, "partition": r.partition})
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
         run_id: str, run_dir: Path, pinned_versions: Mapping[str, int] | None = None,
         read_roots: Mapping[str, str | Path] | None = None) -> dict[str, list[Task]]:
    """The tasks of each stage: one per partition, each with its notebook path and context."""
    tasks: dict[str, list[Task]] = {}
    for stage in flow.stages:
        tasks[stage.name] = []
        for key, values in stage.partitions(params[stage.name]):
            slug = stage.name if key is None else f"{stage.name}/{key}"
            context = new_context(
                registry,
                run_id=run_id,
                stage=stage.name,
                partition=key,
                lakehouse_root=str(config.lakehouse_root),
                inputs=stage.inputs,
                outputs=stage.outputs,
                staging_dir=str(run_dir / ".staging" / slug),
                runs_dir=str(run_dir.parent),
                pinned_versions={t: v for t, v in (pinned_versions or {}).items() if t in stage.inputs},
                read_roots={t: str(r) for t, r in (read_roots or {}).items() if t in stage.inputs},
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
                preload=stage.preload,
                project_root=str(config.project_root),
                sources=stage.sources,
            ))
    return tasks


def run_flow(
    flow: Flow,
    *,
    registry: Registry,
    config: Config,
    params: Mapping[str, Any] | None = None,
    executor: Executor | str = DEFAULT_EXECUTOR,
    executor_options: Mapping[str, Any] | None = None,
    hooks: Sequence[H.Hook] = (),
    run_id: str | None = None,
    pinned_versions: Mapping[str, int] | None = None,
    read_roots: Mapping[str, str | Path] | None = None,
    cache: bool = True,
    force: bool | Sequence[str] = False,
) -> RunResult:
    """``pinned_versions``: read these input tables at these Delta versions. ``read_roots``: read
    these input tables from another lakehouse root (``qsdk reproduce`` reads the original
    lakehouse while writing to its own). ``cache``: skip tasks whose code, parameters and
    input data are unchanged since their last success (see :mod:`qsdk.cache`); ``force``:
    re-run everything (``True``) or these stages even when cached. ``executor_options``: passed to
    ``get_executor`` when ``executor`` is a name (the executor is built at the first task that
    is not cached, so a no-op re-run imports neither Ray nor a kernel)."""
    resolved = flow.resolve(params)  # every stage validated before any kernel starts
    run_id = run_id or new_run_id()
    run_dir = config.runs_dir / run_id
    tasks = plan(flow, resolved, registry=registry, config=config, run_id=run_id, run_dir=run_dir,
                 pinned_versions=pinned_versions, read_roots=read_roots)
    state = RunState(run_id, flow, resolved, run_dir, config, tasks)
    run_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(config.lakehouse_root, Path):  # a worker that cannot see it says so (detached)
        config.lakehouse_root.mkdir(parents=True, exist_ok=True)
    hook_list = list(hooks)
    H.call(hook_list, "before_flow", run=state)
    lazy = _LazyExecutor(executor, executor_options or {})
    forced = set(flow.stage_names) if force is True else set(force or ())
    for name in forced:
        flow.stage(name)  # an unknown stage name is an error
    lakehouse = Lakehouse(config.lakehouse_root, registry.tables)
    memo = _Memo(Cache(lakehouse, project_root=config.project_root), forced) if cache else None
    started = time.perf_counter()
    results: list[TaskResult] = []
    try:
        results = _schedule(flow, tasks, lazy, state, hook_list, memo)
    finally:
        lazy.finalize()
    status: RunStatus = "failed" if any(r.status in ("failed", "skipped") for r in results) else "succeeded"
    result = RunResult(run_id, flow.name, status, str(run_dir), results, resolved,
                       time.perf_counter() - started)
    H.call(hook_list, "after_flow", run=state, result=result)
    write_manifest(result)
    if status == "succeeded":
        shutil.rmtree(run_dir / ".staging", ignore_errors=True)
    return result


class _LazyExecutor:
    """Starts the real executor on the first task that is not cached: a no-op re-run starts
    neither Ray nor a kernel."""

    def __init__(self, executor: Executor | str, options: Mapping[str, Any]) -> None:
        self._spec = executor
        self._options = dict(options)
        self._ex: Executor | None = None

    def submit(self, task: Task, *, upcoming: int | None = None) -> Future[TaskResult]:
        if self._ex is None:
            self._ex = get_executor(self._spec, **self._options) if isinstance(self._spec, str) else self._spec
            self._ex.init()
        return self._ex.submit(task, upcoming=upcoming)

    def finalize(self) -> None:
        if self._ex is not None:
            self._ex.finalize()

    @property
    def started(self) -> bool:
        return self._ex is not None


class _Memo:
    """The cache as the scheduler uses it: look up before submitting, record after success."""

    def __init__(self, cache: Cache, forced: set[str]) -> None:
        self.cache = cache
        self.forced = forced
        self._code: dict[str, str] = {}
        # table versions read while no task of this run has run yet: until one runs, nothing of
        # this run can have moved them, so every stage's lookup reads each table once
        self._untouched: dict[str, int | None] | None = {}

    def code(self, task: Task) -> str:
        if task.stage not in self._code:
            self._code[task.stage] = code_hash(task.notebook)
        return self._code[task.stage]

    def lookup_all(self, tasks: list[Task]) -> list[tuple[Task, TaskResult | None]]:
        """Look up every task of one stage before any of them runs, reading each table's
        version once (:meth:`qsdk.cache.Cache.versions_pinned`)."""
        with self.cache.versions_pinned(self._untouched):
            found = [(task, self.lookup(task)) for task in tasks]
        if any(result is None for _, result in found):
            self._untouched = None  # a task of this stage runs: later stages read afresh
        return found

    def lookup(self, task: Task) -> TaskResult | None:
        if task.stage in self.forced:
            return None
        verdict = self.cache.check(stage=task.stage, partition=task.partition, notebook=task.notebook,
                                   params=task.parameters, code=self.code(task), sources=task.sources)
        if not verdict.hit or verdict.record is None:
            return None
        rec = verdict.record
        return TaskResult(task.stage, task.partition, "cached", rec.notebook, written=dict(rec.written),
                          read={r["table"]: r["version"] for r in rec.reads}, parameters=dict(task.parameters),
                          extra={"cached_from": rec.run_id})

    def record(self, task: Task, result: TaskResult) -> None:
        if result.status != "succeeded":
            return
        deps = result.extra.get("deps") or {}
        self.cache.save(CacheRecord(
            stage=task.stage, partition=task.partition, code=self.code(task),
            params=params_hash(task.parameters), reads=list(result.extra.get("reads", [])),
            written=dict(result.written), run_id=task.run_id, notebook=result.notebook,
            deps=deps.get("code"), contracts=deps.get("contracts"), sources=deps.get("sources"),
            writes=list(result.extra.get("writes", [])),
        ))


def _schedule(flow: Flow, tasks: dict[str, list[Task]], ex: _LazyExecutor, state: RunState,
              hook_list: list[H.Hook], memo: _Memo | None) -> list[TaskResult]:
    sorter = flow.sorter()
    sorter.prepare()
    running: dict[Future[TaskResult], Task] = {}
    remaining: dict[str, int] = {}
    stage_ok: dict[str, bool] = {}
    results: list[TaskResult] = []
    failed = False
    total = sum(len(stage_tasks) for stage_tasks in tasks.values())

    def finish(task: Task, result: TaskResult) -> None:
        nonlocal failed
        results.append(result)
        if memo is not None:
            memo.record(task, result)
        H.call(hook_list, "after_task", run=state, task=task, result=result)
        remaining[task.stage] -= 1
        stage_ok[task.stage] &= result.status in ("succeeded", "cached")
        if remaining[task.stage] == 0:
            if stage_ok[task.stage]:
                sorter.done(task.stage)
            else:
                failed = True

    while True:
        if not failed:
            for stage in sorter.get_ready():
                remaining[stage] = len(tasks[stage])
                stage_ok[stage] = True
                if not tasks[stage]:
                    sorter.done(stage)
                lookups = memo.lookup_all(tasks[stage]) if memo is not None else [(t, None) for t in tasks[stage]]
                for task, cached in lookups:
                    if cached is not None:  # decided in the driver: no executor, no kernel
                        finish(task, cached)
                        continue
                    for extra in H.call(hook_list, "before_task", run=state, task=task):
                        if extra:
                            task.context.tracking.update(extra)
                    upcoming = total - len(results) - len(running) - 1  # an upper bound
                    running[ex.submit(task, upcoming=upcoming)] = task
            if sorter.is_active() and not running and not failed:
                continue  # cached stages completed synchronously: their successors are ready now
        if not running:
            break
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in done:
            task = running.pop(future)
            finish(task, _result_of(future, task))
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
        error = exc if isinstance(exc, StageFailed) else task.failure(
            f"the executor failed: {type(exc).__name__}: {exc}", reason="executor",
            ename=type(exc).__name__, evalue=str(exc),
        )
        return TaskResult(task.stage, task.partition, "failed", task.output_notebook, error=error,
                          parameters=dict(task.parameters))


def write_manifest(result: RunResult) -> None:
    """``runs/<run_id>/run.json`` (again, when something after the run changed the result)."""
    (Path(result.run_dir) / "run.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))

