"""The column types a table contract may declare, as Arrow types (shared by the contract and
the check engine, which must not import each other)."""

from __future__ import annotations

import pyarrow as pa

TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
