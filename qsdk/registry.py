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
                      ttl: 10d, features: [...]}}   (feature views, see qsdk.featurestore)

Errors found here (unknown table, missing notebook, a table written by two stages, a cycle)
are raised when the registry loads, before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qsdk import params as P
from qsdk.config import Config
from qsdk.errors import RegistryError, UnknownNameError
from qsdk.featurestore import FeatureView, parse_view
from qsdk.flow import Binding, Flow
from qsdk.lakehouse.contract import TableSpec
from qsdk.nbfile import leading_imports
from qsdk.stage import PartitionSpec, SourceSpec, Stage

_STAGE_KEYS = {"notebook", "inputs", "outputs", "parameters", "partition", "description",
               "timeout", "retries", "resources", "preload", "sources"}
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_FLOW_KEYS = {"stages", "parameters", "description", "bind"}


@dataclass(frozen=True)
class Registry:
    tables: dict[str, TableSpec]
    stages: dict[str, Stage]
    flows: dict[str, Flow]
    root: Path
    features: dict[str, FeatureView] = field(default_factory=dict)

    @classmethod
    def load(cls, config: Config | None = None) -> Registry:
        config = config or Config.load()
        raw = _read_yaml_files(config.pipelines_dir)
        tables = {name: _table(name, spec, origin) for name, (spec, origin) in raw["tables"].items()}
        stages = {
            name: _stage(name, spec, origin, tables, config.project_root)
            for name, (spec, origin) in raw["stages"].items()
        }
        _check_single_writer(stages)
        flows = {name: _flow(name, spec, origin, stages) for name, (spec, origin) in raw["flows"].items()}
        features = {name: parse_view(name, spec, origin, tables) for name, (spec, origin) in raw["features"].items()}
        return cls(tables=tables, stages=stages, flows=flows, root=config.project_root, features=features)

    def flow(self, name: str) -> Flow:
        return _lookup(self.flows, name, "flow")

    def stage(self, name: str) -> Stage:
        return _lookup(self.stages, name, "stage")

    def table(self, name: str) -> TableSpec:
        return _lookup(self.tables, name, "table")

    def feature_view(self, name: str) -> FeatureView:
        return _lookup(self.features, name, "feature view")

    def writer_of(self, table: str) -> Stage | None:
        return next((s for s in self.stages.values() if table in s.outputs), None)


def _lookup(mapping: dict[str, Any], name: str, kind: str) -> Any:
    try:
        return mapping[name]
    except KeyError:
        known = ", ".join(sorted(mapping)) or "(none)"
        raise UnknownNameError(f"unknown {kind} {name!r}; known {kind}s: {known}", known=sorted(mapping)) from None


def _read_yaml_files(folder: Path) -> dict[str, dict[str, tuple[Any, str]]]:
    found: dict[str, dict[str, tuple[Any, str]]] = {"tables": {}, "stages": {}, "flows": {}, "features": {}}
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise RegistryError(f"no registry files (*.yaml) in {folder}")
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RegistryError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise RegistryError(f"{path}: expected a mapping with tables/stages/flows")
        unknown = set(doc) - set(found)
        if unknown:
            raise RegistryError(f"{path}: unknown top-level key(s) {sorted(unknown)}; use tables, stages, flows, features")
        for section, entries in doc.items():
            for name, spec in (entries or {}).items():
                if name in found[section]:
                    raise RegistryError(
                        f"{section[:-1]} {name!r} is declared twice: in {found[section][name][1]} and {path.name}"
                    )
                found[section][name] = (spec or {}, path.name)
    return found


def _table(name: str, spec: dict[str, Any], origin: str) -> TableSpec:
    try:
        return TableSpec(
            name=name,
            columns={str(k): str(v) for k, v in (spec.get("columns") or {}).items()},
            primary_key=tuple(spec.get("primary_key") or ()),
            partition_by=tuple(spec.get("partition_by") or ()),
            description=str(spec.get("description") or ""),
        )
    except RegistryError as exc:
        raise RegistryError(f"{origin}: {exc}") from None
    except Exception as exc:  # TableNameError and friends
        raise RegistryError(f"{origin}: table {name!r}: {exc}") from None


def _stage(name: str, spec: dict[str, Any], origin: str, tables: dict[str, TableSpec], root: Path) -> Stage:
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


def _check_single_writer(stages: dict[str, Stage]) -> None:
    writers: dict[str, str] = {}
    for stage in stages.values():
        for table in stage.outputs:
            if table in writers:
                raise RegistryError(
                    f"table {table!r} is written by two stages, {writers[table]!r} and {stage.name!r}: "
                    "each table has exactly one writer"
                )
            writers[table] = stage.name


def _flow(name: str, spec: dict[str, Any], origin: str, stages: dict[str, Stage]) -> Flow:
    where = f"{origin}: flow {name!r}"
    unknown = set(spec) - _FLOW_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FLOW_KEYS)}")
    members = []
    for stage_name in spec.get("stages") or ():
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
        unknown = [t for t in binding.targets if t not in flow.parameter_names()]
        if unknown or binding.name in flow.parameter_names():
            raise RegistryError(
                f"{where}: bind: {binding.name!r} must be a new name that sets parameters its stages declare "
                f"(undeclared targets: {unknown or '-'})"
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
