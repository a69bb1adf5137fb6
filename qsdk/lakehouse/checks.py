"""Data quality checks declared with a table's contract, evaluated before a commit.

A table in ``pipelines/*.yaml`` may declare ``checks:``; each is parsed and validated when the
registry loads (:func:`parse_checks`) and evaluated on the rows about to be committed
(:func:`evaluate`). Row-level checks become one SQL predicate each ("this row fails") that
DuckDB evaluates over the Arrow data in a single pass; only two checks are qsdk's own: complete
exchange sessions per symbol (the calendar of :mod:`qsdk.quant.calendar`) and the change of row
count versus the slice the write replaces (which needs the table, so the caller passes the count).

Semantics, stated once: a value check (``greater_than``, ``at_least``, ``less_than``,
``at_most``, ``between``) skips null and NaN values (``not_null`` is the check for those); an
``expression`` passes a row only when it is true (null fails); ``except`` is a SQL condition
whose rows the check ignores (a documented quirk of the data, never a loosened bound).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qsdk.errors import CheckFailed, RegistryError
from qsdk.lazyimport import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

Severity = Literal["error", "warn"]
SEVERITIES: tuple[str, ...] = ("error", "warn")
CHECKS_TABLE = "qsdk.checks"  # results; the layer ``qsdk`` is reserved (the registry refuses it)
RESERVED_LAYER = "qsdk"
MAX_EXAMPLES = 5
_VALUE_OPS = {"greater_than": ">", "at_least": ">=", "less_than": "<", "at_most": "<="}
_COMMON_KEYS = {"name", "severity", "except", "description"}
_FLOATS = {"float64", "float32"}
_NUMERIC = {"float64", "float32", "int64", "int32"}


@dataclass(frozen=True)
class Check:
    """One declared check. ``spec`` is the declaration as written (it is part of the contract,
    so of the cache key); ``name`` is unique within its table."""

    kind: str
    name: str
    severity: str
    spec: dict[str, Any] = field(hash=False)  # compared (a changed bound is another check), not hashed

    def to_dict(self) -> dict[str, Any]:
        return dict(self.spec)


@dataclass
class CheckResult:
    table: str
    check: str
    kind: str
    severity: str
    passed: bool
    failing_rows: int
    rows: int
    message: str = ""
    examples: list[dict[str, Any]] = field(default_factory=list)
    table_version: int | None = None  # the Delta version the write was checked against

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def blocking(self) -> bool:
        return not self.passed and self.severity == "error"


# ------------------------------------------------------------------ parsing (registry load)
def parse_checks(table: str, columns: Mapping[str, str], raw: Any, *,
                 validate_sql: bool = True) -> tuple[Check, ...]:
    """Validate the ``checks:`` list of ``table``; raise RegistryError naming table and check.

    ``validate_sql=False`` skips binding the SQL (a contract rebuilt from ``to_dict`` in a kernel
    was validated when the registry loaded)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RegistryError(f"table {table!r}: checks must be a list of mappings, got {type(raw).__name__}")
    checks = [_parse_one(table, columns, entry, i) for i, entry in enumerate(raw)]
    names = [c.name for c in checks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RegistryError(f"table {table!r}: two checks are named {dupes}; give each a distinct name:")
    if validate_sql:
        _validate_once(table, columns, checks)
    return tuple(checks)


def _validate_once(table: str, columns: Mapping[str, str], checks: Sequence[Check]) -> None:
    """Check the calendars and bind the SQL of ``checks``, once per distinct declaration.

    Both need heavy imports (exchange_calendars loads pandas, DuckDB opens a database): about half
    a second that every command would pay on each registry load. The outcome depends only on the
    declaration, this module and the two libraries' versions, so a success is remembered as an
    empty marker file named by their hash (``$XDG_CACHE_HOME/qsdk/validated-checks``); failures
    are never remembered. A missing or read-only cache folder just means validating every time."""
    if not any(c.kind == "sessions" or c.kind == "expression" or "except" in c.spec for c in checks):
        return
    marker = _marker(table, columns, checks)
    if marker is not None and marker.exists():
        return
    for check in checks:
        if check.kind == "sessions":
            _validate_calendar(table, check)
    _validate_sql(table, columns, checks)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass


def _marker(table: str, columns: Mapping[str, str], checks: Sequence[Check]) -> Path | None:
    from qsdk.codedeps import file_hash, listed_version, user_cache_dir

    folder = user_cache_dir("validated-checks")
    if folder is None:
        return None
    identity = [table, dict(columns), [c.spec for c in checks], file_hash(Path(__file__)),
                listed_version("duckdb"), listed_version("exchange_calendars")]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return folder / digest


def _validate_calendar(table: str, check: Check) -> None:
    from qsdk.quant.calendar import get_calendar

    try:
        get_calendar(str(check.spec["sessions"]))
    except Exception as exc:  # exchange_calendars raises its own types for unknown names
        raise RegistryError(f"table {table!r}, check {check.name!r}: unknown exchange calendar "
                            f"{check.spec['sessions']!r} ({exc})") from None


def _parse_one(table: str, columns: Mapping[str, str], entry: Any, index: int) -> Check:
    where = f"table {table!r}, check {index + 1}"
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: expected a mapping like {{column: close, greater_than: 0}}, got {entry!r}")
    if "name" in entry:
        where += f" ({entry['name']!r})"
    severity = entry.get("severity", "error")
    if severity not in SEVERITIES:
        raise RegistryError(f"{where}: severity {severity!r}; use 'error' (blocks the commit) or 'warn'")
    if "except" in entry and not isinstance(entry["except"], str):
        raise RegistryError(f"{where}: except must be a SQL condition (a string), got {entry['except']!r}")
    try:
        kind, name = _kind_and_name(entry, columns)
    except ValueError as exc:
        raise RegistryError(f"{where}: {exc}") from None
    name = str(entry.get("name") or name)
    return Check(kind, name, severity, {**entry, "name": name, "severity": severity})


def _kind_and_name(entry: dict[str, Any], columns: Mapping[str, str]) -> tuple[str, str]:
    """The check's kind and default name; ValueError says what is wrong."""
    keys = set(entry) - _COMMON_KEYS
    if "expression" in keys:
        _only(keys, {"expression"})
        if not isinstance(entry["expression"], str) or not entry["expression"].strip():
            raise ValueError("expression must be a non-empty SQL condition")
        if not entry.get("name"):
            raise ValueError("an expression check needs a name: (e.g. name: ohlc_consistent)")
        return "expression", entry["name"]
    if "sessions" in keys:
        _only(keys, {"sessions", "complete", "date_column", "by"})
        if entry.get("complete") is not True:
            raise ValueError("a sessions check reads {sessions: XNYS, complete: true}")
        date_col, by = entry.get("date_column", "date"), entry.get("by", "symbol")
        _columns_exist([date_col, by], columns)
        if columns[date_col] != "date":
            raise ValueError(f"date_column {date_col!r} is {columns[date_col]}, not date")
        return "sessions", f"sessions {entry['sessions']} complete"
    if "row_count_change" in keys:
        _only(keys, {"row_count_change"})
        opts = entry["row_count_change"]
        if not isinstance(opts, dict) or not opts or set(opts) - {"max_drop", "max_growth"}:
            raise ValueError("row_count_change takes {max_drop: FRACTION} and/or {max_growth: FRACTION}")
        for key, value in opts.items():
            if not _number(value) or value < 0 or (key == "max_drop" and value > 1):
                raise ValueError(f"row_count_change {key} must be a fraction (max_drop in [0, 1]), got {value!r}")
        return "row_count_change", "row_count_change " + " ".join(f"{k} {v}" for k, v in sorted(opts.items()))
    if "null_fraction" in keys:
        _only(keys, {"null_fraction"})
        opts = entry["null_fraction"]
        if not isinstance(opts, dict) or set(opts) != {"column", "at_most"}:
            raise ValueError("null_fraction takes {column: NAME, at_most: FRACTION}")
        _columns_exist([opts["column"]], columns)
        if not _number(opts["at_most"]) or not 0 <= opts["at_most"] <= 1:
            raise ValueError(f"null_fraction at_most must be in [0, 1], got {opts['at_most']!r}")
        return "null_fraction", f"null_fraction {opts['column']} <= {opts['at_most']}"
    if "not_null" in keys:
        _only(keys, {"not_null", "column", "columns"})
        if entry["not_null"] is not True:
            raise ValueError("write not_null: true")
        cols = _column_list(entry)
        _columns_exist(cols, columns)
        return "not_null", "not_null " + ",".join(cols)
    ops = keys & {*_VALUE_OPS, "between"}
    if len(ops) != 1:
        raise ValueError(
            f"unknown check {sorted(keys)}; use one of column + greater_than/at_least/less_than/at_most/"
            "between, not_null, expression (with name), sessions, row_count_change, null_fraction")
    op = ops.pop()
    _only(keys, {op, "column"})
    col = _column_list(entry, single=True)[0]
    _columns_exist([col], columns)
    if columns[col] not in _NUMERIC:
        raise ValueError(f"column {col!r} is {columns[col]}: value bounds apply to numeric columns; use an expression")
    bound = entry[op]
    if op == "between":
        if not (isinstance(bound, list) and len(bound) == 2 and all(map(_number, bound)) and bound[0] <= bound[1]):
            raise ValueError(f"between takes [LOW, HIGH] numbers with LOW <= HIGH, got {bound!r}")
        return "between", f"{col} between {bound[0]} and {bound[1]}"
    if not _number(bound):
        raise ValueError(f"{op} takes a number, got {bound!r}")
    return op, f"{col} {_VALUE_OPS[op]} {bound}"


def _only(keys: set[str], allowed: set[str]) -> None:
    extra = keys - allowed
    if extra:
        raise ValueError(f"unexpected key(s) {sorted(extra)} (allowed: {sorted(allowed | _COMMON_KEYS)})")


def _column_list(entry: dict[str, Any], *, single: bool = False) -> list[str]:
    cols = entry.get("columns") if "columns" in entry and not single else entry.get("column")
    cols = [cols] if isinstance(cols, str) else cols
    if not cols or not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
        raise ValueError("name the column: column: NAME" + ("" if single else " (or columns: [A, B])"))
    return cols


def _columns_exist(cols: Sequence[Any], columns: Mapping[str, str]) -> None:
    missing = [c for c in cols if c not in columns]
    if missing:
        raise ValueError(f"unknown column(s) {missing}; the table declares {list(columns)}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate_sql(table: str, columns: Mapping[str, str], checks: Sequence[Check]) -> None:
    """Bind every check's SQL against an empty table of the declared schema, so an unknown column
    or a syntax error in an expression or an ``except`` is a registry error, not a failed run."""
    from qsdk.lakehouse.types import TYPES

    sql_checks = [c for c in checks if c.kind == "expression" or "except" in c.spec]
    if not sql_checks:
        return
    empty = pa.schema([pa.field(c, TYPES[t]) for c, t in columns.items()]).empty_table()
    con = _connect(empty)
    for check in sql_checks:
        try:
            con.execute(f"SELECT count(*) FROM t WHERE {_failing(check, columns, bind_only=True)}").fetchall()
        except Exception as exc:  # duckdb's parser and binder errors
            raise RegistryError(f"table {table!r}, check {check.name!r}: invalid SQL: {str(exc).splitlines()[0]}") from None


# ------------------------------------------------------------------ evaluation
def _connect(data: pa.Table) -> Any:
    import duckdb

    con = duckdb.connect(":memory:", config={"enable_external_access": False, "threads": 1})
    con.register("t", data)
    return con


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _failing(check: Check, columns: Mapping[str, str], *, bind_only: bool = False) -> str:
    """The SQL condition true for each failing row of a row-level check."""
    spec = check.spec
    if check.kind == "expression":
        cond = f"(({spec['expression']}) IS NOT TRUE)"
    elif check.kind == "not_null":
        cond = "(" + " OR ".join(_missing(c, columns) for c in _column_list(spec)) + ")"
    elif check.kind == "null_fraction":
        cond = _missing(spec["null_fraction"]["column"], columns)
    elif check.kind in _VALUE_OPS or check.kind == "between":
        col = spec["column"]
        test = (f"{_q(col)} BETWEEN {spec['between'][0]} AND {spec['between'][1]}" if check.kind == "between"
                else f"{_q(col)} {_VALUE_OPS[check.kind]} {spec[check.kind]}")
        cond = f"(NOT {_missing(col, columns)} AND NOT ({test}))"
    elif bind_only:  # sessions / row_count_change: only their except clause is SQL over the rows
        cond = "true"
    else:
        raise AssertionError(check.kind)
    if "except" in spec:
        cond = f"({cond} AND NOT coalesce(({spec['except']}), false))"
    return cond


def _missing(col: str, columns: Mapping[str, str]) -> str:
    nan = f" OR isnan({_q(col)})" if columns.get(col) in _FLOATS else ""
    return f"({_q(col)} IS NULL{nan})"


def evaluate(table: str, checks: Sequence[Check], data: pa.Table, columns: Mapping[str, str], *,
             replaced_rows: int | None = None, table_version: int | None = None) -> list[CheckResult]:
    """Every check of ``table`` on ``data`` (the rows about to be committed).

    ``replaced_rows``: how many rows the write replaces (the predicate's slice, or the whole
    table for a full overwrite); ``None`` for appends, merges and a table's first write, where a
    row-count change has nothing to compare with (that check then passes and says so).
    """
    if not checks:
        return []
    con = _connect(data)
    rows = data.num_rows
    row_level = [c for c in checks if c.kind not in ("sessions", "row_count_change")]
    counts = _count_failing(con, row_level, columns)
    results = []
    for check in checks:
        if check.kind == "sessions":
            result = _sessions(con, table, check, rows)
        elif check.kind == "row_count_change":
            result = _row_count(table, check, rows, replaced_rows)
        else:
            result = _row_result(con, table, check, columns, counts[check.name], rows)
        result.table_version = table_version
        results.append(result)
    return results


def _count_failing(con: Any, checks: Sequence[Check], columns: Mapping[str, str]) -> dict[str, int]:
    """Failing-row counts of every row-level check in one scan."""
    if not checks:
        return {}
    parts = ", ".join(f"count(*) FILTER (WHERE {_failing(c, columns)})" for c in checks)
    values = con.execute(f"SELECT {parts} FROM t").fetchall()[0]
    return {c.name: int(v) for c, v in zip(checks, values, strict=True)}


def _examples(con: Any, sql: str) -> list[dict[str, Any]]:
    frame = _arrow(con, sql)
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_pylist()]


def _plain(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _row_result(con: Any, table: str, check: Check, columns: Mapping[str, str], failing: int,
                rows: int) -> CheckResult:
    if check.kind == "null_fraction":
        limit = check.spec["null_fraction"]["at_most"]
        fraction = failing / rows if rows else 0.0
        passed = fraction <= limit
        message = f"null fraction of {check.spec['null_fraction']['column']} is {fraction:.3f} (at most {limit})"
        return CheckResult(table, check.name, check.kind, check.severity, passed, failing, rows, message)
    examples = [] if not failing else _examples(
        con, f"SELECT * FROM t WHERE {_failing(check, columns)} LIMIT {MAX_EXAMPLES}")
    message = f"{failing} of {rows} row(s) fail" if failing else f"{rows} row(s) pass"
    return CheckResult(table, check.name, check.kind, check.severity, not failing, failing, rows, message, examples)


def _sessions(con: Any, table: str, check: Check, rows: int) -> CheckResult:
    """Every session of the calendar between a symbol's first and last written date is present."""
    from qsdk.quant.calendar import sessions

    spec = check.spec
    date, by = _q(spec.get("date_column", "date")), _q(spec.get("by", "symbol"))
    lo, hi = con.execute(f"SELECT min({date}), max({date}) FROM t").fetchall()[0]
    if lo is None:
        return CheckResult(table, check.name, check.kind, check.severity, True, 0, rows, "no rows")
    days = pa.table({"session": pa.array(sessions(lo, hi, calendar=str(spec["sessions"])).date, pa.date32())})
    con.register("cal", days)
    missing = (f"WITH spans AS (SELECT {by} AS k, min({date}) AS lo, max({date}) AS hi FROM t GROUP BY 1), "
               f"expected AS (SELECT spans.k AS {by}, cal.session AS {date} FROM spans JOIN cal "
               f"ON cal.session BETWEEN spans.lo AND spans.hi) "
               f"SELECT e.* FROM expected e ANTI JOIN t ON e.{by} = t.{by} AND e.{date} = t.{date}")
    if "except" in spec:
        missing = f"SELECT * FROM ({missing}) WHERE NOT coalesce(({spec['except']}), false)"
    failing = int(con.execute(f"SELECT count(*) FROM ({missing})").fetchall()[0][0])
    examples = _examples(con, f"SELECT * FROM ({missing}) ORDER BY 2, 1 LIMIT {MAX_EXAMPLES}") if failing else []
    message = (f"{failing} (symbol, session) pair(s) missing between each symbol's first and last date"
               if failing else "every session present")
    return CheckResult(table, check.name, check.kind, check.severity, not failing, failing, rows, message, examples)


def _row_count(table: str, check: Check, rows: int, replaced: int | None) -> CheckResult:
    opts = check.spec["row_count_change"]
    if not replaced:
        return CheckResult(table, check.name, check.kind, check.severity, True, 0, rows,
                           "nothing replaced (append, merge, or a new slice): no change to compare")
    change = (rows - replaced) / replaced
    drop_ok = -change <= opts.get("max_drop", math.inf)
    growth_ok = change <= opts.get("max_growth", math.inf)
    passed = drop_ok and growth_ok
    message = f"{rows} row(s) replace {replaced} ({change:+.1%})"
    lost = max(replaced - rows, 0) if not drop_ok else max(rows - replaced, 0) if not growth_ok else 0
    return CheckResult(table, check.name, check.kind, check.severity, passed, lost, rows, message)


def replaced_rows(lakehouse: Any, table: str, *, mode: str, predicate: str | None) -> tuple[int | None, int | None]:
    """``(rows the write replaces, current version)``: the predicate's slice at the current
    version for a partition overwrite, the whole table for a full overwrite, ``None`` otherwise."""
    if not lakehouse.exists(table):
        return None, None
    version = lakehouse.version(table)
    if mode != "overwrite":
        return None, version
    if predicate:
        return lakehouse.count_where(table, predicate, version=version), version
    return lakehouse.info(table).rows, version


def check_write(lakehouse: Any, table: str, data: pa.Table, *, mode: str,
                predicate: str | None) -> list[CheckResult]:
    """Evaluate ``table``'s declared checks on ``data``, a write about to be committed to ``lakehouse``."""
    spec = lakehouse.spec(table)
    if not spec.checks:
        return []
    wants_count = any(c.kind == "row_count_change" for c in spec.checks)
    replaced, version = replaced_rows(lakehouse, table, mode=mode, predicate=predicate) if wants_count \
        else (None, lakehouse.version(table))
    return evaluate(table, spec.checks, data, spec.columns, replaced_rows=replaced, table_version=version)


def raise_for(results: Sequence[CheckResult]) -> None:
    """Raise :class:`CheckFailed` if any ``error`` check failed, naming each."""
    failed = [r for r in results if r.blocking]
    if not failed:
        return
    raise CheckFailed(
        "data check(s) failed, nothing committed: " + "; ".join(describe(r) for r in failed),
        table=failed[0].table, check=failed[0].check, failing_rows=failed[0].failing_rows,
        examples=json.dumps(failed[0].examples, default=str),
        failed=[f"{r.table}:{r.check}" for r in failed],
    )


def describe(result: CheckResult) -> str:
    """One line: table, check, severity, failing rows, up to five example rows."""
    text = f"{result.table} check {result.check!r} ({result.severity}): {result.message}"
    if result.examples:
        text += f", for example {json.dumps(result.examples, default=str)}"
    return text


def _arrow(con: Any, sql: str) -> pa.Table:
    return con.sql(sql).to_arrow_table()
