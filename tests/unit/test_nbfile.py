"""Reading notebooks without nbformat: the leading imports a pre-warmed kernel may preload."""

from __future__ import annotations

from qsdk.nbfile import leading_imports


def _cells(*sources: str, parameters: int | None = None) -> list[dict]:
    return [{"cell_type": "code", "source": s, "metadata": {"tags": ["parameters"]} if i == parameters else {}}
            for i, s in enumerate(sources)]


def test_imports_before_any_other_code_in_cell_order():
    cells = _cells('"""Docs."""\nfrom __future__ import annotations\nimport numpy as np, json',
                   "from qsdk.quant import calendar as cal, features\nimport pandas")
    assert leading_imports(cells) == ("numpy", "json", "qsdk.quant", "qsdk.quant.calendar",
                                      "qsdk.quant.features", "pandas")


def test_the_scan_stops_at_the_first_statement_that_is_not_an_import():
    # the environment is set for numpy's import: numpy must not be imported ahead of it
    cells = _cells("import os\nos.environ['OMP_NUM_THREADS'] = '1'\nimport numpy", "import pandas")
    assert leading_imports(cells) == ("os",)


def test_parameters_cell_and_markdown_are_skipped_magics_do_not_count():
    cells = _cells("from typing import Literal\nx: int = 1", "%load_ext autoreload\n!echo hi\nimport pandas",
                   "import scipy", parameters=0)
    cells.insert(1, {"cell_type": "markdown", "source": "x = 1", "metadata": {}})
    assert leading_imports(cells) == ("pandas", "scipy")


def test_relative_imports_cell_magics_and_syntax_errors_end_the_scan():
    assert leading_imports(_cells("import a", "from . import b", "import c")) == ("a",)
    assert leading_imports(_cells("import a", "%%bash\necho", "import c")) == ("a",)
    assert leading_imports(_cells("import a", "def (", "import c")) == ("a",)
