"""MLflow tracking: a :class:`~qsdk.execution.hooks.Hook` that records every flow run, and the
``qsdk.log_metric`` / ``qsdk.log_figure`` functions notebooks call.

Run layout in MLflow (experiment ``qsdk/<flow>``)::

    flow run            tags qsdk.kind=flow, qsdk.run_id, qsdk.flow, git commit; params STAGE.NAME
    └── stage run       one per stage: tags qsdk.kind=stage; params = the stage's parameters
        └── partition   one per partition when the stage fans out: qsdk.kind=partition

A stage that fans out gets a stage run *and* a child run per partition (rather than one run
per task tagged with its partition) so the UI shows each stage as one row that opens into its
partitions, and ``qsdk reproduce`` can replay either a whole stage or a single partition. The
run a task logs to (the partition run, or the stage run of an unpartitioned stage) carries the
task's executed notebook (``.ipynb`` and HTML), ``delta.read.<table>`` / ``delta.write.<table>``
tags with the Delta versions it read and wrote, and the notebook's own metrics and figures.

All runs are created by the driver with ``MlflowClient.create_run`` (no active-run global
state); workers only log metrics and figures to the run id in their stage context. The default
store is a SQLite file in the project (``Config.tracking_uri``); the driver creates and
migrates it in ``before_flow`` because processes that initialise a fresh database at the same
moment fail ("duplicate column name"). SQLite allows one writer at a time: every logging call
retries with backoff when the database is locked.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qsdk import names as qnames
from qsdk.errors import ConfigError, QsdkError
from qsdk.execution.hooks import Hook

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from qsdk.execution.scheduling import RunResult, RunState
    from qsdk.execution.task import Task, TaskResult

RUN_ID_KEY = "mlflow_run_id"  # keys of StageContext.tracking (and qsdk.<key> in Delta commits)
URI_KEY = "mlflow_tracking_uri"
ARTIFACT_DIR = "mlartifacts"  # beside a SQLite store, like `mlflow server`'s own default
PARAMS_ARTIFACT = "qsdk/params.json"
_MAX_TAG = 5000  # MLflow allows 8000 characters per tag value; longer JSON goes to an artifact
_RETRIES = 10

T = TypeVar("T")


# ------------------------------------------------------------------ store and client


def artifact_root(tracking_uri: str) -> Path | None:
    """The artifact folder beside a SQLite store; ``None`` for a server (it decides)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACT_DIR
    return None


_clients: dict[str, tuple[MlflowClient, tuple[int, int] | None]] = {}  # uri -> client, SQLite file's identity
_MAX_CLIENTS = 8  # a long-lived tracking agent serves runs of many stores: keep the latest open


def client(tracking_uri: str) -> MlflowClient:
    """One ``MlflowClient`` per tracking URI and process, while its SQLite file stays the same.

    A long-lived process (the tracking agent) outlives files: a SQLite store deleted or replaced
    since its client was made (a new project folder, a restored backup) is opened anew, never
    written through a connection to the old file.
    """
    cached = _clients.get(tracking_uri)
    if cached is not None and cached[1] == _sqlite_identity(tracking_uri):
        return cached[0]
    _forget(tracking_uri)
    from mlflow import MlflowClient

    made = MlflowClient(tracking_uri=tracking_uri)  # opens (and creates) the store
    _clients[tracking_uri] = (made, _sqlite_identity(tracking_uri))
    while len(_clients) > _MAX_CLIENTS:
        _forget(next(iter(_clients)))
    return made


def _sqlite_identity(tracking_uri: str) -> tuple[int, int] | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    try:
        st = Path(tracking_uri.removeprefix("sqlite:///")).stat()
    except OSError:
        return (-1, -1)  # gone: never equal to the identity of an open store
    return st.st_dev, st.st_ino


def _forget(tracking_uri: str) -> None:
    """Close ``tracking_uri``'s client and MLflow's own cached store for it."""
    cached = _clients.pop(tracking_uri, None)
    if cached is None:
        return
    from mlflow.tracking._tracking_service import utils as store_utils

    store = getattr(getattr(cached[0], "_tracking_client", None), "store", None)
    with contextlib.suppress(Exception):
        store.engine.dispose()  # type: ignore[union-attr]
    # MLflow caches a store and a SQLAlchemy engine per URI too (private caches: skipped if a
    # release renames them; tests/integration/test_tracking_agent.py would then fail)
    with contextlib.suppress(Exception):
        type(store)._engine_map.pop(tracking_uri, None)  # type: ignore[union-attr]
    cache = getattr(store_utils._tracking_store_registry, "_get_store_with_resolved_uri", None)
    if cache is not None and hasattr(cache, "cache_clear"):
        cache.cache_clear()


