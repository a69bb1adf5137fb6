"""The stage registry: ``pipelines/*.yaml`` -> tables, stages and flows, validated on load.

Each YAML file may hold any of four top-level keys::

    tables:  {layer.name: {columns: {col: type}, primary_key: [...], partition_by: [...]}}
    stages:  {name: {notebook: path, inputs: [...], outputs: [...], parameters: {...},
                     partition: {by: year|month, every: 1, start: start, end: end},
                     timeout: seconds, retries: n, resources: {num_cpus: 1, memory: bytes},
                     preload: auto | false | [module, ...]}}
    flows:   {name: {stages: [...], parameters: {...}, description: ...,
                     bind: {date: {to: [start, end], calendar: XNYS}}}}
    features: {name: {table: layer.name, entity: symbol, event_time: col, known_time: col,
                      ttl: 10d, features: [...]}}   (feature views, see qsdk.model.featurestore)

Errors found here (unknown table, missing notebook, a table written by two stages, a cycle)
are found when the registry loads, before anything runs, and break only what needs them: each
is kept as a :class:`Problem` (``qsdk check`` lists them all), and looking the broken name up
raises its error, while every other table, stage, flow and feature view loads and runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import yaml

from qsdk.config import Config
from qsdk.errors import QsdkError, RegistryError, UnknownNameError
from qsdk.lakehouse.contract import TableSpec
from qsdk.model import params as P
from qsdk.model.featurestore import FeatureView, parse_view
from qsdk.model.flow import Binding, Flow
from qsdk.model.stage import PartitionSpec, SourceSpec, Stage
from qsdk.nbfile import leading_imports

# libyaml's parser when PyYAML was built with it (the wheels are): a registry load is on every
# command's path, and the pure-Python parser is most of it. Same safe subset of YAML.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_T = TypeVar("_T")

_STAGE_KEYS = {"notebook", "inputs", "outputs", "parameters", "partition", "description",
               "timeout", "retries", "resources", "preload", "sources"}
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_FLOW_KEYS = {"stages", "parameters", "description", "bind"}


Kind = Literal["file", "table", "stage", "flow", "feature view"]


@dataclass(frozen=True)
class Problem:
    """One broken entry of the registry, kept with its error instead of failing the whole load.

    ``inputs``/``outputs``: a broken stage's declared tables, as far as its entry lists them;
    ``stages``: a broken flow's declared stages (so ``qsdk show`` can still draw them).
    """

    kind: Kind
    name: str
    error: QsdkError
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        return str(self.error)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "error": self.message,
                "error_type": type(self.error).__name__}

    def raise_(self) -> NoReturn:
        """Raise a fresh copy of the stored error (same class and fields)."""
        raise type(self.error)(self.error.message, **self.error.fields)


@dataclass(frozen=True)
class Registry:
    """Every valid table, stage, flow and feature view; each broken one is a :class:`Problem`.

    One bad notebook or entry breaks only what needs it: the entry itself, the stages that read
    or write a broken table, and the flows that list a broken stage. Looking a broken name up
    (:meth:`flow`, :meth:`stage`...) raises its error, so a run that needs it fails before any
    kernel starts, while every other flow runs.
    """

    tables: dict[str, TableSpec]
    stages: dict[str, Stage]
    flows: dict[str, Flow]
    root: Path
    features: dict[str, FeatureView] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()

    @classmethod
    def load(cls, config: Config | None = None) -> Registry:
        config = config or Config.load()
        raw, problems = _read_yaml_files(config.pipelines_dir)
        tables = _build("table", raw["tables"], problems, _table)
        broken_tables = {p.name: p for p in problems if p.kind == "table"}
        stages = _build("stage", raw["stages"], problems, lambda name, spec, origin: _stage(
            name, spec, origin, tables, config.project_root, broken_tables))
        _check_single_writer(stages, problems)
        broken_stages = {p.name: p for p in problems if p.kind == "stage"}
        flows = _build("flow", raw["flows"], problems,
                       lambda name, spec, origin: _flow(name, spec, origin, stages, broken_stages))
        features = _build("feature view", raw["features"], problems,
                          lambda name, spec, origin: parse_view(name, spec, origin, tables))
        return cls(tables=tables, stages=stages, flows=flows, root=config.project_root, features=features,
                   problems=tuple(problems))

    def flow(self, name: str) -> Flow:
        return self._lookup(self.flows, name, "flow")

    def stage(self, name: str) -> Stage:
        return self._lookup(self.stages, name, "stage")

    def table(self, name: str) -> TableSpec:
        return self._lookup(self.tables, name, "table")

    def feature_view(self, name: str) -> FeatureView:
        return self._lookup(self.features, name, "feature view")

    def writer_of(self, table: str) -> Stage | None:
        return next((s for s in self.stages.values() if table in s.outputs), None)

    def problem(self, kind: Kind, name: str) -> Problem | None:
        """The problem that broke ``name`` (a ``kind``), or None when it loaded."""
        return next((p for p in self.problems if p.kind == kind and p.name == name), None)

    def flow_names(self) -> list[str]:
        """Every declared flow, valid or broken, in declaration order."""
        return [*self.flows, *(p.name for p in self.problems if p.kind == "flow")]

    def _lookup(self, mapping: dict[str, _T], name: str, kind: Kind) -> _T:
        if name not in mapping and (broken := self.problem(kind, name)) is not None:
            broken.raise_()
        return _lookup(mapping, name, kind)


def _lookup(mapping: dict[str, _T], name: str, kind: str) -> _T:
    try:
        return mapping[name]
    except KeyError:
        known = ", ".join(sorted(mapping)) or "(none)"
        raise UnknownNameError(f"unknown {kind} {name!r}; known {kind}s: {known}", known=sorted(mapping)) from None


_Raw = dict[str, tuple[Any, str]]


def _build(kind: Kind, raw: _Raw, problems: list[Problem], make: Callable[[str, Any, str], Any]) -> dict[str, Any]:
    """``make`` each entry; an entry that fails becomes a :class:`Problem` and is left out."""
    out: dict[str, Any] = {}
    for name, (spec, origin) in raw.items():
        if isinstance(spec, QsdkError):  # declared twice
            problems.append(Problem(kind, name, spec))
            continue
        try:
            if not isinstance(spec, dict):
                raise RegistryError(f"{origin}: {kind} {name!r}: expected a mapping, got {_short(spec)}")
            out[name] = make(name, spec, origin)
        except (QsdkError, TypeError, ValueError, AttributeError) as exc:  # an entry of the wrong shape
            if not isinstance(exc, QsdkError):
                exc = RegistryError(f"{origin}: {kind} {name!r}: {type(exc).__name__}: {exc}")
            problems.append(Problem(kind, name, exc, inputs=_names(spec, "inputs"), outputs=_names(spec, "outputs"),
                                    stages=_names(spec, "stages")))
    return out


def _names(spec: Any, key: str) -> tuple[str, ...]:
    values = spec.get(key) if isinstance(spec, dict) else None
    return tuple(v for v in values if isinstance(v, str)) if isinstance(values, list) else ()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_yaml_files(folder: Path) -> tuple[dict[str, _Raw], list[Problem]]:
    """Entries per section, each ``(spec, file name)``; a name declared twice maps to its error
    instead, and a file that is not valid YAML is a ``file`` problem (its entries are unknown)."""
    found: dict[str, _Raw] = {"tables": {}, "stages": {}, "flows": {}, "features": {}}
    problems: list[Problem] = []
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise RegistryError(f"no registry files (*.yaml) in {folder}")
    for path in files:
        try:
            doc = _read_doc(path, set(found))
        except RegistryError as exc:
            problems.append(Problem("file", path.name, exc))
            continue
        for section, entries in doc.items():
            for name, spec in (entries or {}).items():
                if name in found[section]:
                    prev, origin = found[section][name]
                    first = prev.fields["first"] if isinstance(prev, QsdkError) else origin
                    found[section][name] = (RegistryError(
                        f"{section[:-1]} {name!r} is declared twice: in {first} and {path.name}; keep one",
                        first=first), path.name)
                    continue
                found[section][name] = (spec or {}, path.name)
    return found, problems


def _read_doc(path: Path, sections: set[str]) -> dict[str, Any]:
    try:
        doc = yaml.load(path.read_text(), Loader=_YAML_LOADER) or {}
    except yaml.YAMLError as exc:  # one line: where, and what the parser expected
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RegistryError(f"{path}: invalid YAML{where}: {what}") from exc
    if not isinstance(doc, dict):
        raise RegistryError(f"{path}: expected a mapping with tables/stages/flows")
    unknown = set(doc) - sections
    if unknown:
        raise RegistryError(f"{path}: unknown top-level key(s) {sorted(unknown)}; use tables, stages, flows, features")
    bad = [k for k, v in doc.items() if v is not None and not isinstance(v, dict)]
    if bad:
        raise RegistryError(f"{path}: {', '.join(bad)} must map names to entries")
    return doc


def _table(name: str, spec: dict[str, Any], origin: str) -> TableSpec:
    from qsdk.lakehouse.checks import RESERVED_LAYER, parse_checks

    if isinstance(name, str) and name.split(".", 1)[0] == RESERVED_LAYER:
        raise RegistryError(f"{origin}: table {name!r}: the layer {RESERVED_LAYER!r} is reserved for qsdk's "
                            "own tables (data check results); pick another layer")
    try:
        columns = {str(k): str(v) for k, v in (spec.get("columns") or {}).items()}
        return TableSpec(
            name=name,
            columns=columns,
            primary_key=tuple(spec.get("primary_key") or ()),
            partition_by=tuple(spec.get("partition_by") or ()),
            description=str(spec.get("description") or ""),
            checks=parse_checks(name, columns, spec.get("checks")),
        )
    except RegistryError as exc:
        raise RegistryError(f"{origin}: {exc}") from None
    except (QsdkError, TypeError, ValueError, AttributeError) as exc:  # TableNameError, a non-mapping columns:
        raise RegistryError(f"{origin}: table {name!r}: {exc}") from None


def _stage(name: str, spec: dict[str, Any], origin: str, tables: dict[str, TableSpec], root: Path,
           broken_tables: Mapping[str, Problem]) -> Stage:
    where = f"{origin}: stage {name!r}"
    unknown = set(spec) - _STAGE_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_STAGE_KEYS)}")
    if "notebook" not in spec:
        raise RegistryError(f"{where}: missing 'notebook:'")
    notebook = (root / spec["notebook"]).resolve()
    if not notebook.is_file():
        raise RegistryError(f"{where}: notebook {spec['notebook']} does not exist (looked in {notebook})")
    io: dict[str, tuple[str, ...]] = {}
    for key in ("inputs", "outputs"):
        names = tuple(spec.get(key) or ())
        for table in names:
            if table in broken_tables:
                raise RegistryError(f"{where}: {key[:-1]} table {table!r} is broken: {broken_tables[table].message}")
            if table not in tables:
                raise RegistryError(
                    f"{where}: {key[:-1]} table {table!r} is not declared under tables:; "
                    f"known: {', '.join(sorted(tables)) or '(none)'}"
                )
        io[key] = names
    part = spec.get("partition")
    partition = None
    if part:
        by = part.get("by") if isinstance(part, dict) else part
        if by not in ("year", "month"):
            raise RegistryError(f"{where}: partition.by must be 'year' or 'month', got {by!r}")
        every = part.get("every", 1) if isinstance(part, dict) else 1
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise RegistryError(f"{where}: partition.every must be a whole number of {by}s >= 1, got {every!r}")
        partition = PartitionSpec(by=by, start=part.get("start", "start"), end=part.get("end", "end"),
                                  every=every) if isinstance(part, dict) else PartitionSpec(by=by)
    cells = P.read_notebook_cells(notebook)  # once: for the parameters and the preload scan
    declared = P.read_parameters(notebook, cells=cells)
    defaults = dict(spec.get("parameters") or {})
    for key, value in defaults.items():
        if key not in declared:
            raise RegistryError(
                f"{where}: parameters: {key!r} is not declared in the parameters cell of "
                f"{notebook.name} (declared: {', '.join(declared) or '(none)'})"
            )
        try:
            P.coerce(declared[key], value, stage=name)
        except Exception as exc:
            raise RegistryError(f"{where}: parameters: {exc}") from None
    stage = Stage(
        name=name,
        notebook=notebook,
        inputs=io["inputs"],
        outputs=io["outputs"],
        params=declared,
        defaults=defaults,
        partition=partition,
        description=str(spec.get("description") or ""),
        timeout=float(spec["timeout"]) if spec.get("timeout") else None,
        retries=int(spec.get("retries") or 0),
        resources=dict(spec.get("resources") or {}),
        preload=_preload(spec.get("preload", "auto"), cells, notebook, where),
        sources=_sources(spec.get("sources"), where),
    )
    stage.check_partition_params()
    return stage


def _preload(value: Any, cells: list[dict[str, Any]], notebook: Path, where: str) -> tuple[str, ...]:
    """Modules to import into a pre-warmed kernel ahead of this stage: ``auto`` (default) the
    imports the notebook runs first (:func:`qsdk.nbfile.leading_imports`), ``false`` none, or
    an explicit list."""
    if value == "auto":
        modules = leading_imports(cells)
        # `qsdk.DataLoader` / `qsdk.write_table` load the lakehouse module on first use
        return _not_local((*modules, "qsdk.lakehouse.loader") if "qsdk" in modules else modules, notebook)
    if value is False or value is None:
        return ()
    if isinstance(value, list) and all(isinstance(m, str) and _MODULE.fullmatch(m) for m in value):
        return _not_local(tuple(value), notebook)
    raise RegistryError(
        f"{where}: preload must be 'auto', false or a list of module names such as "
        f"[pandas, qsdk.quant.features], got {value!r}"
    )


def _sources(value: Any, where: str) -> tuple[SourceSpec, ...]:
    """``sources: [{package: bokeh-sampledata}, {files: "data/*.csv"}]``: data outside the
    lakehouse whose identity belongs to the stage's cache key."""
    items = value or []
    out = []
    for item in items if isinstance(items, list) else [items]:
        if not (isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ("package", "files")
                and isinstance(next(iter(item.values())), str) and next(iter(item.values()))):
            raise RegistryError(
                f"{where}: sources: each entry is {{package: DISTRIBUTION}} or {{files: GLOB}} (a glob "
                f"under the project root), got {item!r}"
            )
        (kind, name), = item.items()
        out.append(SourceSpec(kind, name))
    return tuple(out)


