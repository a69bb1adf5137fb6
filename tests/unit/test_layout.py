"""The package's import graph: no cycles, even through lazy imports (grimp reads every import
statement, function-level ones included; imports under TYPE_CHECKING are types, not dependencies).
The layer contracts are checked by `make lint` (import-linter, pyproject.toml); here, that they
hold and that a deliberate violation breaks them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def test_no_qsdk_module_imports_one_that_imports_it_back():
    graph = grimp.build_graph("qsdk", exclude_type_checking_imports=True)
    cycles = sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )
    assert cycles == [], f"import cycles (importer -> imported, which leads back): {cycles}"


def test_quant_imports_nothing_else_of_qsdk():
    graph = grimp.build_graph("qsdk")
    reached = {m for q in graph.find_descendants("qsdk.quant") | {"qsdk.quant"}
               for m in graph.find_modules_directly_imported_by(q)}
    assert {m for m in reached if not m.startswith("qsdk.quant")} == set()


def _lint_imports(tmp_path: Path, violation: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contracts on a copy of qsdk/ plus ``violation``
    (relative path -> source)."""
    shutil.copytree(ROOT / "qsdk", tmp_path / "qsdk", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for rel, source in violation.items():
        (tmp_path / rel).write_text(source)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold_and_a_deliberate_violation_breaks_them(tmp_path):
    clean = _lint_imports(tmp_path / "clean", {})
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Contracts: 2 kept, 0 broken." in clean.stdout
    broken = _lint_imports(tmp_path / "broken", {
        "qsdk/quant/leak.py": "import qsdk.lakehouse.tables\n",  # quant must import nothing of qsdk
        "qsdk/lakehouse/leak.py": "from qsdk.model import registry\n",  # the lakehouse reaching up
    })
    assert broken.returncode != 0
    assert "Contracts: 0 kept, 2 broken." in broken.stdout, broken.stdout
    assert "qsdk.quant.leak -> qsdk.lakehouse.tables" in broken.stdout
    assert "qsdk.lakehouse.leak -> qsdk.model.registry" in broken.stdout


def test_the_readme_layout_has_one_line_per_package_naming_every_module():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n"):]
    block = section[section.index("```\n") + 4:]
    block = block[:block.index("```\n")]
    lines = {line.split()[0]: line for line in block.splitlines() if line.startswith("qsdk/")}
    packages = sorted(str(p.parent.relative_to(ROOT)) + "/" for p in (ROOT / "qsdk").rglob("__init__.py"))
    assert sorted(lines) == packages  # one line per package, and no line for one that is gone
    for package, line in lines.items():
        described = line[len(package):]
        for module in sorted((ROOT / package).glob("*.py")):
            if module.stem == "__init__" and package != "qsdk/":  # a subpackage's: its public names
                continue
            assert re.search(rf"(?<![\w.]){re.escape(module.stem)}(?!\w)", described), \
                f"README Layout: {package} does not name {module.name}"
