"""Building the stage context a notebook runs under.

The context's data (:class:`~qsdk.lakehouse.stagecontext.StageContext`) and the active one
(:func:`current`, :func:`activate`) live in the lakehouse layer, which enforces them and must
not depend on the registry. This module is the one factory that fills a context from the
registry (:func:`new_context`): runs, ``%qsdk stage`` (``QuantSDK.explore``) and
``QuantSDK.loader`` all build theirs here. The executor writes it as JSON next to the run and
tells the kernel its path through ``QSDK_CONTEXT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qsdk.lakehouse.stagecontext import ENV_CONTEXT, StageContext, activate, current

if TYPE_CHECKING:
    from qsdk.model.registry import Registry

__all__ = ["ENV_CONTEXT", "StageContext", "activate", "current", "new_context"]


def new_context(registry: Registry, *, run_id: str, stage: str, lakehouse_root: str | Path,
                inputs: Sequence[str], outputs: Sequence[str], **options: Any) -> StageContext:
    """The one way to build a :class:`StageContext` (runs, ``%qsdk stage``, ``QuantSDK.loader``):
    the contracts of the tables it declares and the project's feature views, from ``registry``,
    so that nothing in the kernel loads the registry again. ``options``: the remaining
    :class:`StageContext` fields."""
    declared = list(dict.fromkeys((*inputs, *outputs)))
    return StageContext(
        run_id=run_id, stage=stage, lakehouse_root=str(lakehouse_root),
        inputs=list(inputs), outputs=list(outputs),
        tables={t: registry.tables[t].to_dict() for t in declared},
        features={n: v.to_dict() for n, v in registry.features.items()},
        **options,
    )
