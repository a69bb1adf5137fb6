"""Find file I/O, script imports and ``sys.path`` changes in Python source, statically.

Shared by ``qsdk import-script`` (which proposes tables for what it finds) and ``qsdk check``
(which flags it in stage notebooks). Nothing here executes code: calls are recognised by shape,
with import aliases resolved (``import pandas as pd``, ``from pyarrow import parquet as pq``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Literal

Direction = Literal["read", "write"]

# module function -> (direction, format, index of the path argument, its keyword name)
_FUNCTIONS: dict[str, tuple[Direction, str, int, str]] = {
    "pandas.read_csv": ("read", "csv", 0, "filepath_or_buffer"),
    "pandas.read_parquet": ("read", "parquet", 0, "path"),
    "pandas.read_feather": ("read", "feather", 0, "path"),
    "pandas.read_pickle": ("read", "pickle", 0, "filepath_or_buffer"),
    "pandas.read_excel": ("read", "excel", 0, "io"),
    "pandas.read_json": ("read", "json", 0, "path_or_buf"),
    "pandas.read_hdf": ("read", "hdf", 0, "path_or_buf"),
    "numpy.load": ("read", "npy", 0, "file"),
    "numpy.loadtxt": ("read", "text", 0, "fname"),
    "numpy.genfromtxt": ("read", "text", 0, "fname"),
    "numpy.save": ("write", "npy", 0, "file"),
    "numpy.savez": ("write", "npy", 0, "file"),
    "numpy.savetxt": ("write", "text", 0, "fname"),
    "pyarrow.parquet.read_table": ("read", "parquet", 0, "source"),
    "pyarrow.parquet.ParquetFile": ("read", "parquet", 0, "source"),
    "pyarrow.parquet.ParquetDataset": ("read", "parquet", 0, "path_or_paths"),
    "pyarrow.parquet.write_table": ("write", "parquet", 1, "where"),
    "pyarrow.dataset.dataset": ("read", "parquet", 0, "source"),
    "pyarrow.csv.read_csv": ("read", "csv", 0, "input_file"),
    "deltalake.DeltaTable": ("read", "delta", 0, "table_uri"),
    "deltalake.write_deltalake": ("write", "delta", 0, "table_or_uri"),
    "open": ("write", "text", 0, "file"),  # direction decided by the mode
    "io.open": ("write", "text", 0, "file"),
}
# DataFrame (or any object) methods that write to a path: the receiver is what is written
_WRITE_METHODS = {"to_parquet": "parquet", "to_csv": "csv", "to_feather": "feather", "to_pickle": "pickle",
                  "to_excel": "excel", "to_json": "json", "to_hdf": "hdf"}
_PATH_METHODS = {"read_text": "read", "read_bytes": "read", "write_text": "write", "write_bytes": "write"}
_SYS_PATH_METHODS = {"insert", "append", "extend", "remove", "pop", "clear"}


@dataclass(frozen=True)
class IOCall:
    """One file read or write: ``how`` as written (``pd.read_csv``), ``what`` the data written
    (writes by a method: the receiver; ``np.save``/``pq.write_table``: the data argument)."""

    node: ast.Call
    direction: Direction
    fmt: str
    how: str
    path: ast.expr | None
    what: ast.expr | None = None


@dataclass(frozen=True)
class Finding:
    """A script import or a ``sys.path`` change at ``line``: ``rule`` and a message."""

    rule: Literal["script_import", "sys_path"]
    line: int
    message: str


def aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from every import in ``tree``."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def dotted(node: ast.expr, names: dict[str, str]) -> str | None:
    """``pd.read_csv`` -> ``pandas.read_csv`` (through ``names``); None for other shapes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    head = names.get(node.id, node.id)
    return ".".join([head, *reversed(parts)])


