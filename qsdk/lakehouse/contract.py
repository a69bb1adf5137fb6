"""Table contracts: declared columns and types, primary key, partition columns.

The contract, not Delta, refuses bad data: ``deltalake`` only matches field names and casts
types silently (a float 2.7 lands as int 2, the string "7" as 7). :func:`conform` compares
Arrow types strictly and allows only lossless representation changes: string encodings,
timestamp units (a checked cast), integer and float widening (a narrower integer or float into
a wider one of its kind; integers into a float column when every value is exactly
representable, checked by a round trip), and timestamps at midnight for a ``date`` column
(checked, never truncated). Floats into an integer column are refused, even whole ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qsdk.errors import ContractViolation, RegistryError, TableNameError
from qsdk.lakehouse.types import TYPES
from qsdk.lazyimport import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}\.[a-z][a-z0-9_]{0,62}$")



def validate_table_name(name: Any) -> str:
    """``layer.name``, lower-case letters, digits and ``_`` only: no path tricks possible."""
    # fullmatch: with match, `$` also matches before a trailing newline ("silver.prices\n")
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise TableNameError(
            f"invalid table name {name!r}: use 'layer.name' with lower-case letters, digits and "
            "underscores (for example 'silver.prices')",
            table=str(name),
        )
    return name


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: dict[str, str]
    primary_key: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    checks: tuple[Any, ...] = ()  # qsdk.lakehouse.checks.Check, parsed with the registry

    def __post_init__(self) -> None:
        validate_table_name(self.name)
        if not self.columns:
            raise RegistryError(f"table {self.name!r} declares no columns")
        for col, typ in self.columns.items():
            if typ not in TYPES:
                raise RegistryError(
                    f"table {self.name!r}, column {col!r}: unknown type {typ!r}; "
                    f"use one of {', '.join(TYPES)}"
                )
        for key_list, what in ((self.primary_key, "primary_key"), (self.partition_by, "partition_by")):
            missing = [c for c in key_list if c not in self.columns]
            if missing:
                raise RegistryError(
                    f"table {self.name!r}: {what} names undeclared column(s) {missing}"
                )

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c, TYPES[t], nullable=True) for c, t in self.columns.items()])

    def to_dict(self) -> dict[str, Any]:
        """The contract as data: what crosses into a kernel and what the cache key hashes (so a
        changed check makes the tasks writing the table stale). ``checks`` only when declared,
        so a table without checks keeps the hash it had before checks existed."""
        out = {
            "name": self.name,
            "columns": dict(self.columns),
            "primary_key": list(self.primary_key),
            "partition_by": list(self.partition_by),
            "description": self.description,
        }
        if self.checks:
            out["checks"] = [c.to_dict() for c in self.checks]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableSpec:
        from qsdk.lakehouse.checks import parse_checks

        columns = dict(data["columns"])
        return cls(
            name=data["name"],
            columns=columns,
            primary_key=tuple(data.get("primary_key", ())),
            partition_by=tuple(data.get("partition_by", ())),
            description=data.get("description", ""),
            checks=parse_checks(data["name"], columns, data.get("checks"), validate_sql=False),
        )


def to_arrow(data: Any) -> pa.Table:
    """Accept a pyarrow Table, a pandas or polars DataFrame, or anything with ``__arrow_c_stream__``."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            return pa.Table.from_pandas(data, preserve_index=False)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    if hasattr(data, "to_arrow"):
        return data.to_arrow()
    raise ContractViolation(
        f"cannot write a {type(data).__name__}: pass a pandas DataFrame, a polars DataFrame or "
        "a pyarrow Table"
    )


def conform(data: Any, spec: TableSpec, *, key_checked: bool = False) -> pa.Table:
    """Return ``data`` as an Arrow table in exactly ``spec``'s schema, or raise ContractViolation.

    ``key_checked``: ``data`` came out of ``conform`` for this contract already (a staged write,
    conformed in its kernel): the columns are checked again, the primary key is not (its hash
    aggregation costs about a second per million rows that are not in key order)."""
    table = to_arrow(data)
    _check_columns(table, spec)
    columns = [_conform_column(table.column(name), name, typ, spec) for name, typ in spec.columns.items()]
    result = pa.Table.from_arrays(columns, schema=spec.arrow_schema())
    if not key_checked:
        check_primary_key(result, spec)
    return result


def _check_columns(table: pa.Table, spec: TableSpec) -> None:
    names = table.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    extra = [n for n in names if n not in spec.columns]
    missing = [n for n in spec.columns if n not in names]
    problems = []
    if dupes:
        problems.append(f"duplicate columns {dupes}")
    if extra:
        problems.append(f"columns not in the contract {extra} (drop them, or declare them)")
    if missing:
        problems.append(f"missing columns {missing}")
    if problems:
        raise ContractViolation(
            f"write to {spec.name!r} does not match its contract: {'; '.join(problems)}. "
            f"Declared columns: {list(spec.columns)}",
            table=spec.name,
        )


