"""A flow: a set of stages whose order follows from the tables they read and write."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qsdk.errors import FlowCycleError, ParameterError, UnknownNameError
from qsdk.stage import Stage


@dataclass(frozen=True)
class Flow:
    name: str
    stages: tuple[Stage, ...]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.order()  # a cycle is an error when the flow is built, not when it runs

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise UnknownNameError(
            f"flow {self.name!r} has no stage {name!r}; its stages: {', '.join(self.stage_names)}",
            known=list(self.stage_names),
        )

    def dependencies(self) -> dict[str, set[str]]:
        """stage -> the stages in this flow that write a table it reads."""
        writer = {t: s.name for s in self.stages for t in s.outputs}
        return {
            s.name: {writer[t] for t in s.inputs if t in writer and writer[t] != s.name}
            for s in self.stages
        }

    def sorter(self) -> graphlib.TopologicalSorter:
        return graphlib.TopologicalSorter(self.dependencies())

    def order(self) -> list[str]:
        try:
            return list(self.sorter().static_order())
        except graphlib.CycleError as exc:
            cycle = list(exc.args[1])
            raise FlowCycleError(
                f"flow {self.name!r} has a cycle: {' -> '.join(cycle)}; a stage may not (indirectly) "
                "read a table that it or a later stage writes",
                flow=self.name,
                cycle=cycle,
            ) from None

    def downstream(self, names: Iterable[str]) -> set[str]:
        deps = self.dependencies()
        out = set(names)
        changed = True
        while changed:
            changed = False
            for stage, ups in deps.items():
                if stage not in out and ups & out:
                    out.add(stage)
                    changed = True
        return out

    def select(self, *, only: Iterable[str] = (), from_: Iterable[str] = ()) -> Flow:
        """A sub-flow: ``only`` these stages, or ``from_`` these stages and everything downstream."""
        only, from_ = list(only), list(from_)
        for name in [*only, *from_]:
            self.stage(name)
        if not only and not from_:
            return self
        keep = set(only) | (self.downstream(from_) if from_ else set())
        return Flow(self.name, tuple(s for s in self.stages if s.name in keep), self.description, self.defaults)

    def parameter_names(self) -> set[str]:
        return {p for s in self.stages for p in s.params}

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
        """Validated parameters per stage.

        A plain key (``start``) goes to every stage that declares it; ``stage.key`` to one stage.
        A key no stage declares is an error, so a typo never runs silently with the default.
        """
        params = dict(params or {})
        per_stage: dict[str, dict[str, Any]] = {s.name: {} for s in self.stages}
        broadcast = {**self.defaults, **{k: v for k, v in params.items() if "." not in k}}
        for key in broadcast:
            if key not in self.parameter_names() and key not in self.defaults:
                known = ", ".join(sorted(self.parameter_names())) or "(none)"
                raise ParameterError(
                    f"flow {self.name!r}: no stage declares parameter {key!r} (declared: {known}); "
                    "use STAGE.NAME to target one stage",
                    flow=self.name,
                    parameter=key,
                )
        for key, value in params.items():
            if "." in key:
                stage_name, _, pname = key.partition(".")
                self.stage(stage_name)
                per_stage[stage_name][pname] = value
        resolved = {}
        for s in self.stages:
            shared = {k: v for k, v in broadcast.items() if k in s.params}
            resolved[s.name] = s.resolve({**shared, **per_stage[s.name]})
        return resolved
