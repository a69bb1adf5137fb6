"""The stage context a notebook runs under.

The executor writes a :class:`StageContext` as JSON next to the run and tells the kernel its
path through ``QSDK_CONTEXT`` (set by the qsdk papermill engine before the first cell).
Inside the kernel, :func:`current` loads it once; ``DataLoader`` and ``write_table`` enforce it.
``%qsdk stage NAME`` activates the same kind of context in an interactive session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qsdk.model.registry import Registry

ENV_CONTEXT = "QSDK_CONTEXT"


@dataclass
class StageContext:
    run_id: str
    stage: str
    lakehouse_root: str
    inputs: list[str]
    outputs: list[str]
    tables: dict[str, dict[str, Any]]
    partition: str | None = None
    staging_dir: str | None = None  # None: writes commit at once (interactive sessions)
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


def new_context(registry: Registry, *, run_id: str, stage: str, lakehouse_root: str | Path,
                inputs: Sequence[str], outputs: Sequence[str], **options: Any) -> StageContext:
    """The one way to build a :class:`StageContext` (runs, ``%qsdk stage``, ``QuantSDK.loader``):
    the contracts of the tables it declares and the project's feature views, from ``registry``. ``options``: the remaining :class:`StageContext` fields."""
    declared = list(dict.fromkeys((*inputs, *outputs)))
    return StageContext(
        run_id=run_id, stage=stage, lakehouse_root=str(lakehouse_root),
        inputs=list(inputs), outputs=list(outputs),
        tables={t: registry.tables[t].to_dict() for t in declared},
        features={n: v.to_dict() for n, v in registry.features.items()},
        **options,
    )


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
