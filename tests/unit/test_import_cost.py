"""Import cost paid by every process: CLI commands, Ray workers, kernels' drivers, test processes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_importing_papermill_and_nbformat_compiles_no_iri_grammar():
    """jsonschema imports rfc3987_syntax eagerly when it is installed, and that module compiles about
    35 Earley grammars with lark at import (1 to 2 s of CPU per process). The lock leaves it out
    (``[tool.uv] override-dependencies`` in pyproject.toml); this catches a re-lock bringing it back."""
    code = ("import sys, papermill, nbformat, jsonschema; "
            "print(sorted(m for m in ('rfc3987_syntax', 'lark') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", (
        f"importing papermill/nbformat loaded {out.stdout.strip()}: rfc3987-syntax is back in the "
        "environment; keep it out with [tool.uv] override-dependencies in pyproject.toml, then make lock")


def test_notebook_validation_still_checks_the_schema():
    """Leaving out the IRI checker must not switch validation off: a malformed notebook still fails."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nbformat.validate(nb)
    nb.cells[0]["cell_type"] = "not-a-cell-type"
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError:
        return
    raise AssertionError("nbformat accepted a cell of an unknown type")


def test_the_venv_ships_compiled_bytecode_for_its_packages():
    """``make install`` compiles the locked packages' bytecode (``uv pip sync --compile-bytecode``):
    with PYTHONDONTWRITEBYTECODE set, nothing else would, and every process would compile MLflow,
    pandas and Ray from source again."""
    import importlib.util

    import mlflow
    import pandas

    missing = [m.__name__ for m in (mlflow, pandas)
               if not Path(importlib.util.cache_from_source(m.__file__)).exists()]
    assert not missing, f"no compiled bytecode for {missing}: run make install (it compiles it)"
