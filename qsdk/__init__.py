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
    from qsdk.integrations.mlflow import log_figure, log_metric
    from qsdk.lakehouse.loader import DataLoader, between, write_table
    from qsdk.sdk import QuantSDK, promote

__version__ = "0.1.0"

_LAZY = {
    "QuantSDK": ("qsdk.sdk", "QuantSDK"),
    "DataLoader": ("qsdk.lakehouse.loader", "DataLoader"),
    "write_table": ("qsdk.lakehouse.loader", "write_table"),
    "between": ("qsdk.lakehouse.loader", "between"),
    "promote": ("qsdk.sdk", "promote"),
    "log_metric": ("qsdk.integrations.mlflow", "log_metric"),
    "log_figure": ("qsdk.integrations.mlflow", "log_figure"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'qsdk' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext qsdk``: the ``%qsdk`` / ``%%qsdk`` magics (see :mod:`qsdk.magics`)."""
    from qsdk.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from qsdk.magics import unload_ipython_extension as unload

    unload(ipython)


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
    "load_ipython_extension",
    "log_figure",
    "log_metric",
    "promote",
    "unload_ipython_extension",
    "write_table",
]
