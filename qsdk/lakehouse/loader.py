"""What a stage notebook imports: ``DataLoader`` for reads, ``write_table`` for writes.

Inside a stage both enforce the stage's contract (declared tables only, declared schema).
Every read of a table within one stage sees the same Delta version (pinned at first read, or
by the run, e.g. when reproducing), and the version is recorded for lineage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qsdk import names as qnames
from qsdk.errors import ContractViolation
from qsdk.lakehouse import stagecontext as runtime
from qsdk.lakehouse import staging
from qsdk.lakehouse.contract import TableSpec, conform, validate_table_name
from qsdk.lakehouse.featureviews import FeatureView, resolve
from qsdk.lakehouse.tables import Filters, Lakehouse, WriteMode
from qsdk.lazyimport import lazy_module
from qsdk.storage import ObjectPath

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")


@dataclass(frozen=True)
class WriteReceipt:
    table: str
    mode: str
    rows: int
    staged: bool
    version: int | None = None
    sandbox: str | None = None  # the sandbox root an interactive session wrote to

    def __repr__(self) -> str:
        state = "staged, commits when the stage succeeds" if self.staged else f"version {self.version}"
        if self.sandbox:
            state = f"sandbox version {self.version} in {self.sandbox}; qsdk.promote({self.table!r}) to publish"
        return f"<write {self.table} {self.mode} {self.rows} rows: {state}>"


def _lakehouse(context: runtime.StageContext | None, root: str | Path | ObjectPath | None = None) -> Lakehouse:
    """The stage's lakehouse with its tables' contracts; without a stage, the lakehouse at
    ``root`` (default: the project's) for reading (reads need no contract; writes need a stage)."""
    if context is not None:
        specs = {n: TableSpec.from_dict(s) for n, s in context.tables.items()}
        return Lakehouse(context.lakehouse_root, specs)
    if root is None:
        from qsdk.config import Config

        root = Config.load().lakehouse_root
    return Lakehouse(root)


class DataLoader:
    """Read lakehouse tables as pandas (``read``) or Arrow (``read_arrow``).

    Outside a stage (plain JupyterLab) any table may be read; inside one, only declared tables.
    Everything it knows of the project comes from the stage context (contracts, feature views):
    it never loads the registry. ``QuantSDK().loader()`` gives one over the whole lakehouse
    with the registry's feature views.
    """

    def __init__(self, *, context: runtime.StageContext | None = None,
                 lakehouse_root: str | Path | ObjectPath | None = None) -> None:
        """``context``: default, the active stage's; ``lakehouse_root``: where to read when no
        stage is active (default: the project's lakehouse)."""
        self.context = context or runtime.current()
        self.lakehouse = _lakehouse(self.context, lakehouse_root)

    def read_arrow(
        self,
        table: str,
        *,
        columns: Sequence[str] | None = None,
        filters: Filters = None,
        version: int | None = None,
    ) -> pa.Table:
        validate_table_name(table)
        ctx = self.context
        if ctx is not None:
            if table not in ctx.allowed_reads:
                raise ContractViolation(
                    f"stage {ctx.stage!r} read undeclared table {table!r}: add it to the stage's "
                    f"inputs: in pipelines/ (declared: {', '.join(ctx.allowed_reads) or 'none'})",
                    stage=ctx.stage,
                    table=table,
                )
            lakehouse = self._lakehouse_for(table)
            if version is None:
                version = ctx.pinned_versions.get(table)
            if version is None:
                version = lakehouse.latest_version(table)
                ctx.pinned_versions[table] = version  # every later read sees the same snapshot
            data = lakehouse.read(table, columns=columns, filters=filters, version=version)
            if ctx.staging_dir and version is not None:
                from qsdk.cache import fingerprint

                staging.record_read(ctx.staging_dir, table, version, columns=list(columns) if columns else None,
                                    filters=list(filters) if filters else None, fingerprint=fingerprint(data))
            return data
        return self.lakehouse.read(table, columns=columns, filters=filters, version=version)

    def _lakehouse_for(self, table: str) -> Lakehouse:
        """Where ``table`` is read from: the stage's lakehouse, or a root in ``read_roots``."""
        root = self.context.read_roots.get(table) if self.context else None
        return self.lakehouse if root is None else Lakehouse(root, self.lakehouse.specs)

    def read(self, table: str, **kwargs: Any) -> Any:
        """Like :meth:`read_arrow`, as a pandas DataFrame."""
        return self.read_arrow(table, **kwargs).to_pandas()

    def _feature_views(self) -> dict[str, FeatureView]:
        if self.context is None:
            raise ContractViolation(
                "training_set outside a stage has no feature views: use QuantSDK().loader().training_set"
                "(...) (it carries the registry's views), or pass views=QuantSDK().registry.features"
            )
        return {n: FeatureView.from_dict(d) for n, d in self.context.features.items()}

    def training_set(self, entity_df: Any, features: Sequence[str] | str, *, timestamp: str = "timestamp",
                     views: Any = None) -> Any:
        """``entity_df`` plus the requested features, joined point in time.

        ``features``: feature view names (every feature of the view) or ``"view:feature"``
        references, declared under ``features:`` in ``pipelines/``. For each row (entity,
        ``timestamp``) each feature is the latest value with event time and known time at or
        before ``timestamp`` (within the view's ttl); never a value known later; missing where
        there is none. Reads only the views' tables, through the stage's contract (each must be
        a declared input), and only the rows and columns the join can use. The returned
        ``timestamp`` column is in UTC (tz-naive input is taken as UTC).
        ``views``: a ``{name: FeatureView}`` mapping instead of the stage context's views
        (needed outside a stage, unless the loader came from ``QuantSDK().loader()``).
        """
        import pandas as pd

        from qsdk.quant.pit import point_in_time_join

        views = self._feature_views() if views is None else views
        plan = resolve(features, views)
        needed = sorted({timestamp, *(view.entity for view, _ in plan)})
        missing = [c for c in needed if c not in entity_df.columns]
        if missing:
            raise ContractViolation(
                f"training_set: entity_df lacks column(s) {missing}; it needs the views' entity column(s) "
                f"and the time column {timestamp!r} (name another one with timestamp=)"
            )
        times = pd.to_datetime(entity_df[timestamp])  # tz-naive times are taken as UTC
        times = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
        out = entity_df.assign(**{timestamp: times})
        for view, names in plan:
            filters: list[tuple[str, str, Any]] = []
            if times.notna().any():  # ISO strings: the read is logged as JSON (lineage, cache)
                latest = times.max().isoformat()
                filters += [(view.event_time, "<=", latest), (view.known_time, "<=", latest)]
                if view.ttl is not None:
                    filters.append((view.event_time, ">=", (times.min() - view.ttl).isoformat()))
            data = self.read(view.table, columns=view.columns(names), filters=filters or None)
            out = point_in_time_join(out, data, entity=view.entity, timestamp=timestamp,
                                     event_time=view.event_time, known_time=view.known_time,
                                     ttl=view.ttl, features=names)
        return out

    def version(self, table: str) -> int | None:
        return self._lakehouse_for(table).version(table)

    def tables(self) -> list[str]:
        return self.context.allowed_reads if self.context else self.lakehouse.list_tables()


def between(column: str, start: Any, end: Any) -> str:
    """A Delta predicate ``column >= start AND column <= end`` for a partition overwrite.

    ``start``/``end`` must be dates (or ISO date strings); the column name must be a plain
    identifier. Built here so that notebooks never format SQL by hand.
    """
    import datetime as _dt
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column):
        raise ContractViolation(f"{column!r} is not a plain column name")
    lo, hi = (_dt.date.fromisoformat(str(v)[:10]).isoformat() for v in (start, end))
    return f"{column} >= '{lo}' AND {column} <= '{hi}'"