def prepare_store(tracking_uri: str) -> MlflowClient:
    """Open the tracking store, creating and migrating a SQLite database if needed.

    Call in the driver before any worker logs: concurrent first-time initialisation of the
    same SQLite file fails in MLflow's migrations.
    """
    c = client(tracking_uri)
    try:
        with_retry(c.search_experiments, max_results=1)
    except Exception as exc:
        raise ConfigError(
            f"cannot open the MLflow tracking store {tracking_uri}: {exc}; fix MLFLOW_TRACKING_URI "
            "or run without tracking (track=False, qsdk run --no-track)",
            tracking_uri=tracking_uri,
        ) from exc
    return c


def experiment_id(c: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a SQLite store) if missing."""
    found = with_retry(c.get_experiment_by_name, name)
    if found is not None:
        return found.experiment_id
    root = artifact_root(tracking_uri)
    location = (root / name.replace("/", "-")).as_uri() if root else None
    try:
        return with_retry(c.create_experiment, name, artifact_location=location)
    except Exception:  # another driver created it at the same moment
        found = with_retry(c.get_experiment_by_name, name)
        if found is None:
            raise
        return found.experiment_id


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or (
        getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE"
    )


def with_retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``; on "database is locked" retry with jittered exponential backoff."""
    for attempt in range(_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _is_locked(exc) or attempt + 1 == _RETRIES:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def git_commit(root: Path) -> tuple[str | None, bool | None]:
    """``(HEAD commit, has uncommitted changes)`` of the repository holding ``root``, if any."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "."], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def params_of(c: MlflowClient, run: Any) -> dict[str, Any]:
    """The exact (JSON) parameters qsdk recorded on ``run`` (an ``mlflow.entities.Run``)."""
    tags = run.data.tags
    if qnames.PARAMS in tags:
        return json.loads(tags[qnames.PARAMS])
    with tempfile.TemporaryDirectory() as tmp:
        path = c.download_artifacts(run.info.run_id, PARAMS_ARTIFACT, tmp)
        return json.loads(Path(path).read_text())


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


# ------------------------------------------------------------------ the hook


@dataclass
class _FlowRuns:
    """The MLflow runs of one qsdk flow run."""

    client: MlflowClient
    uri: str
    experiment_id: str
    parent: str
    stages: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)
    stage_ok: dict[str, bool] = field(default_factory=dict)
    stage_reads: dict[str, dict[str, set[int]]] = field(default_factory=dict)
    stage_writes: dict[str, dict[str, int]] = field(default_factory=dict)
    open_runs: set[str] = field(default_factory=set)


class MlflowTracking(Hook):
    """Record a flow run in MLflow: a parent run, nested stage runs and partition runs.

    ``tracking_uri``: default ``Config.tracking_uri`` (``MLFLOW_TRACKING_URI`` or the project's
    SQLite store). ``tags``: extra tags for the flow run (``qsdk reproduce`` marks its runs).
    ``html``: also log an HTML rendering of each executed notebook. After :meth:`defer_html`,
    the renderings wait for :meth:`render_deferred` (the tracking helper calls it once the run's
    record is complete and the run has returned: rendering is about a second of CPU per
    notebook, more than the rest of a small run's tracking).
    """

    def __init__(self, *, tracking_uri: str | None = None, tags: Mapping[str, str] | None = None,
                 html: bool = True) -> None:
        self.tracking_uri = tracking_uri
        self.tags = dict(tags or {})
        self.html = html
        self._runs: dict[str, _FlowRuns] = {}
        self._pending: dict[str, list[tuple[Task, TaskResult]]] = {}
        self._exporter: Any = None
        self._deferred: list[tuple[MlflowClient, str, Path]] | None = None

    def defer_html(self) -> None:
        """Queue the HTML renderings instead of making them as each task is logged."""
        if self._deferred is None:
            self._deferred = []

    def render_deferred(self) -> None:
        """Render and log the queued HTML renderings (each notebook's ``.ipynb`` is logged already)."""
        queued, self._deferred = self._deferred or [], None
        for c, run_id, notebook in queued:
            self._log_html(c, run_id, notebook)

    def mlflow_run_id(self, run_id: str) -> str | None:
        """The MLflow run id of qsdk flow run ``run_id`` (``None`` if this hook did not track it)."""
        runs = self._runs.get(run_id)
        return runs.parent if runs else None

    # -------------------------------------------------------------- life cycle
    def before_flow(self, *, run: RunState, **_: Any) -> None:
        """Nothing yet: the store is opened when the first task really runs, so a re-run in
        which every task is cached costs no MLflow import and leaves no empty run behind."""
        self._pending[run.run_id] = []

    def _ensure(self, run: RunState) -> _FlowRuns:
        if run.run_id not in self._runs:
            self._start(run)
            for task, result in self._pending.pop(run.run_id, []):  # cache hits seen before
                self.after_task(run=run, task=task, result=result)
        return self._runs[run.run_id]

    def _start(self, run: RunState) -> None:
        uri = self.tracking_uri or run.config.tracking_uri
        c = prepare_store(uri)
        exp = experiment_id(c, f"qsdk/{run.flow.name}", uri)
        commit, dirty = git_commit(run.config.project_root)
        tags = {
            qnames.KIND: "flow",
            qnames.RUN_ID: run.run_id,
            qnames.FLOW: run.flow.name,
            qnames.STAGES: json.dumps(list(run.tasks)),
            "qsdk.project": str(run.config.project_root),
            qnames.LAKEHOUSE: str(run.config.lakehouse_root),
            "qsdk.run_dir": str(run.run_dir),
            **({"mlflow.source.git.commit": commit, "qsdk.git_commit": commit} if commit else {}),
            **({"qsdk.git_dirty": str(dirty).lower()} if dirty is not None else {}),
            **self.tags,
        }
        parent = with_retry(c.create_run, exp, tags=tags, run_name=f"{run.flow.name} {run.run_id}")
        state = _FlowRuns(c, uri, exp, parent.info.run_id)
        state.open_runs.add(state.parent)
        self._runs[run.run_id] = state
        flat = {f"{stage}.{k}": v for stage, values in run.params.items() for k, v in values.items()}
        self._log_params(state, state.parent, flat, record=False)

    def before_task(self, *, run: RunState, task: Task, **_: Any) -> dict[str, Any] | None:
        try:
            state = self._ensure(run)
            return {RUN_ID_KEY: self._task_run(state, run, task), URI_KEY: state.uri}
        except Exception as exc:  # tracking must not take a running flow down
            _warn(f"MLflow tracking of {task.key} failed, the task runs untracked: {exc}")
            return None

    def after_task(self, *, run: RunState, task: Task, result: TaskResult, **_: Any) -> None:
        state = self._runs.get(run.run_id)
        if state is None and run.run_id in self._pending:
            self._pending[run.run_id].append((task, result))
            return
        if state is None or (task.key not in state.tasks and result.status != "cached"):
            return
        try:
            if task.key not in state.tasks:  # a cache hit skips before_task: record it all now
                self._task_run(state, run, task)
            self._finish_task(state, run, task, result)
        except Exception as exc:
            _warn(f"MLflow tracking of {task.key} failed: {exc}")

    def after_flow(self, *, run: RunState, result: RunResult, **_: Any) -> None:
        self._pending.pop(run.run_id, None)
        state = self._runs.get(run.run_id)
        if state is None:  # every task was cached (or none ran): nothing new to record
            return
        c = state.client
        try:
            for run_id in sorted(state.open_runs - {state.parent}):  # runs of tasks never finished
                with_retry(c.set_terminated, run_id, status="KILLED")
            with_retry(c.log_metric, state.parent, "duration_s", result.duration)
            with_retry(c.set_tag, state.parent, qnames.STATUS, result.status)
            with_retry(c.log_dict, state.parent, result.to_dict(), "qsdk/run.json")
            with_retry(c.set_terminated, state.parent,
                       status="FINISHED" if result.status == "succeeded" else "FAILED")
        except Exception as exc:
            _warn(f"MLflow tracking of run {run.run_id} could not be completed: {exc}")
        result.extra.update({RUN_ID_KEY: state.parent, URI_KEY: state.uri})

    # -------------------------------------------------------------- helpers
    def _create(self, state: _FlowRuns, *, parent: str, name: str, tags: dict[str, str]) -> str:
        created = with_retry(state.client.create_run, state.experiment_id, run_name=name,
                             tags={"mlflow.parentRunId": parent, **tags})
        state.open_runs.add(created.info.run_id)
        return created.info.run_id

    def _log_params(self, state: _FlowRuns, run_id: str, params: Mapping[str, Any], *,
                    record: bool = True) -> None:
        """Log ``params`` as MLflow params; with ``record``, also their exact JSON for reproduce."""
        from mlflow.entities import Param, RunTag

        c = state.client
        items = [Param(k, _param_value(v)[:6000]) for k, v in params.items()]
        tags: list[RunTag] = []
        if record:
            text = json.dumps(dict(params), default=str)
            if len(text) <= _MAX_TAG:
                tags.append(RunTag(qnames.PARAMS, text))
            else:
                with_retry(c.log_dict, run_id, dict(params), PARAMS_ARTIFACT)
        for i in range(0, len(items) or len(tags), 100):  # MLflow takes at most 100 params per batch
            with_retry(c.log_batch, run_id, params=items[i:i + 100], tags=tags if i == 0 else [])

    def _task_run(self, state: _FlowRuns, run: RunState, task: Task) -> str:
        stage = run.flow.stage(task.stage)
        base = {qnames.RUN_ID: run.run_id, qnames.FLOW: run.flow.name, qnames.STAGE: task.stage,
                qnames.LAKEHOUSE: str(run.config.lakehouse_root), "mlflow.source.name": str(stage.notebook)}
        if task.stage not in state.stages:
            run_id = self._create(state, parent=state.parent, name=task.stage,
                                  tags={**base, qnames.KIND: "stage"})
            self._log_params(state, run_id, run.params[task.stage])
            state.stages[task.stage] = run_id
            state.remaining[task.stage] = len(run.tasks.get(task.stage, [])) or 1
            state.stage_ok[task.stage] = True
        if task.partition is None:
            run_id = state.stages[task.stage]
            with_retry(state.client.set_tag, run_id, qnames.TASK, task.key)
        else:
            run_id = self._create(state, parent=state.stages[task.stage], name=task.partition,
                                  tags={**base, qnames.KIND: "partition", qnames.PARTITION: task.partition,
                                        qnames.TASK: task.key})
            self._log_params(state, run_id, task.parameters)
        state.tasks[task.key] = run_id
        return run_id

    def _finish_task(self, state: _FlowRuns, run: RunState, task: Task, result: TaskResult) -> None:
        from mlflow.entities import Metric, RunTag

        c = state.client
        run_id = state.tasks[task.key]
        ok = result.status in ("succeeded", "cached")
        tags = [RunTag(qnames.STATUS, result.status)]
        tags += [RunTag(f"delta.read.{t}", str(v)) for t, v in sorted(result.read.items())]
        tags += [RunTag(f"delta.write.{t}", str(v)) for t, v in sorted(result.written.items())]
        if result.error is not None:
            tags.append(RunTag("qsdk.error", str(result.error)[:_MAX_TAG]))
        if result.status == "cached":  # not executed: the versions are those of the cached run
            tags.append(RunTag("qsdk.cached_from", str(result.extra.get("cached_from", ""))))
        now = int(time.time() * 1000)
        metrics = [Metric("duration_s", result.duration, now, 0)]
        check_metrics, check_tags = _check_records(result.extra.get("checks", []), now)
        with_retry(c.log_batch, run_id, metrics=metrics + check_metrics, tags=tags + check_tags)
        if result.status != "cached":
            self._log_notebook(c, run_id, Path(result.notebook or task.output_notebook))
        with_retry(c.set_terminated, run_id, status="FINISHED" if ok else "FAILED")
        state.open_runs.discard(run_id)

        stage = task.stage
        state.stage_ok[stage] &= ok
        reads = state.stage_reads.setdefault(stage, {})
        for t, v in result.read.items():
            reads.setdefault(t, set()).add(v)
        writes = state.stage_writes.setdefault(stage, {})
        for t, v in result.written.items():
            writes[t] = max(v, writes.get(t, -1))
        state.remaining[stage] -= 1
        stage_run = state.stages[stage]
        if state.remaining[stage] <= 0 and stage_run != run_id:  # the last partition of a fan-out
            tags = [RunTag(f"delta.read.{t}", ",".join(map(str, sorted(vs)))) for t, vs in sorted(reads.items())]
            tags += [RunTag(f"delta.write.{t}", str(v)) for t, v in sorted(writes.items())]
            tags.append(RunTag(qnames.STATUS, "succeeded" if state.stage_ok[stage] else "failed"))
            with_retry(c.log_batch, stage_run, tags=tags)
            with_retry(c.set_terminated, stage_run, status="FINISHED" if state.stage_ok[stage] else "FAILED")
            state.open_runs.discard(stage_run)

    def warm(self) -> None:
        """Import what logging a finished task needs (nbconvert for the HTML), ahead of need:
        :class:`~qsdk.integrations.tracker.BackgroundTracking` calls it while it waits."""
        if self.html and self._deferred is None and self._exporter is None:
            from nbconvert import HTMLExporter

            self._exporter = HTMLExporter()

    def _log_notebook(self, c: MlflowClient, run_id: str, notebook: Path) -> None:
        if not notebook.is_file():
            return
        with_retry(c.log_artifact, run_id, str(notebook), "notebook")
        if not self.html:
            return
        if self._deferred is not None:
            self._deferred.append((c, run_id, notebook))
            return
        self._log_html(c, run_id, notebook)

    def _log_html(self, c: MlflowClient, run_id: str, notebook: Path) -> None:
        if self._exporter is None:
            from nbconvert import HTMLExporter

            self._exporter = HTMLExporter()
        body, _ = self._exporter.from_filename(str(notebook))
        with tempfile.TemporaryDirectory() as tmp:
            html = Path(tmp) / f"{notebook.stem}.html"
            html.write_text(body, encoding="utf-8")
            with_retry(c.log_artifact, run_id, str(html), "notebook")


# ------------------------------------------------------------------ notebook API

_warned = False


def _check_records(results: list[dict[str, Any]], now: int) -> tuple[list[Any], list[Any]]:
    """Data check results as MLflow metrics (``check.<table>.<check>.failing_rows``) and tags
    (``qsdk.checks``: counts; ``check.<table>.<check>``: ``failed``/``warned`` with the message)."""
    from mlflow.entities import Metric, RunTag

    if not results:
        return [], []
    metrics, tags = [], []
    for r in results:
        key = _metric_key(f"check.{r['table']}.{r['check']}")
        metrics.append(Metric(f"{key}.failing_rows", float(r["failing_rows"]), now, 0))
        if not r["passed"]:
            state = "failed" if r["severity"] == "error" else "warned"
            tags.append(RunTag(key, f"{state}: {r['message']}"[:_MAX_TAG]))
    failed = sum(1 for r in results if not r["passed"] and r["severity"] == "error")
    warned = sum(1 for r in results if not r["passed"] and r["severity"] != "error")
    tags.append(RunTag("qsdk.checks", f"{len(results) - failed - warned} passed, {warned} warned, {failed} failed"))
    return metrics, tags


def _metric_key(text: str) -> str:
    """MLflow allows letters, digits, ``_ - . space /`` in names; the rest becomes ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def _warn(message: str) -> None:
    warnings.warn(f"qsdk: {message}", RuntimeWarning, stacklevel=3)


def _task_target() -> tuple[MlflowClient, str] | None:
    """The client and run id of the running task, or ``None`` (warned once) outside a flow."""
    global _warned
    from qsdk.execution import context as runtime
    from qsdk.execution.tracking_ref import resolve

    ctx = runtime.current()
    tracking = resolve(ctx.tracking) if ctx is not None else {}
    if RUN_ID_KEY in tracking and URI_KEY in tracking:
        return client(tracking[URI_KEY]), tracking[RUN_ID_KEY]
    if not _warned:  # a notice on stderr, not a warning: no caller path, shown once per kernel
        _warned = True
        where = "this stage run is not tracked" if ctx is not None else "not inside a tracked flow run"
        print(f"qsdk: log_metric/log_figure do nothing here ({where}); "
              "they log to MLflow when the notebook runs as a stage (qsdk run FLOW)", file=sys.stderr)
    return None


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Log metric ``name`` to this stage's MLflow run (a no-op, warned once, outside a flow)."""
    target = _task_target()
    if target is None:
        return
    c, run_id = target
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise QsdkError(f"metric {name!r} must be a number, got {value!r}", metric=name) from None
    with_retry(c.log_metric, run_id, name, number, step=step)


def log_figure(fig: Any, name: str) -> None:
    """Log a matplotlib or plotly figure as artifact ``figures/<name>`` of this stage's run.

    Without a suffix, ``name`` gets ``.png`` (matplotlib) or ``.html`` (plotly).
    """
    target = _task_target()
    if target is None:
        return
    c, run_id = target
    if not Path(name).suffix:
        name += ".html" if type(fig).__module__.startswith("plotly") else ".png"
    with_retry(c.log_figure, run_id, fig, f"figures/{name}")