def _not_local(modules: tuple[str, ...], notebook: Path) -> tuple[str, ...]:
    """Leave out modules that live beside the notebook (``helpers.py``, ``lib/``): the notebook
    imports those from its own folder, which a kernel warmed elsewhere would not."""
    here = notebook.parent
    return tuple(m for m in modules if not ((here / f"{m.split('.')[0]}.py").exists()
                                            or (here / m.split(".")[0]).is_dir()))


def _check_single_writer(stages: dict[str, Stage], problems: list[Problem]) -> None:
    """A table written by two stages breaks both: which one is right is not ours to guess."""
    writers: dict[str, list[str]] = {}
    for stage in stages.values():
        for table in stage.outputs:
            writers.setdefault(table, []).append(stage.name)
    for table, names in writers.items():
        if len(names) < 2:
            continue
        error = (f"table {table!r} is written by two stages, {names[0]!r} and {names[1]!r}: "
                 "each table has exactly one writer")
        for name in names:
            if name in stages:
                stage = stages.pop(name)
                problems.append(Problem("stage", name, RegistryError(f"stage {name!r}: {error}"),
                                        inputs=stage.inputs, outputs=stage.outputs))


def _flow(name: str, spec: dict[str, Any], origin: str, stages: dict[str, Stage],
          broken_stages: Mapping[str, Problem]) -> Flow:
    where = f"{origin}: flow {name!r}"
    unknown = set(spec) - _FLOW_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FLOW_KEYS)}")
    members = []
    for stage_name in spec.get("stages") or ():
        if stage_name in broken_stages:
            raise RegistryError(f"flow {name!r} needs stage {stage_name!r}, which is broken: "
                                f"{broken_stages[stage_name].message} (`qsdk check` lists every problem)",
                                flow=name, stage=stage_name)
        if stage_name not in stages:
            raise RegistryError(f"{where}: unknown stage {stage_name!r}; known: {', '.join(sorted(stages))}")
        members.append(stages[stage_name])
    if not members:
        raise RegistryError(f"{where}: lists no stages")
    defaults = dict(spec.get("parameters") or {})
    flow = Flow(name=name, stages=tuple(members), description=str(spec.get("description") or ""),
                defaults=defaults, bindings=_bindings(spec.get("bind") or {}, where))
    undeclared = set(defaults) - flow.parameter_names()
    if undeclared:
        raise RegistryError(f"{where}: parameters {sorted(undeclared)} are declared by none of its stages")
    for binding in flow.bindings:
        targets = [t for t in binding.targets if t not in flow.parameter_names()]
        if targets or binding.name in flow.parameter_names():
            raise RegistryError(
                f"{where}: bind: {binding.name!r} must be a new name that sets parameters its stages declare "
                f"(undeclared targets: {targets or '-'})"
            )
    return flow


def _bindings(spec: Any, where: str) -> tuple[Binding, ...]:
    """``bind: {date: {to: [start, end], calendar: XNYS, required: true}}``."""
    if not isinstance(spec, dict):
        raise RegistryError(f"{where}: bind: must map a parameter name to {{to: [...], calendar: ...}}")
    out = []
    for name, entry in spec.items():
        if not isinstance(entry, dict) or not entry.get("to") or set(entry) - {"to", "calendar", "required"}:
            raise RegistryError(
                f"{where}: bind: {name!r} needs {{to: [parameters], calendar: CODE (optional), "
                "required: true|false (optional)}}"
            )
        targets = entry["to"] if isinstance(entry["to"], list) else [entry["to"]]
        out.append(Binding(name=str(name), targets=tuple(str(t) for t in targets),
                           required=bool(entry.get("required", True)),
                           session_calendar=str(entry["calendar"]) if entry.get("calendar") else None))
    return tuple(out)
