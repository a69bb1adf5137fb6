"""The column types a table contract may declare, as Arrow types (shared by the contract and
the check engine, which must not import each other).

``TYPES`` knows its names without pyarrow (a registry load only checks names); an Arrow type is
built, importing pyarrow, when one is looked up."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from qsdk.lazyimport import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")

# declared name -> (pyarrow factory, its arguments)
_FACTORIES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "string": ("string", ()),
    "int64": ("int64", ()),
    "int32": ("int32", ()),
    "float64": ("float64", ()),
    "float32": ("float32", ()),
    "bool": ("bool_", ()),
    "date": ("date32", ()),
    "timestamp": ("timestamp", ("us", "UTC")),
}


class _ArrowTypes(Mapping[str, "pa.DataType"]):
    def __getitem__(self, name: str) -> pa.DataType:
        factory, args = _FACTORIES[name]
        return getattr(pa, factory)(*args)

    def __contains__(self, name: object) -> bool:  # Mapping's default would build the type
        return name in _FACTORIES

    def __iter__(self) -> Iterator[str]:
        return iter(_FACTORIES)

    def __len__(self) -> int:
        return len(_FACTORIES)


TYPES: Mapping[str, pa.DataType] = _ArrowTypes()
