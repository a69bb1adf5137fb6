"""The data of a stage context, as the lakehouse reads it, and the active one.

A :class:`StageContext` says what one stage may read and write: the declared tables with their
contracts, the feature views ``training_set`` joins from, where writes are staged, which table
versions reads are pinned to. It is plain data (JSON next to the run), so the lakehouse side
(``DataLoader``, ``write_table``, the sandbox, the guard) needs nothing of the registry: the
one factory that builds a context from the registry is :func:`qsdk.execution.context.new_context`.

The executor tells the kernel the context's path through ``QSDK_CONTEXT`` (set by the qsdk
papermill engine before the first cell); :func:`current` loads it once. ``%qsdk stage NAME``
activates one in an interactive session (:func:`activate`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ENV_CONTEXT = "QSDK_CONTEXT"


@dataclass
class StageContext:
    run_id: str
    stage: str
    lakehouse_root: str
    inputs: list[str]
    outputs: list[str]
    # the contracts of the declared tables (TableSpec.to_dict() form)
    tables: dict[str, dict[str, Any]]
    partition: str | None = None
    staging_dir: str | None = None  # None: writes commit at once (interactive sessions)
    # the run's runs folder on the driver: qsdk writes executed notebooks there while stages run,
    # so where it lies inside the lakehouse it is no table's (the guard and the direct-write check)
    runs_dir: str | None = None
    pinned_versions: dict[str, int] = field(default_factory=dict)
    # table -> another lakehouse root to read it from (reproduce: the original lakehouse)
    read_roots: dict[str, str] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # the project's feature views (FeatureView.to_dict() form): training_set joins from these, so
    # the kernel never loads the registry; a view over an undeclared table still fails the read
    features: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> StageContext:
        return cls(**json.loads(Path(path).read_text()))

    @property
    def allowed_reads(self) -> list[str]:
        return [*self.inputs, *(t for t in self.outputs if t not in self.inputs)]


_current: StageContext | None = None
_loaded_from: str | None = None


def current() -> StageContext | None:
    """The active context: set by :func:`activate`, else loaded from ``$QSDK_CONTEXT``."""
    global _current, _loaded_from
    env = os.environ.get(ENV_CONTEXT)
    if env and env != _loaded_from:
        _current, _loaded_from = StageContext.load(env), env
    return _current


def activate(context: StageContext | None) -> None:
    global _current, _loaded_from
    _current, _loaded_from = context, os.environ.get(ENV_CONTEXT)