def write_table(
    table: str,
    data: Any,
    *,
    mode: WriteMode = "append",
    predicate: str | None = None,
) -> WriteReceipt:
    """Write ``data`` to a declared output table.

    ``mode``: ``"append"`` (refuses keys that already exist), ``"overwrite"`` (the whole table,
    or with ``predicate`` only the matching rows: a partition overwrite) or ``"merge"``
    (upsert on the primary key). Inside a stage the data is checked now and committed when
    the notebook has finished successfully.
    """
    validate_table_name(table)
    ctx = runtime.current()
    if ctx is None:
        raise ContractViolation(
            f"write to {table!r} outside a stage: writes happen in a stage run (qsdk run FLOW), "
            "or after `%qsdk stage NAME` in a notebook",
            table=table,
        )
    if table not in ctx.outputs:
        raise ContractViolation(
            f"stage {ctx.stage!r} wrote undeclared table {table!r}: add it to the stage's outputs: "
            f"in pipelines/ (declared outputs: {', '.join(ctx.outputs) or 'none'})",
            stage=ctx.stage,
            table=table,
        )
    lakehouse = _lakehouse(ctx)
    conformed = conform(data, lakehouse.spec(table))
    if mode not in ("append", "overwrite", "merge"):
        raise ContractViolation(f"unknown write mode {mode!r}; use 'append', 'overwrite' or 'merge'")
    if ctx.staging_dir:
        staging.stage_write(ctx.staging_dir, table, conformed, mode=mode, predicate=predicate)
        return WriteReceipt(table, mode, conformed.num_rows, staged=True)
    if ctx.extra.get("interactive"):  # exploration writes to the user's sandbox, never to production
        from qsdk.lakehouse.sandbox import write_interactive

        version = write_interactive(ctx, table, conformed, mode=mode, predicate=predicate)
        return WriteReceipt(table, mode, conformed.num_rows, staged=False, version=version,
                            sandbox=ctx.read_roots[table])
    version = lakehouse.write(table, conformed, mode=mode, predicate=predicate,
                              metadata={qnames.STAGE: ctx.stage, qnames.RUN_ID: ctx.run_id})
    return WriteReceipt(table, mode, conformed.num_rows, staged=False, version=version)
