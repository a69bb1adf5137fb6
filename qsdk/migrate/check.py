"""``qsdk check``'s static guard over stage notebooks: what the contract forbids, found before a run.

The kernel guard (:mod:`qsdk.lakehouse.guard`) stops direct reads of lakehouse files while a
stage runs; this finds, without running anything, what a review should catch in any stage
notebook: file I/O on paths instead of ``DataLoader``/``write_table`` (a read of a file the
stage declares in ``sources: [{files: ...}]`` is allowed: that is how external data comes in),
imports from other scripts (``scripts.x``, or a loose ``.py`` next to the notebook), and
``sys.path`` changes. Each finding names the file, the cell and the line in the cell. A notebook
paired with a percent-format ``.py`` (jupytext) must be in step with it.

It parses cells with :mod:`ast` only (no nbformat, no kernel), so it stays fast enough for a
pre-commit hook.
"""

from __future__ import annotations

import ast
import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsdk.errors import StaticCheckError
from qsdk.migrate import fileio
from qsdk.model.registry import Problem


@dataclass(frozen=True)
class NotebookProblem(Problem):
    """A :class:`~qsdk.model.registry.Problem` of kind ``notebook``; ``to_dict`` adds file, cell, line, rule."""

    def to_dict(self) -> dict[str, Any]:
        fields = self.error.fields
        return {**super().to_dict(), **{k: fields.get(k) for k in ("file", "cell", "line", "rule")}}


def check_stage_notebooks(stages: Sequence[Any], *, project_root: Path) -> list[Problem]:
    """Every finding in the notebooks of ``stages`` (:class:`qsdk.model.stage.Stage`), in stage order."""
    out: list[Problem] = []
    for stage in stages:
        files = [s.name for s in stage.sources if s.kind == "files"]
        for error in check_notebook(Path(stage.notebook), sources=files, project_root=project_root):
            out.append(NotebookProblem("notebook", stage.name, error))  # type: ignore[arg-type]
    return out


def check_notebook(path: Path, *, sources: Sequence[str] = (), project_root: Path) -> list[StaticCheckError]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    cells = [(i, _source(c)) for i, c in enumerate(doc.get("cells", [])) if c.get("cell_type") == "code"]
    trees = [(i, tree) for i, src in cells if (tree := _parse(src)) is not None]
    names: dict[str, str] = {}
    for _, tree in trees:
        names.update(fileio.aliases(tree))
    params = _parameter_defaults(doc)
    rel = _rel(path, project_root)
    local = {p.stem for p in path.parent.glob("*.py") if not p.with_suffix(".ipynb").exists()}
    found: list[StaticCheckError] = []
    for index, tree in trees:
        for call in fileio.io_calls(tree, names):
            if call.direction == "read" and _declared(call.path, params, path.parent, sources, project_root):
                continue
            found.append(_error(rel, index, call.node.lineno, "direct_io", _io_message(call)))
        for f in [*fileio.script_imports(tree, local_modules=local), *fileio.sys_path_changes(tree, names)]:
            found.append(_error(rel, index, f.line, f.rule, f.message))
    found.sort(key=lambda e: (e.fields["cell"], e.fields["line"]))
    pair = _pair_problem(path, doc, rel)
    return found + ([pair] if pair else [])


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _parse(source: str) -> ast.Module | None:
    """A cell's code; IPython magics and shell lines are blanked (line numbers stay)."""
    if source.lstrip().startswith("%%"):
        return None
    lines = ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None  # the run reports it, with the kernel's message


def _parameter_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    for cell in doc.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in (cell.get("metadata", {}).get("tags") or []):
            tree = _parse(_source(cell))
            out = {}
            for node in tree.body if tree else []:
                target = node.target if isinstance(node, ast.AnnAssign) else \
                    node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
                value = getattr(node, "value", None)
                if isinstance(target, ast.Name) and value is not None:
                    try:
                        out[target.id] = ast.literal_eval(value)
                    except (ValueError, TypeError, SyntaxError):
                        pass
            return out
    return {}


def _declared(node: ast.expr | None, params: dict[str, Any], folder: Path, sources: Sequence[str],
              root: Path) -> bool:
    """Is this read's path (a literal, or a parameter's default) a file the stage declares?"""
    if not sources:
        return False
    value = node.value if isinstance(node, ast.Constant) else \
        params.get(node.id) if isinstance(node, ast.Name) else None
    if not isinstance(value, str):
        return False
    file = (folder / value).resolve()
    try:
        rel = file.relative_to(root.resolve()).as_posix()
    except ValueError:
        return False
    return any(fnmatch.fnmatch(rel, pattern) for pattern in sources)


def _io_message(call: fileio.IOCall) -> str:
    if call.direction == "read":
        return (f"{call.how}(...) reads a file directly: read a table with qsdk.DataLoader().read('layer.name'), "
                "or declare the file in the stage's sources: [{files: ...}] and read it through a parameter")
    return f"{call.how}(...) writes a file directly: write a table with qsdk.write_table('layer.name', frame)"


def _error(file: str, cell: int, line: int, rule: str, message: str) -> StaticCheckError:
    return StaticCheckError(f"{file}, cell {cell}, line {line}: {message}", file=file, cell=cell, line=line, rule=rule)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------ jupytext pairs


def paired_script(path: Path, doc: dict[str, Any]) -> Path | None:
    """The ``.py`` paired with the notebook (``metadata.jupytext.formats`` names a ``py`` format)."""
    formats = str((doc.get("metadata", {}).get("jupytext") or {}).get("formats", ""))
    return path.with_suffix(".py") if any(f.split(":")[0] == "py" for f in formats.split(",")) else None


def _pair_problem(path: Path, doc: dict[str, Any], rel: str) -> StaticCheckError | None:
    script = paired_script(path, doc)
    if script is None:
        return None
    if not script.is_file():
        return _error(rel, 0, 0, "pair_out_of_sync",
                      f"paired with {script.name}, which is missing: run `jupytext --sync {rel}`")
    import jupytext

    text_cells = jupytext.read(str(script)).cells
    nb_cells = [c for c in doc.get("cells", [])]
    for index, (a, b) in enumerate(zip(nb_cells, text_cells, strict=False)):
        if a.get("cell_type") != b.cell_type or _source(a).strip() != b.source.strip():
            return _error(rel, index, 0, "pair_out_of_sync", _pair_message(script, rel, f"differs at cell {index}"))
    if len(nb_cells) != len(text_cells):
        return _error(rel, min(len(nb_cells), len(text_cells)), 0, "pair_out_of_sync",
                      _pair_message(script, rel, f"has {len(text_cells)} cells, the notebook {len(nb_cells)}"))
    return None


def _pair_message(script: Path, rel: str, what: str) -> str:
    return (f"out of sync with its paired {script.name} ({what}): review which side is right, then "
            f"`jupytext --sync {rel}` (the newer file wins)")
