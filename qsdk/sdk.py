"""``QuantSDK``: the one Python entry point the CLI, the magics and the widgets call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from qsdk.config import Config
from qsdk.executors import Executor
from qsdk.hooks import Hook
from qsdk.lakehouse.loader import DataLoader
from qsdk.lakehouse.tables import Lakehouse, TableInfo
from qsdk.registry import Registry
from qsdk.run import RunResult, run_flow


class QuantSDK:
    """A qsdk project: its registry, its lakehouse, and running its flows.

    >>> sdk = QuantSDK()                       # the project at or above the current folder
    >>> sdk.run_pipeline("backfill", params={"start": "2010-01-01", "end": "2010-12-31"})
    """

    def __init__(
        self,
        project_root: str | Path | None = None,
        *,
        lakehouse_root: str | Path | None = None,
        runs_dir: str | Path | None = None,
    ) -> None:
        self.config = Config.load(project_root, lakehouse_root=lakehouse_root, runs_dir=runs_dir)

    @cached_property
    def registry(self) -> Registry:
        return Registry.load(self.config)

    @property
    def lakehouse(self) -> Lakehouse:
        return Lakehouse(self.config.lakehouse_root, self.registry.tables)

    def run_pipeline(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        executor: Executor | str = "local",
        only: Sequence[str] = (),
        from_: Sequence[str] = (),
        hooks: Sequence[Hook] = (),
        raise_on_failure: bool = True,
    ) -> RunResult:
        """Run flow ``name``; parameters are validated for every stage before anything starts.

        Raises :class:`~qsdk.errors.FlowFailed` when a stage fails, unless
        ``raise_on_failure=False`` (then inspect ``result.status``).
        """
        flow = self.registry.flow(name).select(only=only, from_=from_)
        result = run_flow(flow, registry=self.registry, config=self.config, params=params,
                          executor=executor, hooks=hooks)
        return result.raise_for_status() if raise_on_failure else result

    def tables(self) -> list[TableInfo]:
        lake = self.lakehouse
        names = sorted(set(self.registry.tables) | set(lake.list_tables()))
        return [lake.info(n) for n in names]

    def loader(self) -> DataLoader:
        """An unrestricted reader over the whole lakehouse (exploration, not stages)."""
        from qsdk.runtime import StageContext

        specs = {n: s.to_dict() for n, s in self.registry.tables.items()}
        names = list(specs)
        ctx = StageContext(run_id="interactive", stage="<explore>", lakehouse_root=str(self.config.lakehouse_root),
                           inputs=names, outputs=[], tables=specs)
        return DataLoader(context=ctx)
