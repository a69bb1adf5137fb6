"""Read a notebook's cells fast, for metadata work (parameters, cache keys).

``import nbformat`` costs about a second (its validator loads jsonschema's format checkers,
which build a grammar at import time), and qsdk reads notebooks on paths that must stay fast,
such as deciding that a re-run has nothing to do. A v4 notebook is plain JSON, so we read that
directly; older formats go through ``nbformat`` to be upgraded. Executing and writing notebooks
stays with papermill/nbformat.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any


def read_cells(path: str | Path) -> list[dict[str, Any]]:
    """Cells of the notebook at ``path``: dicts with ``cell_type``, ``source`` (str), ``metadata``."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("nbformat", 0) < 4:
        import nbformat

        doc = nbformat.read(str(path), as_version=4)
    cells = []
    for cell in doc.get("cells", []):
        source = cell.get("source", "")
        cells.append({
            "cell_type": cell.get("cell_type"),
            "source": "".join(source) if isinstance(source, list) else source,
            "metadata": cell.get("metadata", {}) or {},
        })
    return cells


def tags(cell: dict[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []) or [])


def leading_imports(cells: list[dict[str, Any]]) -> tuple[str, ...]:
    """Modules the notebook imports before it runs any code of its own, in order.

    Pre-warmed kernels import these ahead of time (:class:`qsdk.execution.kernels.KernelPool`), so only
    imports that would run first anyway qualify: the scan walks the code cells in order, skips
    the ``parameters`` cell (literal assignments) and docstrings, and stops at the first other
    statement. An import after ``os.environ[...] = ...`` or ``matplotlib.use(...)`` is
    therefore never moved ahead of it. ``from a.b import c`` yields ``a.b`` and ``a.b.c``
    (``c`` may be a submodule; a name that is not one is skipped at preload time).
    """
    modules: dict[str, None] = {}
    for cell in cells:
        if cell.get("cell_type") != "code" or "parameters" in tags(cell):
            continue
        source = cell.get("source", "")
        if source.lstrip().startswith("%%"):
            break  # a cell magic: not Python
        try:
            tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            break
        for node in tree.body:
            if isinstance(node, ast.Import):
                modules.update(dict.fromkeys(alias.name for alias in node.names))
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module == "__future__":
                    continue
                modules[node.module] = None
                modules.update(dict.fromkeys(f"{node.module}.{a.name}" for a in node.names if a.name != "*"))
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                continue
            else:
                return tuple(modules)
    return tuple(modules)
