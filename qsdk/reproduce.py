"""Reproduce a tracked run and check that its outputs come out identical.

Given a flow, stage or partition run (a qsdk run id, ``RUN_ID:STAGE[:PARTITION]`` or an MLflow
run id), :func:`reproduce`:

1. reads what the run recorded: its stages, their exact parameters (``qsdk.params`` tags) and
   the Delta versions each task read and wrote (``delta.read.*`` / ``delta.write.*`` tags);
2. runs the same stages again with the project's *current* notebooks, in a fresh lakehouse
   ``<original lakehouse>/../lakehouse-repro/<new run id>``. Inputs that come from outside the
   reproduced stages are read from the original lakehouse at their recorded versions
   (``read_roots`` + ``pinned_versions`` of :func:`~qsdk.execution.scheduling.run_flow`); tables the stages
   write start from the original's state just before the run first wrote them (a snapshot
   copied in), so overwrites, merges and appends act on the same rows as the first time;
3. compares every output table with the original at the last version the run wrote:
   sorted rows, exact equality.

Assumes no other run committed to an output table between the run's first and last commit to
it (the pre-run snapshot would then include or miss those rows).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pyarrow as pa

from qsdk import names as qnames
from qsdk import storage
from qsdk.config import DEFAULT_EXECUTOR, Config
from qsdk.errors import QsdkError, UnknownNameError
from qsdk.execution.executors import Executor
from qsdk.execution.hooks import Hook
from qsdk.execution.scheduling import RunResult, new_run_id, run_flow
from qsdk.lakehouse.tables import Lakehouse
from qsdk.model.registry import Registry

Kind = Literal["flow", "stage", "partition"]
_KINDS: dict[str, Kind] = {"flow": "flow", "stage": "stage", "partition": "partition"}
REPRO_DIR = "lakehouse-repro"


@dataclass(frozen=True)
class TableCheck:
    table: str
    original_version: int
    identical: bool
    original_rows: int
    reproduced_rows: int
    detail: str = ""


@dataclass
class Recorded:
    """What a tracked run recorded, as far as reproducing it needs."""

    mlflow_run_id: str
    kind: Kind
    run_id: str
    flow: str
    stages: list[str]
    params: dict[str, dict[str, Any]]
    lakehouse: storage.Location  # a folder or s3://bucket/prefix
    reads: dict[str, set[int]] = field(default_factory=dict)
    writes: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class ReproduceReport:
    recorded: Recorded
    pinned_versions: dict[str, int]
    lakehouse: str
    result: RunResult
    tables: list[TableCheck]

    @property
    def identical(self) -> bool:
        return self.result.status == "succeeded" and all(t.identical for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        rec = self.recorded
        return {
            "mlflow_run_id": rec.mlflow_run_id,
            "kind": rec.kind,
            "original_run_id": rec.run_id,
            "flow": rec.flow,
            "stages": rec.stages,
            "parameters": rec.params,
            "original_lakehouse": str(rec.lakehouse),
            "pinned_versions": self.pinned_versions,
            "lakehouse": self.lakehouse,
            "run_id": self.result.run_id,
            "status": self.result.status,
            "mlflow_reproduction_run_id": self.result.extra.get("mlflow_run_id"),
            "identical": self.identical,
            "tables": [t.__dict__ for t in self.tables],
        }

    def describe(self) -> str:
        rec = self.recorded
        what = {"flow": f"flow {rec.flow}", "stage": f"stage {rec.stages[0]}",
                "partition": f"stage {rec.stages[0]} partition"}[rec.kind]
        pins = ", ".join(f"{t}@{v}" for t, v in sorted(self.pinned_versions.items())) or "none"
        lines = [f"reproduced {what} of run {rec.run_id} (MLflow {rec.mlflow_run_id}) as run "
                 f"{self.result.run_id} in {self.lakehouse}",
                 f"  inputs pinned: {pins}"]
        if self.result.status != "succeeded":
            lines.append(f"  the reproduction failed: {self.result.failures[0].error if self.result.failures else '?'}")
        for t in self.tables:
            state = "identical" if t.identical else "DIFFERENT"
            lines.append(f"  {t.table:<28} {state:<10} (original version {t.original_version}, "
                         f"{t.original_rows} rows; reproduced {t.reproduced_rows} rows)"
                         + (f": {t.detail}" if t.detail else ""))
        return "\n".join(lines)


def reproduce(
    ref: str,
    *,
    config: Config,
    registry: Registry | None = None,
    executor: Executor | str = DEFAULT_EXECUTOR,
    hooks: Sequence[Hook] = (),
    track: bool = True,
) -> ReproduceReport:
    """Re-run a tracked flow/stage/partition run against its recorded input versions and compare.

    ``ref``: any id a user sees (:func:`mlflow_run_of`): a qsdk run id, ``RUN_ID:STAGE``,
    ``RUN_ID:STAGE:PARTITION``, or an MLflow run id. The run is looked up in
    ``config.tracking_uri``; the current project's registry and notebooks are what runs (so an
    edited notebook shows up as a difference).
    """
    from qsdk.integrations.mlflow import MlflowTracking

    mlflow_run_id = mlflow_run_of(ref, tracking_uri=config.tracking_uri)
    rec = recorded(mlflow_run_id, tracking_uri=config.tracking_uri)
    registry = registry or Registry.load(config)
    # the recorded parameters are per stage and already expanded: a flow-level binding such as
    # daily's `date` (required on the command line) has nothing left to do
    flow = replace(registry.flow(rec.flow).select(only=rec.stages), bindings=())
    outputs = [t for s in flow.stages for t in s.outputs]
    external = sorted({t for s in flow.stages for t in s.inputs} - set(outputs))
    pins: dict[str, int] = {}
    for table in external:
        versions = rec.reads.get(table, set())
        if len(versions) > 1:
            raise QsdkError(
                f"the tasks of run {rec.run_id} read {table} at different versions {sorted(versions)}; "
                "reproduce each partition run on its own",
                table=table,
            )
        if versions:
            pins[table] = next(iter(versions))
    unrecorded = [t for t in outputs if t not in rec.writes]
    if unrecorded:
        raise QsdkError(f"MLflow run {mlflow_run_id} recorded no Delta version written for {unrecorded}; "
                        "it cannot be compared", missing=unrecorded)

    run_id = new_run_id()
    root = rec.lakehouse.parent / REPRO_DIR / run_id
    original = Lakehouse(rec.lakehouse, registry.tables)
    repro = Lakehouse(root, registry.tables)
    for table in outputs:  # start from the state the original run started from
        before = min(rec.writes[table]) - 1
        if before >= 0:
            repro.write(table, original.read(table, version=before), mode="overwrite",
                        metadata={"qsdk.seeded_from": f"{original.root}@{before}"})

    hook_list = list(hooks)
    if track:
        hook_list.append(MlflowTracking(tracking_uri=config.tracking_uri,
                                        tags={"qsdk.reproduces": mlflow_run_id, "qsdk.reproduces_run": rec.run_id}))
    result = run_flow(
        flow, registry=registry, config=config.with_lakehouse(root),
        params={f"{s}.{k}": v for s, values in rec.params.items() for k, v in values.items()},
        executor=executor, hooks=hook_list, run_id=run_id,
        pinned_versions=pins, read_roots={t: str(original.root) for t in external},
        cache=False,  # a reproduction executes every notebook
    )
    checks: list[TableCheck] = []
    if result.status == "succeeded":
        for table in outputs:
            version = max(rec.writes[table])
            a, b = original.read(table, version=version), repro.read(table)
            detail = compare_tables(a, b)
            checks.append(TableCheck(table, version, detail is None, a.num_rows, b.num_rows, detail or ""))
    return ReproduceReport(rec, pins, str(root), result, checks)


def compare_tables(a: pa.Table, b: pa.Table) -> str | None:
    """``None`` if ``a`` and ``b`` hold the same rows (in any order), else what differs."""
    if a.schema.names != b.schema.names:
        return f"columns differ: {a.schema.names} vs {b.schema.names}"
    if a.num_rows != b.num_rows:
        return f"{a.num_rows} rows originally, {b.num_rows} reproduced"
    if not a.schema.equals(b.schema):
        try:
            b = b.cast(a.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            return f"column types differ: {exc}"
    da, db = _canonical(a), _canonical(b)
    if da.equals(db):
        return None
    unequal = da.ne(db) & ~(da.isna() & db.isna())
    rows = int(unequal.any(axis=1).sum())
    cols = [c for c in da.columns if unequal[c].any()]
    return f"{rows} of {a.num_rows} rows differ (columns: {', '.join(cols) or '?'})"


def _canonical(table: pa.Table):
    df = table.to_pandas()
    return df.sort_values(list(df.columns), kind="mergesort", na_position="last").reset_index(drop=True)


# ------------------------------------------------------------------ reading the record

MLFLOW_ID = re.compile(r"^[0-9a-f]{32}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.-]+$")  # what may go into an MLflow filter string unquoted


def mlflow_run_of(ref: str, *, tracking_uri: str) -> str:
    """The MLflow run id that ``ref`` names.

    ``ref`` is an MLflow run id (32 hex digits), or a qsdk run id as ``qsdk run`` prints it and
    ``qsdk runs`` lists it (its flow run), optionally ``:STAGE`` (that stage's run, every
    partition) and ``:PARTITION`` (one partition, as ``qsdk status`` names them).
    """
    ref = ref.strip()
    if MLFLOW_ID.match(ref):
        return ref
    run_id, _, rest = ref.partition(":")
    stage, _, partition = rest.partition(":")
    from qsdk.integrations import mlflow as tracking

    c = tracking.client(tracking_uri)
    runs = _search_all(c, f"tags.`qsdk.run_id` = '{run_id}'") if _TOKEN.match(run_id) else []
    if not runs:
        raise UnknownNameError(
            f"no tracked run {ref!r} in {tracking_uri}: pass a qsdk run id (`qsdk runs` lists them), "
            "RUN_ID:STAGE[:PARTITION], or an MLflow run id; a run made with --no-track, or in which "
            "every task was cached, recorded nothing to reproduce")
    if not stage:
        return _one(runs, ref, "flow", "its flow run")
    stage_runs = [r for r in runs if r.data.tags.get(qnames.STAGE) == stage]
    if not stage_runs:
        known = sorted({r.data.tags[qnames.STAGE] for r in runs if qnames.STAGE in r.data.tags})
        raise UnknownNameError(f"run {run_id} has no tracked stage {stage!r}; its stages: "
                               f"{', '.join(known) or '(none ran)'}", known=known)
    if not partition:
        return _one(stage_runs, ref, "stage", "the stage run")
    parts = [r for r in stage_runs if r.data.tags.get(qnames.KIND) == "partition"]
    known = sorted(r.data.tags.get(qnames.PARTITION, "") for r in parts)
    match = [r for r in parts if r.data.tags.get(qnames.PARTITION) == partition]
    if not match:
        raise UnknownNameError(f"stage {stage!r} of run {run_id} has no tracked partition {partition!r}; "
                               f"its partitions: {', '.join(known) or '(not partitioned)'}", known=known)
    return match[0].info.run_id


def _one(runs: list[Any], ref: str, kind: str, what: str) -> str:
    found = [r for r in runs if r.data.tags.get(qnames.KIND) == kind]
    if not found:
        raise UnknownNameError(f"{ref!r}: {what} is not in the tracking store")
    return found[0].info.run_id


def _search_all(c: Any, filter_string: str) -> list[Any]:
    """Runs matching ``filter_string`` in every experiment (a qsdk run id does not name its flow)."""
    experiments = [e.experiment_id for e in c.search_experiments(max_results=1000)]
    out: list[Any] = []
    for i in range(0, len(experiments), 100):
        token = None
        while True:
            page = c.search_runs(experiments[i:i + 100], filter_string=filter_string, max_results=1000,
                                 page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                break
    return out



def recorded(mlflow_run_id: str, *, tracking_uri: str) -> Recorded:
    """What MLflow run ``mlflow_run_id`` (a qsdk flow, stage or partition run) recorded."""
    from mlflow.exceptions import MlflowException

    from qsdk.integrations import mlflow as tracking

    c = tracking.client(tracking_uri)
    try:
        run = c.get_run(mlflow_run_id)
    except MlflowException:
        raise UnknownNameError(
            f"no MLflow run {mlflow_run_id!r} in {tracking_uri}: pass the run id of a qsdk flow, stage "
            "or partition run (browse them with `make mlflow-ui`, or see `qsdk run --json`)",
        ) from None
    tags = run.data.tags
    kind = _KINDS.get(tags.get(qnames.KIND, ""))
    if kind is None:
        raise QsdkError(f"MLflow run {mlflow_run_id} was not recorded by a qsdk flow run (no qsdk.kind tag)")
    if run.info.status != "FINISHED":
        raise QsdkError(f"MLflow run {mlflow_run_id} ended {run.info.status}: only a run that succeeded "
                        "can be reproduced and compared")
    run_id, flow = tags[qnames.RUN_ID], tags[qnames.FLOW]
    if kind == "partition":
        task_runs = [run]
    else:
        task_runs = [r for r in _runs_of(c, run.info.experiment_id, run_id)
                     if qnames.TASK in r.data.tags and (kind == "flow" or r.data.tags.get(qnames.STAGE) == tags[qnames.STAGE])]
    if kind == "flow":
        stage_runs = {r.data.tags[qnames.STAGE]: r for r in _runs_of(c, run.info.experiment_id, run_id)
                      if r.data.tags.get(qnames.KIND) == "stage"}
        stages = [s for s in json.loads(tags[qnames.STAGES]) if s in stage_runs]
        params = {s: tracking.params_of(c, stage_runs[s]) for s in stages}
    else:
        stages = [tags[qnames.STAGE]]
        params = {stages[0]: tracking.params_of(c, run)}
    rec = Recorded(mlflow_run_id, kind, run_id, flow, stages, params, storage.location(tags[qnames.LAKEHOUSE]))
    for r in task_runs:
        for key, value in r.data.tags.items():
            if key.startswith("delta.read."):
                rec.reads.setdefault(key.removeprefix("delta.read."), set()).add(int(value))
            elif key.startswith("delta.write."):
                rec.writes.setdefault(key.removeprefix("delta.write."), []).append(int(value))
    return rec


def _runs_of(c: Any, experiment_id: str, run_id: str) -> list[Any]:
    """Every MLflow run of qsdk run ``run_id`` (flow, stage and partition runs)."""
    out: list[Any] = []
    token = None
    while True:
        page = c.search_runs([experiment_id], filter_string=f"tags.`qsdk.run_id` = '{run_id}'",
                             max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out
