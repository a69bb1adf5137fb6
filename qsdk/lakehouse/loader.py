"""What a stage notebook imports: ``DataLoader`` for reads, ``write_table`` for writes.

Inside a stage both enforce the stage's contract (declared tables only, declared schema).
Every read of a table within one stage sees the same Delta version (pinned at first read, or
by the run, e.g. when reproducing), and the version is recorded for lineage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from qsdk import runtime
from qsdk.errors import ContractViolation
from qsdk.lakehouse import staging
from qsdk.lakehouse.contract import TableSpec, conform, validate_table_name
from qsdk.lakehouse.tables import Filters, Lakehouse, WriteMode


@dataclass(frozen=True)
class WriteReceipt:
    table: str
    mode: str
    rows: int
    staged: bool
    version: int | None = None

    def __repr__(self) -> str:
        state = "staged, commits when the stage succeeds" if self.staged else f"version {self.version}"
        return f"<write {self.table} {self.mode} {self.rows} rows: {state}>"


def _lakehouse(context: runtime.StageContext | None) -> Lakehouse:
    if context is not None:
        specs = {n: TableSpec.from_dict(s) for n, s in context.tables.items()}
        return Lakehouse(context.lakehouse_root, specs)
    from qsdk.config import Config
    from qsdk.registry import Registry

    config = Config.load()
    return Lakehouse(config.lakehouse_root, Registry.load(config).tables)


class DataLoader:
    """Read lakehouse tables as pandas (``read``) or Arrow (``read_arrow``).

    Outside a stage (plain JupyterLab) any table may be read; inside one, only declared tables.
    """

    def __init__(self, *, context: runtime.StageContext | None = None) -> None:
        self.context = context or runtime.current()
        self.lakehouse = _lakehouse(self.context)

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
            if version is None:
                version = ctx.pinned_versions.get(table)
            if version is None:
                version = self.lakehouse.version(table)
                ctx.pinned_versions[table] = version  # every later read sees the same snapshot
            if ctx.staging_dir and version is not None:
                staging.record_read(ctx.staging_dir, table, version)
        return self.lakehouse.read(table, columns=columns, filters=filters, version=version)

    def read(self, table: str, **kwargs: Any):
        """Like :meth:`read_arrow`, as a pandas DataFrame."""
        return self.read_arrow(table, **kwargs).to_pandas()

    def version(self, table: str) -> int | None:
        return self.lakehouse.version(table)

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
    version = lakehouse.write(table, conformed, mode=mode, predicate=predicate,
                              metadata={"qsdk.stage": ctx.stage, "qsdk.run_id": ctx.run_id})
    return WriteReceipt(table, mode, conformed.num_rows, staged=False, version=version)
