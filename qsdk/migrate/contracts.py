"""A table contract proposed from a legacy file that exists (the output a script wrote before).

Reading the file's schema (Parquet) or header and values (CSV) is reading data, not running the
script. A ``timestamp`` column whose every value is midnight is proposed as ``date`` (the
contract accepts midnight timestamps for a date column); ``timestamps`` remembers such columns
so a migrated reader can give the script the ``datetime64`` it had. ``index``: the named index
a pandas ``to_parquet`` stored as columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa


@dataclass(frozen=True)
class Inferred:
    columns: dict[str, str]
    timestamps: tuple[str, ...] = ()
    index: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()


def infer(path: Path, fmt: str) -> Inferred | None:
    """The contract of the file at ``path``, or None (no file, unreadable, or a type with no contract type)."""
    if not path.is_file():
        return None
    try:
        table = _read(path, fmt)
    except (OSError, ValueError, pa.ArrowException):
        return None
    columns: dict[str, str] = {}
    timestamps = []
    for field in table.schema:
        kind = _kind(field.type, table.column(field.name))
        if kind is None:
            return None
        if kind == "date" and pa.types.is_timestamp(field.type):
            timestamps.append(field.name)
        columns[field.name] = kind
    meta = table.schema.pandas_metadata or {}
    index = tuple(i for i in meta.get("index_columns", []) if isinstance(i, str) and not i.startswith("__index"))
    return Inferred(columns, tuple(timestamps), index, _primary_key(table, [*columns]))


def _primary_key(table: pa.Table, columns: list[str]) -> tuple[str, ...]:
    entity = next((c for c in ("symbol", "ticker", "id") if c in columns), None)
    if entity is None or "date" not in columns or table.num_rows == 0:
        return ()
    key = table.select([entity, "date"])
    if key.column(entity).null_count or key.column("date").null_count:
        return ()
    unique = key.group_by([entity, "date"]).aggregate([]).num_rows
    return (entity, "date") if unique == table.num_rows else ()


def _read(path: Path, fmt: str) -> pa.Table:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import pandas as pd

    return pa.Table.from_pandas(pd.read_csv(path), preserve_index=False)


def _kind(typ: pa.DataType, column: pa.ChunkedArray) -> str | None:
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        return "string"
    if pa.types.is_boolean(typ):
        return "bool"
    if pa.types.is_integer(typ):
        return "int32" if typ.bit_width <= 32 and pa.types.is_signed_integer(typ) else "int64"
    if pa.types.is_float32(typ):
        return "float32"
    if pa.types.is_floating(typ):
        return "float64"
    if pa.types.is_date(typ):
        return "date"
    if pa.types.is_timestamp(typ):
        return "date" if _all_midnight(column) else "timestamp"
    if pa.types.is_null(typ):
        return "string"
    return None


def _all_midnight(column: pa.ChunkedArray) -> bool:
    import pyarrow.compute as pc

    values = column.drop_null()
    if len(values) == 0:
        return False
    as_date = values.cast(pa.date32(), safe=False).cast(values.type)
    return bool(pc.all(pc.equal(as_date, values)).as_py())
