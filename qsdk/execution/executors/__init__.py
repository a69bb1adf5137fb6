"""Executors run tasks: ``local`` in this process, ``ray`` on Ray workers (imported lazily).

A small registry in the style of papermill's engines: ``get_executor(name)`` returns a new
executor; an unknown name is an error that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qsdk.config import DEFAULT_EXECUTOR
from qsdk.errors import UnknownNameError
from qsdk.execution.executors.base import Executor

_FACTORIES: dict[str, Callable[..., Executor]] = {}


def register(name: str, factory: Callable[..., Executor]) -> None:
    _FACTORIES[name] = factory


def get_executor(name: str, **options: Any) -> Executor:
    _load_builtins()
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown executor {name!r}; known executors: {', '.join(sorted(_FACTORIES))}",
            known=sorted(_FACTORIES),
        ) from None
    return factory(**options)


def known_executors() -> list[str]:
    _load_builtins()
    return sorted(_FACTORIES)


def _load_builtins() -> None:
    if "local" not in _FACTORIES:
        from qsdk.execution.executors.local import LocalExecutor

        register("local", LocalExecutor)
    if "ray" not in _FACTORIES:
        register("ray", _ray_executor)


def _ray_executor(**options: Any) -> Executor:
    from qsdk.execution.executors.ray import RayExecutor  # imports Ray: only when asked for

    return RayExecutor(**options)


__all__ = ["DEFAULT_EXECUTOR", "Executor", "get_executor", "known_executors", "register"]
