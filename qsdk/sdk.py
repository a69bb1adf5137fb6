"""``QuantSDK``: the one Python entry point the CLI, the magics and the widgets call."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qsdk import names as qnames
from qsdk.config import DEFAULT_EXECUTOR, Config
from qsdk.errors import ParameterError, QsdkError, SqlAccessDenied
from qsdk.execution.executors import Executor
from qsdk.execution.hooks import Hook
from qsdk.execution.scheduling import RunResult, run_flow
from qsdk.history import RunSummary
from qsdk.lakehouse.loader import DataLoader
from qsdk.lakehouse.stagecontext import StageContext
from qsdk.lakehouse.tables import Lakehouse, TableInfo, WriteMode
from qsdk.model.registry import Problem, Registry
from qsdk.storage import Location

if TYPE_CHECKING:
    from qsdk.graph import FlowGraph
    from qsdk.migrate import ImportReport
    from qsdk.model.flow import Flow


@dataclass(frozen=True)
class Exploration:
    """What :meth:`QuantSDK.explore` activated: the stage, its validated parameters, the context
    and the sandbox its writes go to."""

    stage: str
    parameters: dict[str, Any]
    context: StageContext
    sandbox: Location  # a folder, or s3://.../_sandbox/<user>

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items()) or "(none)"
        return (f"exploring stage {self.stage!r}: reads {', '.join(self.context.allowed_reads) or 'nothing'}; "
                f"writes {', '.join(self.context.outputs) or 'nothing'} to the sandbox {self.sandbox}\n"
                f"parameters: {shown}")


def sql_variables(query: str) -> set[str]:
    """The ``$name`` variables a query uses."""
    return set(re.findall(r"(?<![\w$])\$([A-Za-z_]\w*)", query))


def sql_mentions(query: str, table: str) -> bool:
    """Whether ``query`` names ``table`` as ``layer_name``, ``layer.name`` or ``"layer.name"``."""
    layer, name = table.split(".", 1)
    pattern = rf'(?<![\w"]){layer}_{name}(?!\w)|(?<![\w"]){layer}\s*\.\s*{name}(?!\w)|"{layer}\.{name}"'
    return re.search(pattern, query, flags=re.IGNORECASE) is not None


def _access_denied(exc: Exception) -> SqlAccessDenied:
    text = str(exc).strip()
    detail = text.splitlines()[0] if text else ""
    return SqlAccessDenied(
        "%%qsdk sql sees only the lakehouse tables the query names (as layer_name, layer.name or "
        '"layer.name"): files, COPY, ATTACH/EXPORT to a path, INSTALL/LOAD and settings are off. '
        "Name the table instead of its files; to write, put the frame (-o NAME) through "
        f"qsdk.write_table. DuckDB said: {detail}",
        detail=detail,
    )


SNAPSHOT_OPTION = "snapshot"  # `qsdk run FLOW -p snapshot=NAME` is run_pipeline(..., snapshot=NAME)


class QuantSDK:
    """A qsdk project: its registry, its lakehouse, and running its flows.

    >>> sdk = QuantSDK()                       # the project at or above the current folder
    >>> sdk.run_pipeline("backfill", params={"start": "2010-01-01", "end": "2010-12-31"})
    """

    def __init__(
        self,
        project_root: str | Path | None = None,
        *,
        lakehouse_root: str | Path | None = None,
        runs_dir: str | Path | None = None,
    ) -> None:
        self.config = Config.load(project_root, lakehouse_root=lakehouse_root, runs_dir=runs_dir)

    @cached_property
    def registry(self) -> Registry:
        return Registry.load(self.config)

    @property
    def lakehouse(self) -> Lakehouse:
        return Lakehouse(self.config.lakehouse_root, self.registry.tables)

    def run_pipeline(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        executor: Executor | str = DEFAULT_EXECUTOR,
        ray_address: str | None = None,
        only: Sequence[str] = (),
        from_: Sequence[str] = (),
        hooks: Sequence[Hook] = (),
        snapshot: str | None = None,
        raise_on_failure: bool = True,
        track: bool = True,
        cache: bool = True,
        force: bool | Sequence[str] = False,
    ) -> RunResult:
        """Run flow ``name``; parameters are validated for every stage before anything starts.

        Raises :class:`~qsdk.errors.FlowFailed` when a stage fails, unless
        ``raise_on_failure=False`` (then inspect ``result.status``). ``track``: record the run
        in MLflow (``config.tracking_uri``; ``result.extra["mlflow_run_id"]`` is its run id).
        ``cache``: skip tasks whose code, parameters and inputs are unchanged since their last
        success; ``force``: re-run all stages (``True``) or the named ones regardless.
        ``executor``: ``"local"`` (sequential, in this process) or ``"ray"`` (partitions in
        parallel: on the cluster at ``ray_address`` / ``$RAY_ADDRESS``, else on this project's
        long-lived local Ray head, started by the first run; ``ray_address="embedded"`` or
        ``$QSDK_RAY=embedded``: a throw-away Ray for this run).
        The default is :data:`qsdk.config.DEFAULT_EXECUTOR`, as for every front-end.
        ``snapshot``: after a successful run, freeze the flow's output tables, at the versions
        it wrote, into golden snapshot NAME (:mod:`qsdk.integrations.dvc`); if that fails the
        run's status is ``failed`` and ``result.extra["snapshot"]["error"]`` says why. It is done
        here, after every hook: no hook changes the status or depends on another's order.
        """
        if ray_address is not None and executor != "ray":
            raise ParameterError(f"ray_address= goes with executor='ray', not {executor!r}")
        # Ray is reached (built lazily, at the first task that runs) by address, or else through
        # this project's long-lived head (qsdk.execution.executors.rayhead)
        options = {"address": ray_address, "project_root": self.config.project_root} if executor == "ray" else {}
        flow = self.registry.flow(name).select(only=only, from_=from_)
        from qsdk.integrations import dvc as versioning

        if params and SNAPSHOT_OPTION in params and all(p.name != SNAPSHOT_OPTION for p in flow.parameters()):
            raise ParameterError(f"{SNAPSHOT_OPTION!r} is not a stage parameter but a run option: "
                                 f"run_pipeline(..., snapshot=NAME)", parameter=SNAPSHOT_OPTION)
        if snapshot:
            versioning.SnapshotStore(self.config, self.registry).check_new(snapshot)  # refuse before running
        hooks = list(hooks)
        if track:
            from qsdk.integrations.mlflow import MlflowTracking
            from qsdk.integrations.tracker import BackgroundTracking

            # MLflow in a helper process, beside the run rather than before it (issue 16)
            hooks.append(BackgroundTracking(MlflowTracking(tracking_uri=self.config.tracking_uri)))
        if track or snapshot:
            hooks.append(versioning.VersioningHook())
        result = run_flow(flow, registry=self.registry, config=self.config, params=params,
                          executor=executor, executor_options=options, hooks=hooks, cache=cache, force=force)
        if snapshot:
            self._freeze(result, flow, snapshot)
        if track:
            versioning.tag_flow_run(result)
        return result.raise_for_status() if raise_on_failure else result

    def _freeze(self, result: RunResult, flow: Flow, name: str) -> None:
        """``run_pipeline(snapshot=NAME)``: after a successful run, its outputs into snapshot NAME."""
        from qsdk.execution.scheduling import write_manifest
        from qsdk.integrations import dvc as versioning

        if result.status != "succeeded":
            return
        try:
            result.extra["snapshot"] = versioning.freeze_outputs(self.config, flow, result, name)
        except QsdkError as exc:  # the run's data is fine; the run as asked for is not done
            result.status = "failed"
            result.extra["snapshot"] = {"name": name, "error": str(exc)}
        write_manifest(result)

    def status(self, name: str, *, params: Mapping[str, Any] | None = None) -> list:
        """Per stage and partition of flow ``name``: cached, stale (with reasons) or never run."""
        from qsdk.cache import Cache, flow_status

        flow = self.registry.flow(name)
        cache = Cache(self.lakehouse, project_root=self.config.project_root)
        return flow_status(flow, flow.resolve(params), cache=cache)

    def check(self) -> list[Problem]:
        """Every problem of the registry and its stage notebooks (empty: all of it loads).

        Loading already validates each notebook's parameters cell, registry defaults and
        partitioning; a broken entry is kept as a :class:`~qsdk.model.registry.Problem` instead of
        failing the load, and this lists them all at once. Then every stage notebook is checked
        statically (:mod:`qsdk.migrate.check`): direct file I/O, imports from other scripts,
        ``sys.path`` changes, a jupytext pair out of step; each is a problem of kind ``notebook``.
        """
        from qsdk.migrate.check import check_stage_notebooks

        registry = self.registry
        return [*registry.problems,
                *check_stage_notebooks(list(registry.stages.values()), project_root=self.config.project_root)]

    def import_script(self, script: str | Path, *, stage: str, flow: str | None = None,
                      registry_file: str | Path | None = None, layer: str = "silver",
                      script_cwd: str | Path | None = None, pair: bool = False) -> ImportReport:
        """Turn a legacy script into stage ``stage`` of this project (:func:`qsdk.migrate.import_script`):
        a notebook, its parameters, a registry entry with the tables its files become, and
        ``dvc.yaml`` re-synced. The script is read with ``ast``, never run."""
        from qsdk.migrate import import_script

        report = import_script(script, project_root=self.config.project_root, stage=stage, flow=flow,
                               registry_file=registry_file, layer=layer, script_cwd=script_cwd, pair=pair)
        self.__dict__.pop("registry", None)  # the registry changed on disk
        return report

    def graph(self, name: str, *, params: Mapping[str, Any] | None = None, run_id: str | None = None,
              states: bool = True) -> FlowGraph:
        """Flow ``name`` as a laid-out graph of stages and tables (:mod:`qsdk.graph`).

        Stages are coloured by what ``qsdk status`` says for ``params`` (cached, stale, never
        run), or by how run ``run_id`` went; ``states=False`` leaves them uncoloured. A broken
        flow is drawn too, its broken stages marked ``broken`` with their error.
        """
        from qsdk import graph as G

        broken = self.registry.problem("flow", name)
        if broken is not None:
            return G.layout(self._broken_graph(broken))
        flow = self.registry.flow(name)
        stages = [(s.name, s.inputs, s.outputs) for s in flow.stages]
        if run_id is not None:
            from qsdk.history import run_record

            record = run_record(self.config.runs_dir, run_id)
            if record.get("flow") != name:
                raise ParameterError(f"run {run_id} is a run of flow {record.get('flow')!r}, not {name!r}")
            found = G.states_from_run(record)
        else:
            found = G.states_from_status(self.status(name, params=params)) if states else ({}, {}, {})
        state, counts, details = found
        return G.layout(G.flow_graph(stages, flow=name, states=state, partitions=counts, details=details))

    def _broken_graph(self, broken: Problem) -> FlowGraph:
        from qsdk import graph as G

        stages, states, details = [], {}, {}
        for stage in broken.stages:
            problem = self.registry.problem("stage", stage)
            if problem is not None:
                stages.append((stage, problem.inputs, problem.outputs))
                states[stage], details[stage] = "broken", problem.message
            elif stage in self.registry.stages:
                s = self.registry.stages[stage]
                stages.append((stage, s.inputs, s.outputs))
        return G.flow_graph(stages, flow=broken.name, states=states, details=details)

    def runs(self, *, flow: str | None = None, limit: int | None = 20) -> list[RunSummary]:
        """The last ``limit`` runs (of ``flow``), newest first, from ``runs/<run_id>/run.json``."""
        from qsdk.history import list_runs

        return list_runs(self.config.runs_dir, limit=limit, flow=flow)

    def tables(self) -> list[TableInfo]:
        lake = self.lakehouse
        names = sorted(set(self.registry.tables) | set(lake.list_tables()))
        return [lake.info(n) for n in names]

    def check_results(self, table: str | None = None) -> list[dict[str, Any]]:
        """The latest result of every data check (of ``table``), from the ``qsdk.checks`` table."""
        from qsdk.lakehouse import check_results

        if table is not None:
            self.registry.table(table)  # an unknown name gets the registry's "did you mean"
        declared = {(name, c.name) for name, spec in self.registry.tables.items() for c in spec.checks}
        rows = check_results.latest(self.config.lakehouse_root, table).to_pylist()
        return [r for r in rows if (r["table"], r["check"]) in declared]  # not checks since removed

    def run_checks(self, table: str) -> list[Any]:
        """Evaluate ``table``'s declared checks against the table as it is now (e.g. after
        changing a check); the results are recorded in ``qsdk.checks`` with source ``manual``.
        A row-count change has no replaced slice here and passes."""
        from qsdk.execution.scheduling import new_run_id
        from qsdk.lakehouse import check_results, checks

        spec = self.registry.table(table)
        lake = self.lakehouse
        if not lake.exists(table):
            raise ParameterError(f"table {table!r} does not exist under {lake.root}: run the stage that writes it",
                                 table=table)
        version = lake.version(table)
        results = checks.evaluate(table, spec.checks, lake.read(table, version=version), spec.columns,
                                  table_version=version)
        check_results.record(lake.root, results, run_id=f"manual-{new_run_id()}", stage="<qsdk checks>",
                      partition=None, source="manual")
        return results

    def restore(self, table: str, *, version: int, reason: str | None = None) -> int:
        """Make ``table`` hold again what it held at ``version``; return the new version.

        A Delta RESTORE: a new version, the history kept (so it can itself be undone). Its
        commit metadata says who restored (``qsdk.restored_by``, the sandbox user name) and why
        (``qsdk.restore_reason``). The undo of a commit a notebook made around qsdk (the stage
        failure names this call); it rewinds the whole table, later commits included.
        """
        from qsdk.lakehouse.sandbox import user_name

        lake = self.lakehouse
        current = lake.version(table)
        if current is None:
            raise ParameterError(f"table {table!r} does not exist under {lake.root}: nothing to restore",
                                 table=table)
        if not 0 <= version <= current:
            raise ParameterError(f"table {table!r} has versions 0 to {current}; restore to one of them "
                                 f"(got {version})", table=table, version=version)
        if version == current:
            return current
        metadata = {qnames.OPERATION: "restore", "qsdk.restored_to": version,
                    "qsdk.restored_by": user_name(), "qsdk.restore_reason": reason or "qsdk restore"}
        return lake.restore(table, version, metadata=metadata)

    def promote(self, table: str, *, mode: WriteMode = "append", predicate: str | None = None,
                version: int | None = None, user: str | None = None) -> int:
        """Copy the sandbox table ``table`` into production through its registry contract and
        checks (:func:`qsdk.lakehouse.sandbox.promote`); the production version written."""
        from qsdk.lakehouse import sandbox

        return sandbox.promote(table, lakehouse_root=self.config.lakehouse_root, specs=self.registry.tables,
                               mode=mode, predicate=predicate, version=version, user=user)

    def explore(self, stage: str, params: Mapping[str, Any] | None = None, *,
                user: str | None = None) -> Exploration:
        """Explore as stage ``stage`` in this process (``%qsdk stage NAME -p ...``).

        ``params`` are validated with the code a run uses (``Stage.resolve``); then a stage
        context marked interactive is activated: ``DataLoader`` reads only the stage's declared
        tables, and ``write_table`` commits at once to ``user``'s sandbox
        (:mod:`qsdk.lakehouse.sandbox`), never to production. Outputs already in the sandbox are
        read from there, so the session sees its own writes. :meth:`unexplore` leaves it.
        """
        from qsdk.execution import context as runtime
        from qsdk.lakehouse import sandbox

        spec = self.registry.stage(stage)
        values = spec.resolve(dict(params or {}))  # the same validation as a run
        who = sandbox.user_name(user)
        root = sandbox.sandbox_root(self.config.lakehouse_root, who)
        mine = Lakehouse(root)
        context = runtime.new_context(
            self.registry, run_id=f"interactive-{who}", stage=spec.name, lakehouse_root=str(self.config.lakehouse_root),
            inputs=spec.inputs, outputs=spec.outputs, staging_dir=None,
            read_roots={t: str(root) for t in spec.outputs if mine.exists(t)},
            extra={"interactive": True, "sandbox": str(root), "user": who},
        )
        runtime.activate(context)
        return Exploration(stage=spec.name, parameters=values, context=context, sandbox=root)

    @staticmethod
    def unexplore() -> str | None:
        """Leave the stage :meth:`explore` entered (reads are unrestricted again); its name."""
        from qsdk.execution import context as runtime

        ctx = runtime.current()
        runtime.activate(None)
        return ctx.stage if ctx is not None else None

    def sql(self, query: str, params: Mapping[str, Any] | None = None) -> Any:
        """Run ``query`` with DuckDB over the lakehouse tables it names; a pandas frame.

        A table ``layer.name`` is visible as ``layer_name``, ``layer.name`` and ``"layer.name"``;
        ``$name`` is bound to ``params[name]`` (a missing one is a :class:`ParameterError`). The
        tables are read through :class:`DataLoader` (the active stage's contract applies) and
        registered; then DuckDB's external access is switched off and its configuration locked,
        so the query sees exactly those tables: file functions (``read_parquet``, ``glob``, ...),
        ``COPY``, ``ATTACH``/``EXPORT`` to a path and ``INSTALL``/``LOAD`` are refused with
        :class:`~qsdk.errors.SqlAccessDenied`.
        """
        import duckdb

        loader = DataLoader(lakehouse_root=self.config.lakehouse_root)  # in a stage: the stage's
        known = set(self.registry.tables) | set(loader.lakehouse.list_tables())
        names = sql_variables(query)
        values = dict(params or {})
        missing = sorted(n for n in names if n not in values)
        if missing:
            raise ParameterError(f"SQL uses ${', $'.join(missing)} but no such variable is defined",
                                 parameter=missing[0])
        bound = {n: values[n] for n in names}
        con = duckdb.connect()
        try:
            for table in sorted(t for t in known if sql_mentions(query, t)):
                data = loader.read_arrow(table)  # the active stage's contract applies here too
                layer, name = table.split(".", 1)
                flat = f"{layer}_{name}"
                con.register(flat, data)
                con.register(table, data)  # "layer.name"
                con.execute(f'CREATE SCHEMA IF NOT EXISTS "{layer}"')
                con.execute(f'CREATE OR REPLACE VIEW "{layer}"."{name}" AS SELECT * FROM "{flat}"')
            con.execute("SET enable_external_access = false")  # no files, extensions, Python scans
            con.execute("SET lock_configuration = true")  # ... and no SET to turn it back on
            try:
                return (con.execute(query, bound) if bound else con.execute(query)).df()
            except (duckdb.PermissionException, duckdb.InvalidInputException) as exc:
                if isinstance(exc, duckdb.InvalidInputException) and "configuration has been locked" not in str(exc):
                    raise
                raise _access_denied(exc) from exc
        finally:
            con.close()

    def loader(self) -> DataLoader:
        """An unrestricted reader over the whole lakehouse (exploration, not stages)."""
        from qsdk.execution.context import new_context

        ctx = new_context(self.registry, run_id="interactive", stage="<explore>",
                          lakehouse_root=str(self.config.lakehouse_root), inputs=list(self.registry.tables), outputs=[])
        return DataLoader(context=ctx)


def promote(table: str, *, mode: WriteMode = "append", predicate: str | None = None,
            version: int | None = None, user: str | None = None) -> int:
    """``qsdk.promote(table)``: :meth:`QuantSDK.promote` for the project at or above the current folder."""
    return QuantSDK().promote(table, mode=mode, predicate=predicate, version=version, user=user)
