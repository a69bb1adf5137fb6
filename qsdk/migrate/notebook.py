"""Build and write the stage notebook (jupytext's ``light`` reader cuts the code into cells)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAIR_FORMATS = "ipynb,py:percent"


def build(code: str, parameters: str, *, markdown: str) -> Any:
    """A notebook: a markdown title, the ``parameters`` cell, then ``code`` cut into cells
    (comment blocks apart from code become markdown cells)."""
    import jupytext
    import nbformat

    body = jupytext.reads(code, fmt="py:light")
    cells = [nbformat.v4.new_markdown_cell(markdown)]
    param_cell = nbformat.v4.new_code_cell(parameters)
    param_cell.metadata["tags"] = ["parameters"]
    cells.append(param_cell)
    for cell in body.cells:
        cell.metadata = {}
        if cell.cell_type == "code":
            cells.append(nbformat.v4.new_code_cell(cell.source))
        else:
            cells.append(nbformat.v4.new_markdown_cell(cell.source))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write(nb: Any, path: Path) -> None:
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def pair(path: Path) -> Path:
    """Pair the notebook at ``path`` with a percent-format ``.py`` next to it (jupytext), so
    reviews diff code, not JSON; ``jupytext --sync`` (or JupyterLab with jupytext) keeps them in step."""
    import jupytext

    nb = jupytext.read(str(path))
    nb.metadata.setdefault("jupytext", {})["formats"] = PAIR_FORMATS
    jupytext.write(nb, str(path))
    script = path.with_suffix(".py")
    jupytext.write(nb, str(script), fmt="py:percent")
    return script
