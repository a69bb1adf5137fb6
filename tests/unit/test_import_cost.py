"""Import cost paid by every process: CLI commands, Ray workers, kernels' drivers, test processes."""
from __future__ import annotations

import subprocess
import sys


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