def _conform_column(col: pa.ChunkedArray, name: str, typ: str, spec: TableSpec) -> pa.ChunkedArray:
    target = TYPES[typ]
    actual = col.type
    if actual == target:
        return col
    if pa.types.is_null(actual):
        return pa.nulls(len(col), type=target) if len(col) else pa.chunked_array([], type=target)
    if _lossless(actual, target):
        return col.cast(target, safe=True)
    if typ == "date" and pa.types.is_timestamp(actual):
        as_date = col.cast(pa.date32(), safe=False)
        if pc.all(pc.equal(as_date.cast(actual), col)).as_py() in (True, None):
            return as_date
    if pa.types.is_integer(actual) and pa.types.is_floating(target):
        return _ints_as_floats(col, name, typ, spec)
    raise ContractViolation(
        f"write to {spec.name!r}: column {name!r} has type {actual}, the contract says {typ} "
        f"({target}); convert it before writing (qsdk never casts lossy types)",
        table=spec.name,
        column=name,
        expected=typ,
        actual=str(actual),
    )


def _ints_as_floats(col: pa.ChunkedArray, name: str, typ: str, spec: TableSpec) -> pa.ChunkedArray:
    """Integers into a float column, when each value survives the round trip (float64 holds
    every integer up to 2**53 exactly, float32 up to 2**24)."""
    target = TYPES[typ]
    floats = col.cast(target, safe=False)
    inexact = pc.invert(pc.equal(floats.cast(col.type, safe=False), col))
    if pc.any(inexact).as_py():
        example = pc.filter(col, inexact)[0].as_py()
        raise ContractViolation(
            f"write to {spec.name!r}: column {name!r} holds integers that {typ} cannot represent exactly "
            f"(for example {example}); keep them as integers, or round them yourself before writing",
            table=spec.name, column=name, expected=typ, actual=str(col.type),
        )
    return floats


def _lossless(actual: pa.DataType, target: pa.DataType) -> bool:
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(f(actual) for f in strings) and any(f(target) for f in strings):
        return True
    if pa.types.is_timestamp(actual) and pa.types.is_timestamp(target):
        return bool(actual.tz == target.tz or (actual.tz in {"UTC", "+00:00", "Etc/UTC"} and target.tz == "UTC"))
    if pa.types.is_date(actual) and pa.types.is_date(target):
        return True
    if pa.types.is_integer(actual) and pa.types.is_integer(target):
        return bool(pa.types.is_signed_integer(actual) and actual.bit_width <= target.bit_width)
    if pa.types.is_floating(actual) and pa.types.is_floating(target):
        return bool(actual.bit_width <= target.bit_width)
    return False


def check_primary_key(table: pa.Table, spec: TableSpec) -> None:
    """Primary-key columns must be non-null and unique within ``table``."""
    if not spec.primary_key:
        return
    for col in spec.primary_key:
        nulls = table.column(col).null_count
        if nulls:
            raise ContractViolation(
                f"write to {spec.name!r}: primary-key column {col!r} has {nulls} null value(s)",
                table=spec.name,
                column=col,
            )
    keys = list(spec.primary_key)
    if _strictly_ordered(table, keys) or _strictly_ordered(table, keys[::-1]):
        return  # rows in strict key order (the usual case: built by a sort, a range or a date loop)
    dupes = _duplicate_keys(table, keys)
    if dupes.num_rows:
        example = {k: dupes.column(k)[0].as_py() for k in keys}
        raise ContractViolation(
            f"write to {spec.name!r}: {dupes.num_rows} duplicate primary key(s) {keys}, "
            f"for example {example}; de-duplicate before writing",
            table=spec.name,
            duplicates=dupes.num_rows,
        )


def _duplicate_keys(table: pa.Table, keys: list[str]) -> pa.Table:
    """The ``keys`` values that occur more than once in ``table`` (a hash aggregation)."""
    counts = table.select(keys).group_by(keys).aggregate([([], "count_all")])
    return counts.filter(pc.greater(counts.column("count_all"), 1))


def _strictly_ordered(table: pa.Table, keys: list[str]) -> bool:
    """Whether each row's ``keys`` sort strictly after the previous row's (lexicographically):
    then no key repeats. One vectorised pass, where a hash aggregation costs about a second
    per million rows. Key columns hold no nulls here."""
    if table.num_rows < 2:
        return True
    after: Any = None  # "row i+1 > row i" on the key columns seen so far, built from the last one outwards
    for key in reversed(keys):
        col = table.column(key)
        nxt, prev = col.slice(1), col.slice(0, len(col) - 1)
        try:
            greater = pc.greater(nxt, prev)
            after = greater if after is None else pc.or_(greater, pc.and_(pc.equal(nxt, prev), after))
        except pa.ArrowNotImplementedError:  # a type without an order kernel: the hash check decides
            return False
    return bool(pc.all(after).as_py())
