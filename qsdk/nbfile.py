"""Read a notebook's cells fast, for metadata work (parameters, cache keys).

``import nbformat`` costs about a second (its validator loads jsonschema's format checkers,
which build a grammar at import time), and qsdk reads notebooks on paths that must stay fast,
such as deciding that a re-run has nothing to do. A v4 notebook is plain JSON, so we read that
directly; older formats go through ``nbformat`` to be upgraded. Executing and writing notebooks
stays with papermill/nbformat.
"""

from __future__ import annotations

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
