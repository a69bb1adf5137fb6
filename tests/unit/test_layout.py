"""The package's import graph: no cycles, even through lazy imports (grimp reads every import
statement, function-level ones included; imports under TYPE_CHECKING are types, not dependencies).
The layer contracts themselves are checked by `make lint` (import-linter, pyproject.toml)."""

from __future__ import annotations

import grimp


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
