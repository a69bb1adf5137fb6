"""A flow: a set of stages whose order follows from the tables they read and write."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from typing import Any, Literal

from qsdk.errors import FlowCycleError, ParameterError, UnknownNameError
from qsdk.model.stage import Stage


@dataclass(frozen=True)
class Binding:
    """A flow-level parameter that sets stage parameters: ``date`` -> ``start`` and ``end``.

    ``qsdk run daily -p date=D`` runs every stage with ``start=D`` and ``end=D``. With
    ``session_calendar`` the value must be a trading session of that exchange calendar; the
    check runs before any kernel starts.
    """

    name: str
    targets: tuple[str, ...]
    required: bool = True
    session_calendar: str | None = None

    def expand(self, flow: str, params: dict[str, Any], declared: set[str]) -> None:
        if self.name not in params:
            if self.required:
                raise ParameterError(
                    f"flow {flow!r} needs -p {self.name}=... (it sets {', '.join(self.targets)})",
                    flow=flow, parameter=self.name,
                )
            return
        value = params.pop(self.name)
        for target in self.targets:
            if target in params:
                raise ParameterError(
                    f"flow {flow!r}: {self.name} sets {target}; pass one of them, not both",
                    flow=flow, parameter=target,
                )
            if target in declared:
                params[target] = value
        if self.session_calendar:
            _check_session(flow, self.name, value, self.session_calendar)


def _check_session(flow: str, name: str, value: Any, calendar: str) -> None:
    import datetime as dt

    from qsdk.quant import calendar as cal

    try:
        day = dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ParameterError(f"flow {flow!r}: {name}={value!r} is not a date (YYYY-MM-DD)",
                             flow=flow, parameter=name) from None
    try:
        ok = cal.is_session(day, calendar=calendar)
    except ValueError as exc:
        raise ParameterError(f"flow {flow!r}: {name}={day}: {exc}", flow=flow, parameter=name) from None
    if not ok:
        window = cal.sessions(day - dt.timedelta(days=10), day + dt.timedelta(days=10), calendar=calendar)
        before = [d.date() for d in window if d.date() < day][-1:]
        after = [d.date() for d in window if d.date() > day][:1]
        near = ", ".join(f"{label} {d[0]}" for label, d in (("previous", before), ("next", after)) if d)
        raise ParameterError(
            f"flow {flow!r}: {name}={day} is not a trading session of calendar {calendar} "
            f"({day:%A}); pass a session date ({near})",
            flow=flow, parameter=name, value=str(day), calendar=calendar,
        )


@dataclass(frozen=True)
class FlowParameter:
    """One ``-p NAME=VALUE`` a flow takes, as the launcher, ``%qsdk flows``, ``qsdk show`` and
    ``qsdk dvc sync`` present it.

    A parameter several stages declare is one entry (``-p name=`` sets it for all of them); a
    flow :class:`Binding` (``date`` -> ``start`` and ``end``) is one entry that replaces the
    parameters it sets. ``default`` is what a run uses when the parameter is not given: the
    flow's registry default, else the first stage's (in run order) registry default, else its
    notebook default; ``default_from`` says which (``None``: required, or a binding).
    """

    name: str
    kind: str  # ParamSpec kind: str, int, float, bool, date, list
    type: str  # the type as the notebook declares it, e.g. "date" or "Literal['ok', 'fail']"
    required: bool
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    stages: tuple[str, ...] = ()  # the stages it sets (in run order)
    sets: tuple[str, ...] = ()  # a binding: the stage parameters it sets
    default_from: Literal["flow", "stage", "notebook"] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "type": self.type, "required": self.required,
                "default": self.default, "help": self.help,
                "choices": None if self.choices is None else list(self.choices),
                "stages": list(self.stages), "sets": list(self.sets), "default_from": self.default_from}


@dataclass(frozen=True)
class Flow:
    name: str
    stages: tuple[Stage, ...]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict, compare=False)
    bindings: tuple[Binding, ...] = ()

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

    def sorter(self) -> graphlib.TopologicalSorter[str]:
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
        return Flow(self.name, tuple(s for s in self.stages if s.name in keep), self.description, self.defaults,
                    self.bindings)

    def parameter_names(self) -> set[str]:
        """The stage parameters of this flow (bound ones included): what ``-p name=`` may set."""
        return {p for s in self.stages for p in s.params}

    def parameters(self) -> list[FlowParameter]:
        """The parameters this flow takes: bindings first, then stage parameters in run order
        (each once; those a binding sets left out). The one answer to "what does this flow
        take", for every front-end and for ``qsdk dvc sync``."""
        bound = {t for b in self.bindings for t in b.targets}
        order = [self.stage(n) for n in self.order()]
        out = [self._binding_parameter(b, order) for b in self.bindings]
        seen: dict[str, FlowParameter] = {}
        for stage in order:
            for name, spec in stage.params.items():
                if name in bound:
                    continue
                if name in seen:
                    seen[name] = replace(seen[name], stages=(*seen[name].stages, stage.name))
                    continue
                info = spec.to_dict()
                source: Literal["flow", "stage", "notebook"] | None
                if name in self.defaults:
                    default, source = self.defaults[name], "flow"
                elif name in stage.defaults:
                    default, source = stage.defaults[name], "stage"
                else:
                    default, source = info["default"], None if spec.required else "notebook"
                seen[name] = FlowParameter(
                    name=name, kind=info["kind"], type=info["type"], required=spec.required and source is None,
                    default=default, help=info["help"] or "",
                    choices=None if info["choices"] is None else tuple(info["choices"]),
                    stages=(stage.name,), default_from=source)
        return [*out, *seen.values()]

    @staticmethod
    def _binding_parameter(binding: Binding, stages: list[Stage]) -> FlowParameter:
        kinds = {s.params[t].type.kind for s in stages for t in binding.targets if t in s.params}
        kind = kinds.pop() if len(kinds) == 1 else "str"
        help_ = f"sets {', '.join(binding.targets)}" + (
            f"; a {binding.session_calendar} session" if binding.session_calendar else "")
        return FlowParameter(name=binding.name, kind=kind, type=kind, required=binding.required, help=help_,
                             stages=tuple(s.name for s in stages if set(binding.targets) & set(s.params)),
                             sets=binding.targets)

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
        """Validated parameters per stage.

        A plain key (``start``) goes to every stage that declares it; ``stage.key`` to one stage.
        A key no stage declares is an error, so a typo never runs silently with the default.
        Flow-level :class:`Binding` parameters are expanded first.
        """
        params = dict(params or {})
        for binding in self.bindings:
            binding.expand(self.name, params, self.parameter_names())
        per_stage: dict[str, dict[str, Any]] = {s.name: {} for s in self.stages}
        broadcast = {**self.defaults, **{k: v for k, v in params.items() if "." not in k}}
        for key in broadcast:
            if key not in self.parameter_names() and key not in self.defaults:
                known = ", ".join(sorted(self.parameter_names())) or "(none)"
                names = [*self.parameter_names(), *(b.name for b in self.bindings)]
                hint = get_close_matches(key, names, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ParameterError(
                    f"flow {self.name!r}: no stage declares parameter {key!r}{suggestion} (declared: {known}); "
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