def _arg(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if len(call.args) > index else None


def _open_direction(call: ast.Call) -> Direction:
    mode = _arg(call, 1, "mode")
    text = mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else "r"
    return "write" if set(text) & set("wax+") else "read"


def io_calls(tree: ast.AST, names: dict[str, str] | None = None) -> list[IOCall]:
    """Every file read or write in ``tree``, in source order."""
    names = aliases(tree) if names is None else names
    found = [c for node in ast.walk(tree) if isinstance(node, ast.Call) and (c := _classify(node, names))]
    return sorted(found, key=lambda c: (c.node.lineno, c.node.col_offset))


def _classify(call: ast.Call, names: dict[str, str]) -> IOCall | None:
    name = dotted(call.func, names)
    how = ast.unparse(call.func)
    if name in _FUNCTIONS:
        direction, fmt, index, keyword = _FUNCTIONS[name]
        if name in ("open", "io.open"):
            direction = _open_direction(call)
        what = None
        if name == "pyarrow.parquet.write_table":
            what = _arg(call, 0, "table")
        elif name in ("numpy.save", "numpy.savez", "numpy.savetxt"):
            what = _arg(call, 1, "arr" if name != "numpy.savetxt" else "X")
        elif name == "deltalake.write_deltalake":
            what = _arg(call, 1, "data")
        return IOCall(call, direction, fmt, how, _arg(call, index, keyword), what)
    if isinstance(call.func, ast.Attribute):
        method = call.func.attr
        if method in _WRITE_METHODS:
            path = _arg(call, 0, "path" if method != "to_csv" else "path_or_buf")
            if path is None:  # df.to_csv() returns a string: no file
                return None
            return IOCall(call, "write", _WRITE_METHODS[method], how, path, call.func.value)
        if method in _PATH_METHODS and not call.args[1:] and _looks_like_path(call.func.value, names):
            return IOCall(call, _PATH_METHODS[method], "text", how, call.func.value)  # type: ignore[arg-type]
    return None


def _looks_like_path(node: ast.expr, names: dict[str, str]) -> bool:
    """``Path(...)`` or a name: ``p.read_text()``; not ``obj.attr.read_text()`` on other objects."""
    if isinstance(node, ast.Call):
        return (dotted(node.func, names) or "").endswith("Path")
    return isinstance(node, ast.Name | ast.BinOp)


def script_imports(tree: ast.AST, *, local_modules: set[str] = frozenset()) -> list[Finding]:  # type: ignore[assignment]
    """Imports from ``scripts`` (``from scripts.x import y``, ``import scripts.x``) or of a loose
    module in ``local_modules`` (a ``.py`` next to the script or notebook): shared code that
    belongs in a package module."""
    out = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level:
            modules = ["." * node.level + (node.module or "")]
        for module in modules:
            top = module.split(".")[0]
            if top == "scripts" or top in local_modules or module.startswith("."):
                out.append(Finding("script_import", getattr(node, "lineno", 0),
                                   f"imports {module!r} from another script: move the shared code into a "
                                   "package module (e.g. qsdk/quant/ or your project's package) and import it "
                                   "from there"))
    return out


def sys_path_changes(tree: ast.AST, names: dict[str, str] | None = None) -> list[Finding]:
    """``sys.path.insert(...)``, ``sys.path = ...``, ``sys.path += ...``, ``site.addsitedir(...)``."""
    names = aliases(tree) if names is None else names
    out = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call):
            name = dotted(node.func, names) or ""
            if name == "site.addsitedir" or (name.startswith("sys.path.") and
                                             name.rsplit(".", 1)[1] in _SYS_PATH_METHODS):
                target = name
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                base = t.value if isinstance(t, ast.Subscript) else t
                if dotted(base, names) == "sys.path":
                    target = "sys.path"
        if target:
            out.append(Finding("sys_path", getattr(node, "lineno", 0),
                               f"changes the import path ({target}): import from an installed package "
                               "module instead of adding folders to sys.path"))
    return out
