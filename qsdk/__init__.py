"""qsdk: Jupyter-first pipelines for quantitative research.

Parameterized notebooks are stages; the registry in ``pipelines/`` declares them; stages read
and write Delta tables under a contract. ``import qsdk`` stays light: heavy modules (papermill,
Ray, MLflow) load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qsdk.errors import (
    ContractViolation,
    FlowCycleError,
    FlowFailed,
    LakehouseError,
    ParameterError,
    QsdkError,
    RegistryError,
    StageFailed,
)

if TYPE_CHECKING:
    from qsdk.lakehouse.loader import DataLoader, between, write_table
    from qsdk.sdk import QuantSDK

__version__ = "0.1.0"

_LAZY = {
    "QuantSDK": ("qsdk.sdk", "QuantSDK"),
    "DataLoader": ("qsdk.lakehouse.loader", "DataLoader"),
    "write_table": ("qsdk.lakehouse.loader", "write_table"),
    "between": ("qsdk.lakehouse.loader", "between"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'qsdk' has no attribute {name!r}")


__all__ = [
    "ContractViolation",
    "DataLoader",
    "FlowCycleError",
    "FlowFailed",
    "LakehouseError",
    "ParameterError",
    "QsdkError",
    "QuantSDK",
    "RegistryError",
    "StageFailed",
    "between",
    "write_table",
]
