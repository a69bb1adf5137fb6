"""Lineage from the Delta side: which run and stage wrote a table version, from which inputs.

Every commit a stage makes carries ``qsdk.run_id``, ``qsdk.stage``, ``qsdk.partition``,
``qsdk.inputs`` (``{table: version read}``) and, when tracked, ``qsdk.mlflow_run_id`` in its
Delta commit metadata (see ``qsdk.execution.task._commit``). The MLflow side (``delta.read.*`` /
``delta.write.*`` tags on the stage's run) points the other way.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from qsdk import names as qnames
from qsdk.errors import LakehouseError
from qsdk.lakehouse.tables import Lakehouse


@dataclass(frozen=True)
class Lineage:
    table: str
    version: int
    operation: str | None
    timestamp: str | None
    run_id: str | None  # None: the commit was not made by a qsdk stage
    stage: str | None = None
    partition: str | None = None
    inputs: dict[str, int] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    mlflow_tracking_uri: str | None = None
    rollback: bool = False
    compensates: int | None = None  # a rollback: the version whose rows it put back
    reason: str | None = None  # a rollback: the failure that caused it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        head = f"{self.table} version {self.version} ({self.operation or '?'}, {self.timestamp or '?'})"
        if self.run_id is None:
            return f"{head}\n  not written by a qsdk stage (no qsdk.run_id in its commit metadata)"
        lines = [head]
        what = "rolled back by" if self.rollback else "written by"
        part = f", partition {self.partition}" if self.partition else ""
        lines.append(f"  {what} run {self.run_id}, stage {self.stage}{part}")
        if self.rollback and self.compensates is not None:
            lines.append(f"  undoes version {self.compensates} (only that task's rows)"
                         + (f" after: {self.reason}" if self.reason else ""))
        if self.mlflow_run_id:
            lines.append(f"  MLflow run {self.mlflow_run_id}"
                         + (f" ({self.mlflow_tracking_uri})" if self.mlflow_tracking_uri else ""))
        else:
            lines.append("  MLflow run: none (the run was not tracked)")
        reads = ", ".join(f"{t}@{v}" for t, v in sorted(self.inputs.items()))
        lines.append(f"  inputs: {reads or 'none (reads no lakehouse table)'}")
        return "\n".join(lines)


def table_lineage(lakehouse: Lakehouse, table: str, *, version: int | None = None) -> Lineage:
    """The lineage of ``table`` at ``version`` (default: the latest version)."""
    if version is None:
        version = lakehouse.version(table)
        if version is None:
            raise LakehouseError(f"table {table!r} does not exist yet under {lakehouse.root}", table=table)
    try:
        meta = lakehouse.commit_metadata(table, version)
    except LakehouseError:
        latest = lakehouse.version(table)
        raise LakehouseError(
            f"table {table!r} has no version {version} in its history (latest: {latest}; "
            "older versions may have been vacuumed or checkpointed away)",
            table=table, version=version,
        ) from None
    stamp = meta.get("timestamp")
    when = (dt.datetime.fromtimestamp(stamp / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if isinstance(stamp, int | float) else None)
    return Lineage(
        table=table,
        version=version,
        operation=meta.get("operation"),
        timestamp=when,
        run_id=meta.get(qnames.RUN_ID),
        stage=meta.get(qnames.STAGE),
        partition=meta.get(qnames.PARTITION) or None,
        inputs=_json(meta.get(qnames.INPUTS)) or {},
        mlflow_run_id=meta.get("qsdk.mlflow_run_id"),
        mlflow_tracking_uri=meta.get("qsdk.mlflow_tracking_uri"),
        rollback=_json(meta.get(qnames.ROLLBACK)) is True,
        compensates=_json(meta.get(qnames.COMPENSATES)),
        reason=meta.get(qnames.REASON),
    )


def _json(value: Any) -> Any:
    """Commit metadata values are strings (JSON for anything but a string)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
