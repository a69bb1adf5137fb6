"""Heavy libraries imported on first use.

A command that decides without touching data (a no-op re-run, ``qsdk status``, ``qsdk list``)
should not pay for importing pyarrow and numpy (a quarter of a second on a 2-core machine). A
module that needs them at run time writes::

    if TYPE_CHECKING:
        import pyarrow as pa
    else:
        pa = lazy_module("pyarrow")

mypy sees the real import; at run time ``pa`` imports pyarrow on the first attribute read and
then holds its attributes, so later reads cost what a module's do. :mod:`qsdk.codedeps` counts
such a module-level ``lazy_module("x")`` as an import of ``x`` (a cache key still names it).
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_qsdk_target"] = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__dict__["_qsdk_target"])
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


def lazy_module(name: str) -> Any:
    """A stand-in for module ``name`` that imports it when an attribute is first read."""
    return _LazyModule(name)
