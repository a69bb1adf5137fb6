"""Data check results as data: the ``qsdk.checks`` Delta table (one row per check and write),
and the standing result of each check (:func:`latest`). Apart from :mod:`qsdk.lakehouse.checks`
so that the check engine, which the contract parses with, needs neither the tables nor the
contract back."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qsdk.lakehouse.checks import CHECKS_TABLE, CheckResult, _arrow, _connect
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.tables import Lakehouse
from qsdk.lazyimport import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")


def results_spec() -> Any:
    return TableSpec(
        name=CHECKS_TABLE,
        columns={"checked_at": "timestamp", "run_id": "string", "stage": "string", "partition": "string",
                 "source": "string", "table": "string", "check": "string", "kind": "string",
                 "severity": "string", "passed": "bool", "failing_rows": "int64", "rows": "int64",
                 "table_version": "int64", "message": "string", "examples": "string"},
        description="Results of the data checks declared in pipelines/ (one row per check and write).",
    )


def record(lakehouse_root: Any, results: Sequence[CheckResult], *, run_id: str, stage: str,
           partition: str | None, source: str) -> None:
    """Append ``results`` to :data:`CHECKS_TABLE` under ``lakehouse_root``."""
    if not results:
        return
    now = dt.datetime.now(dt.UTC)
    rows = [{"checked_at": now, "run_id": run_id, "stage": stage, "partition": partition or "",
             "source": source, "table": r.table, "check": r.check, "kind": r.kind, "severity": r.severity,
             "passed": r.passed, "failing_rows": r.failing_rows, "rows": r.rows,
             "table_version": r.table_version, "message": r.message,
             "examples": json.dumps(r.examples, default=str)} for r in results]
    spec = results_spec()
    data = pa.Table.from_pylist(rows, schema=spec.arrow_schema())
    Lakehouse(lakehouse_root, {CHECKS_TABLE: spec}).write(
        CHECKS_TABLE, data, mode="append", metadata={"qsdk.run_id": run_id, "qsdk.stage": stage,
                                                     "qsdk.checks": "results"})


def latest(lakehouse_root: Any, table: str | None = None) -> pa.Table:
    """One row per check (of ``table``, or of every table): the table's state as last checked.

    A check runs per write, so per partition: its standing result is the latest one of each
    partition, summed (``failing_rows``, ``rows``, ``partitions``; ``passed`` only if every one
    passed; ``message`` of the latest failure, else of the latest result). A ``qsdk checks
    TABLE --run`` (source ``manual``) checked the whole table: results before it are superseded.
    """
    lake = Lakehouse(lakehouse_root, {CHECKS_TABLE: results_spec()})
    data = results_spec().arrow_schema().empty_table() if not lake.exists(CHECKS_TABLE) else \
        lake.read(CHECKS_TABLE, filters=[("table", "=", table)] if table else None)
    return _arrow(_connect(data), _LATEST)


_LATEST = """
WITH since AS (SELECT "table", "check", max(checked_at) FILTER (WHERE source = 'manual') AS at
               FROM t GROUP BY ALL),
     standing AS (SELECT t.* FROM t JOIN since USING ("table", "check")
                  WHERE since.at IS NULL OR t.checked_at >= since.at),
     per_partition AS (SELECT * FROM standing QUALIFY row_number() OVER (
                           PARTITION BY "table", "check", "partition" ORDER BY checked_at DESC) = 1)
SELECT "table", "check", arg_max(kind, checked_at) AS kind, arg_max(severity, checked_at) AS severity,
       bool_and(passed) AS passed, sum(failing_rows)::BIGINT AS failing_rows, sum("rows")::BIGINT AS "rows",
       count(*)::BIGINT AS partitions, max(checked_at) AS checked_at, arg_max(run_id, checked_at) AS run_id,
       arg_max(source, checked_at) AS source,
       coalesce(arg_max(message, checked_at) FILTER (WHERE NOT passed), arg_max(message, checked_at)) AS message,
       coalesce(arg_max(examples, checked_at) FILTER (WHERE NOT passed), '[]') AS examples
FROM per_partition GROUP BY "table", "check" ORDER BY "table", "check"
"""
