"""The code a task's result depends on beyond its notebook: the modules it imported.

Two halves:

* **In the kernel** (:func:`start_recording`, :func:`dump_recorded`, called by
  :mod:`qsdk.inkernel`): every ``import`` statement and ``importlib.import_module`` call made
  while the notebook runs is noted as an edge *importer -> imported*, whatever module runs it
  (the notebook itself is ``__main__``). At the end the edges and the imported modules' files
  are written to the task's staging folder (``imports.json``).
* **In the driver** (:func:`closure`): from the edges whose importer is the notebook or a
  project module, the *code closure*: every project or qsdk module reached, followed through
  the static module-level imports of each (a pre-warmed kernel imported some modules before
  the notebook started, so their own imports ran unrecorded), each with a content hash; and
  the distribution version of every third-party package the notebook or project code imported.

Only edges from the notebook and from project code count, so the closure does not depend on
which modules a pre-warmed kernel happened to import ahead, nor on what pandas imports inside
itself. Hashes are memoised by (path, size, mtime), so a check re-hashes a file only when it
changed on disk.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMPORTS_FILE = "imports.json"
_NOTEBOOK = "__main__"

# ------------------------------------------------------------------ in the kernel
_edges: set[tuple[str, str]] = set()
_originals: dict[str, Any] = {}


def start_recording() -> None:
    """Wrap ``builtins.__import__`` and ``importlib.import_module`` to note every import."""
    import builtins
    import importlib

    if _originals:
        return
    original_import, original_import_module = builtins.__import__, importlib.import_module
    _originals.update(import_=original_import, import_module=original_import_module)

    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        module = original_import(name, globals, locals, fromlist, level)
        try:
            _note_statement(name, globals, fromlist, level)
        except Exception:  # noqa: BLE001 - recording must never break an import
            pass
        return module

    def recording_import_module(name, package=None):
        module = original_import_module(name, package)
        try:
            importer = sys._getframe(1).f_globals.get("__name__", "")
            _edges.add((importer, module.__name__))
        except Exception:  # noqa: BLE001
            pass
        return module

    builtins.__import__ = recording_import
    importlib.import_module = recording_import_module


def _note_statement(name: str, globals: Mapping[str, Any] | None, fromlist: Any, level: int) -> None:
    importer = (globals or {}).get("__name__", "")
    if level:
        from importlib.util import resolve_name

        base = resolve_name("." * level + name, (globals or {}).get("__package__") or "") if name else \
            resolve_name("." * level, (globals or {}).get("__package__") or "")
    else:
        base = name
    _edges.add((importer, base))
    for item in fromlist or ():
        if isinstance(item, str) and item != "*" and f"{base}.{item}" in sys.modules:
            _edges.add((importer, f"{base}.{item}"))


def stop_recording() -> None:
    import builtins
    import importlib

    if _originals:
        builtins.__import__ = _originals.pop("import_")
        importlib.import_module = _originals.pop("import_module")


def dump_recorded(staging_dir: str | Path) -> Path:
    """Write the recorded edges and each imported module's file to ``imports.json``."""
    stop_recording()
    files: dict[str, str | None] = {}
    for importer, imported in _edges:
        for name in (importer, *_parents(imported)):
            if name not in files:
                module = sys.modules.get(name)
                files[name] = getattr(module, "__file__", None) if module is not None else None
    path = Path(staging_dir) / IMPORTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"edges": sorted(_edges), "files": files}))
    return path


def _parents(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: importing a submodule runs its packages' ``__init__``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]
