"""A throw-away one-stage project for the latency and write benchmarks."""

from __future__ import annotations

from pathlib import Path

import nbformat
import yaml
from nbformat.v4 import new_code_cell, new_notebook

PARAMS = 'rows: int = 10\nout: str = ""'
BUILD = ("import numpy as np, pandas as pd\n"
         "frame = pd.DataFrame({'k': np.arange(rows, dtype='int64'), 'v': np.random.default_rng(0).random(rows)})")
QSDK_WRITE = "import qsdk\nqsdk.write_table('bronze.trivial', frame, mode='overwrite')"
DELTA_WRITE = "from deltalake import write_deltalake\nwrite_deltalake(out, frame, mode='overwrite')"


def notebook(path: Path, *cells: str, params: str = PARAMS) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *(new_code_cell(c) for c in cells)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def project(root: Path) -> Path:
    """``root`` with flow ``trivial`` (writes ``bronze.trivial``) and ``notebooks/plain.ipynb``,
    the same notebook writing with ``write_deltalake`` itself (the papermill baseline)."""
    stage = notebook(root / "notebooks" / "trivial.ipynb", BUILD, QSDK_WRITE)
    notebook(root / "notebooks" / "plain.ipynb", BUILD, DELTA_WRITE)
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    doc = {"tables": {"bronze.trivial": {"columns": {"k": "int64", "v": "float64"}, "primary_key": ["k"]}},
           "stages": {"trivial": {"notebook": str(stage.relative_to(root)), "outputs": ["bronze.trivial"],
                                  "preload": False}},
           "flows": {"trivial": {"stages": ["trivial"]}}}
    (root / "pipelines" / "trivial.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root
