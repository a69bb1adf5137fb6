"""Add a migrated stage (its tables, and its flow) to a registry file.

An existing file is edited round-trip with ``ruamel.yaml``, so its comments, order and quotes
stay (one cosmetic change: ruamel writes a one-pair mapping inside a flow list, ``[{a: b}]``, as
``[a: b]``, which YAML reads as the same thing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qsdk.errors import MigrationError


def target(root: Path, registry: Any, *, stage: str, flow: str | None, registry_file: str | Path | None) -> Path:
    """The file that declares ``flow`` (a flow lives in one file), else ``registry_file``, else
    ``pipelines/<flow or stage>.yaml``."""
    if flow and flow in registry.flows:
        home = _declaring_file(root / "pipelines", flow)
        if registry_file and home and Path(root / registry_file).resolve() != home.resolve():
            raise MigrationError(f"flow {flow!r} is declared in {home.name}; the stage must go there "
                                 f"(drop --registry or name that file)")
        if home:
            return home
    if registry_file:
        path = Path(registry_file)
        path = path if path.is_absolute() else root / path
        if path.parent.resolve() != (root / "pipelines").resolve() or path.suffix not in (".yaml", ".yml"):
            raise MigrationError(f"registry file {registry_file}: use a .yaml file in {root / 'pipelines'}")
        return path
    return root / "pipelines" / f"{flow or stage}.yaml"


def _declaring_file(folder: Path, flow: str) -> Path | None:
    import yaml

    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        doc = yaml.safe_load(path.read_text()) or {}
        if isinstance(doc, dict) and flow in (doc.get("flows") or {}):
            return path
    return None


def stage_entry(*, notebook: str, description: str, inputs: list[str], outputs: list[str],
                sources: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"notebook": notebook, "description": description}
    if inputs:
        entry["inputs"] = list(inputs)
    if outputs:
        entry["outputs"] = list(outputs)
    if sources:
        entry["sources"] = [{"files": s} for s in sources]
    return entry


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # one line per entry, as people write them
    yaml.preserve_quotes = True
    return yaml


def load(path: Path) -> Any:
    """The registry file's document, round-trip (before anything is written: a bad file stops the import)."""
    from ruamel.yaml.error import YAMLError

    try:
        doc = _yaml().load(path.read_text()) if path.is_file() else None
    except YAMLError as exc:
        raise MigrationError(f"{path} is not valid YAML, so the stage cannot be added to it: {exc}") from exc
    doc = doc if doc is not None else {}
    if not hasattr(doc, "setdefault"):
        raise MigrationError(f"{path} does not hold a mapping of tables/stages/flows: fix it or pick another file")
    return doc


def write(path: Path, doc: Any, *, stage: str, entry: dict[str, Any], tables: dict[str, dict[str, Any]],
          flow: str | None) -> None:
    for name, spec in tables.items():
        doc.setdefault("tables", {})[name] = spec
    doc.setdefault("stages", {})[stage] = entry
    if flow:
        flows = doc.setdefault("flows", {})
        spec = flows.setdefault(flow, {"description": "Migrated from legacy scripts by qsdk import-script.",
                                       "stages": []})
        spec.setdefault("stages", []).append(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        _yaml().dump(doc, fh)
