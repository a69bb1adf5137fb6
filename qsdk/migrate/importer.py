"""The steps of ``qsdk import-script`` (see :mod:`qsdk.migrate`)."""

from __future__ import annotations

import ast
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from qsdk.errors import MigrationError
from qsdk.migrate import contracts, convert, fileio, notebook, registryfile
from qsdk.migrate.scriptcli import (
    ScriptParam,
    argparse_params,
    click_command,
    click_params,
    constant_params,
    parameters_cell,
)

_STAGE = re.compile(r"^[a-z_][a-z0-9_]*$")
_TODO = "# qsdk: TODO"


@dataclass
class IOItem:
    """One file read or write of the script and what became of it.

    ``status``: ``table`` (replaced by DataLoader.read / write_table), ``source`` (an external
    file the stage keeps reading, declared in ``sources:``) or ``todo`` (left for a human).
    """

    line: int
    how: str
    direction: Literal["read", "write"]
    path: str | None
    status: Literal["table", "source", "todo"]
    table: str | None = None
    reason: str = ""


@dataclass
class ImportReport:
    script: str
    stage: str
    notebook: str
    registry_file: str
    flow: str | None
    parameters: list[dict[str, Any]]
    io: list[IOItem]
    tables: dict[str, dict[str, Any]]
    blockers: list[str]
    notes: list[str]
    manual: list[str] = field(default_factory=list)  # lines the rewrite could not finish
    paired: str | None = None
    dvc: str = ""

    @property
    def needs_human(self) -> list[str]:
        todo = [f"line {i.line}: {i.how} ({i.reason})" for i in self.io if i.status == "todo"]
        empty = [f"table {t}: declare its columns in {self.registry_file}" for t, spec in self.tables.items()
                 if not spec.get("columns")]
        return [*self.blockers, *self.manual, *todo, *empty]

    def summary(self) -> str:
        """What ``qsdk import-script`` prints: parameters, file I/O, notes, what needs a human."""
        head = f"stage {self.stage}: {self.notebook}, entry in {self.registry_file}"
        head += (f", flow {self.flow}" if self.flow else "") + (f", paired with {self.paired}" if self.paired else "")
        lines = [head, f"parameters ({len(self.parameters)}):"]
        lines += [f"  {p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']!r}")
                  + f"   <- {p['from']}" for p in self.parameters]
        lines.append(f"file I/O ({len(self.io)}):")
        for item in self.io:
            where = {"table": f"-> {item.table}", "source": "kept: declared source", "todo": "TODO"}[item.status]
            lines.append(f"  line {item.line}: {item.how} {item.direction} {item.path or '(computed path)'} {where}")
        lines += [f"note: {note}" for note in self.notes]
        todo = self.needs_human
        lines.append(f"needs a human ({len(todo)}):" if todo else "needs a human: nothing")
        lines += [f"  {line}" for line in todo]
        return "\n".join([*lines, self.dvc])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["needs_human"] = self.needs_human
        return out


@dataclass
class _Context:
    root: Path
    script: Path
    cwd: Path  # where the script's relative paths start
    notebook_dir: Path
    layer: str
    registry: Any
    params: dict[str, ScriptParam]
    src: convert.Source
    args_names: set[str]
    renames: dict[str, str]  # constant -> parameter
    io: list[IOItem] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    consumed: set[tuple[int, int]] = field(default_factory=set)  # spans of replaced calls


def import_script(
    script: str | Path,
    *,
    project_root: str | Path,
    stage: str,
    flow: str | None = None,
    registry_file: str | Path | None = None,
    layer: str = "silver",
    script_cwd: str | Path | None = None,
    pair: bool = False,
    sync_dvc: bool = True,
) -> ImportReport:
    """Convert ``script`` into stage ``stage`` of the project at ``project_root``.

    ``flow``: also add the stage to this flow (created when missing). ``registry_file``: where
    the entry goes (default: the file that declares ``flow``, else ``pipelines/<flow or
    stage>.yaml``). ``layer``: of the tables proposed for files the script writes.
    ``script_cwd``: the folder the script's relative paths are relative to (default: the project
    root). ``pair``: also write a percent-format ``.py`` paired with the notebook (jupytext).
    Nothing of the script runs.
    """
    root = Path(project_root).resolve()
    path = Path(script)
    text = _read(path)
    tree = _parse(text, path)
    if not _STAGE.match(stage):
        raise MigrationError(f"stage name {stage!r}: use lower-case letters, digits and _", path=str(path))
    registry = _registry(root)
    _refuse_clash(registry, stage, flow)
    target = registryfile.target(root, registry, stage=stage, flow=flow, registry_file=registry_file)
    registry_doc = registryfile.load(target)
    nb_path = root / "notebooks" / (flow or "migrated") / f"{stage}.ipynb"
    if nb_path.exists():
        raise MigrationError(f"{nb_path} exists already: choose another --stage or remove it", path=str(path))

    names = fileio.aliases(tree)
    notes: list[str] = []
    params, click_func = _parameters(tree, text, names)
    renames = {p.source.split()[-1]: p.name for p in params if p.source.startswith("constant ")}
    plan = convert.plumbing(tree, names, click_func=click_func, constants=set(renames))
    notes += plan.notes
    src = convert.Source(text)
    ctx = _Context(root, path, Path(script_cwd or root).resolve(), nb_path.parent, layer, registry,
                   {p.name: p for p in params}, src, plan.args_names, renames)
    manual = _rename_references(ctx, tree)
    for call in fileio.io_calls(tree, names):
        _map_io(ctx, call, tree)
    notes += [n for p in params for n in p.notes]
    used = _used_params(ctx, tree)
    dropped = [p for p in params if p.name not in used and _is_path_param(ctx, p)]
    params = [p for p in params if p not in dropped]
    notes += [f"parameter {p.name} ({p.source}) dropped: the file it named is now a table" for p in dropped]
    found = [*fileio.script_imports(tree, local_modules=_siblings(path)), *fileio.sys_path_changes(tree, names)]
    blockers = [f"line {f.line}: {f.message}" for f in sorted(found, key=lambda f: f.line)]

    doc, code = convert.module_text(src, tree, plan)
    if any(i.status == "table" for i in ctx.io):
        code = _with_import_qsdk(code)
    title = f"Stage `{stage}`, migrated from `{_rel(path.resolve(), root)}` by `qsdk import-script`."
    nb = notebook.build(code, parameters_cell(params), markdown=f"{doc}\n\n{title}" if doc else title)
    notebook.write(nb, nb_path)
    paired = notebook.pair(nb_path) if pair else None
    entry = registryfile.stage_entry(
        notebook=_rel(nb_path, root), description=f"Migrated from {_rel(path.resolve(), root)}",
        inputs=ctx.inputs, outputs=ctx.outputs, sources=ctx.sources)
    registryfile.write(target, registry_doc, stage=stage, entry=entry, tables=ctx.tables, flow=flow)
    report = ImportReport(
        script=str(path), stage=stage, notebook=_rel(nb_path, root), registry_file=_rel(target, root), flow=flow,
        parameters=[p.to_dict() for p in params], io=ctx.io, tables=ctx.tables, blockers=blockers, notes=notes,
        manual=manual, paired=_rel(paired, root) if paired else None)
    report.dvc = _sync_dvc(root) if sync_dvc else "not synced (asked not to)"
    return report


def _registry(root: Path) -> Any:
    """The project's registry; an empty one while ``pipelines/`` has no file yet (the first stage)."""
    from qsdk.config import Config
    from qsdk.model.registry import Registry

    folder = root / "pipelines"
    if not [*folder.glob("*.yaml"), *folder.glob("*.yml")]:
        return Registry(tables={}, stages={}, flows={}, root=root)
    return Registry.load(Config.load(root))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationError(f"cannot read script {path}: {exc}", path=str(path)) from exc


def _parse(text: str, path: Path) -> ast.Module:
    try:
        return ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise MigrationError(
            f"{path}: not valid Python at line {exc.lineno}: {exc.msg}. qsdk reads scripts with ast and "
            "never runs them: fix the syntax (or port it to Python 3) and import it again",
            path=str(path), line=exc.lineno) from None


def _refuse_clash(registry: Any, stage: str, flow: str | None) -> None:
    taken = set(registry.stages) | {p.name for p in registry.problems if p.kind == "stage"}
    if stage in taken:
        raise MigrationError(f"stage {stage!r} exists already in the registry: choose another --stage")
    if flow and registry.problem("flow", flow) is not None:
        raise MigrationError(f"flow {flow!r} is broken ({registry.problem('flow', flow).message}); "
                             "fix it (`qsdk check`) before adding stages to it")


def _parameters(tree: ast.Module, text: str, names: dict[str, str]) -> tuple[list[ScriptParam], Any]:
    click_func = click_command(tree, names)
    found = argparse_params(tree, names)
    if click_func is not None:
        found += click_params(click_func, names)
    taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {p.name for p in found}
    found += constant_params(tree, convert.comments(text), taken)
    seen: set[str] = set()
    out = []
    for p in found:
        if p.name not in seen:
            seen.add(p.name)
            out.append(p)
    return out, click_func


def _rename_references(ctx: _Context, tree: ast.Module) -> list[str]:
    """``args.x`` -> ``x``; ``CONSTANT`` -> ``constant``. Other uses of ``args`` are reported."""
    notes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in ctx.args_names and node.attr in ctx.params:
            ctx.src.replace(node, node.attr)
        elif isinstance(node, ast.Name) and node.id in ctx.renames:
            ctx.src.replace(node, ctx.renames[node.id])
    attrs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ctx.args_names and id(node) not in attrs \
                and isinstance(node.ctx, ast.Load) and not _is_call_arg_of_inlined(node, tree):
            notes.append(f"line {node.lineno}: `{node.id}` (the parsed arguments) is used as a whole; "
                         "the notebook has the parameters as variables instead: edit this line")
    return notes


def _is_call_arg_of_inlined(node: ast.Name, tree: ast.Module) -> bool:
    for guard in (s for s in tree.body if convert.is_main_guard(s)):
        if any(sub is node for sub in ast.walk(guard)):
            return True
    return False


# ------------------------------------------------------------------ file I/O


def _path_of(ctx: _Context, node: ast.expr | None) -> tuple[str | None, str | None]:
    """(the path as the script would see it when known statically, the parameter that holds it)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, None
    name = None
    if isinstance(node, ast.Name):
        name = ctx.renames.get(node.id, node.id)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ctx.args_names:
        name = node.attr
    param = ctx.params.get(name) if name else None
    if param is not None and isinstance(param.default, str) and not param.many:
        return param.default, param.name
    if isinstance(node, ast.Call) and (ast.unparse(node.func).endswith("Path")) and len(node.args) == 1:
        return _path_of(ctx, node.args[0])
    return None, None


def _map_io(ctx: _Context, call: fileio.IOCall, tree: ast.Module) -> None:
    path, param = _path_of(ctx, call.path)
    item = IOItem(call.node.lineno, call.how, call.direction, path, "todo")
    ctx.io.append(item)
    if path is None:
        item.reason = "the path is computed at run time: qsdk cannot tell which table it is"
    elif call.fmt not in ("csv", "parquet"):
        item.reason = f"{call.fmt} files are not tables: write a DataFrame with qsdk.write_table, or declare the file"
        if call.direction == "read":
            _as_source(ctx, call, item, path, param)
    elif call.direction == "write":
        _to_table_write(ctx, call, item, path)
    else:
        _to_table_read(ctx, call, item, path, param)
    if item.status == "todo":
        _todo(ctx, call, item, tree)


def _resolve(ctx: _Context, path: str) -> Path:
    return (ctx.cwd / path).resolve()


def _table_name(ctx: _Context, path: str) -> str:
    stem = re.sub(r"[^a-z0-9_]", "_", Path(path).name.split(".")[0].lower()).strip("_") or "table"
    if not stem[0].isalpha():
        stem = f"t_{stem}"
    return f"{ctx.layer}.{stem[:60]}"


def _marker(ctx: _Context, path: str) -> str:
    """How a migrated table's description names its legacy file: relative to the project root,
    so two scripts naming the file differently still meet at one table."""
    file = _resolve(ctx, path)
    try:
        return f"legacy file {file.relative_to(ctx.root).as_posix()}"
    except ValueError:
        return f"legacy file {file}"


def _table_for_read(ctx: _Context, path: str) -> str | None:
    """The table migrated from this file (named in its description), never a guess by name."""
    marker = _marker(ctx, path)
    found = [s.name for s in ctx.registry.tables.values() if (s.description or "").endswith(marker)]
    found += [n for n, spec in ctx.tables.items() if spec["description"].startswith(f"Migrated from {marker}")]
    return found[0] if found else None


def _to_table_write(ctx: _Context, call: fileio.IOCall, item: IOItem, path: str) -> None:
    table = _table_name(ctx, path)
    writers = [s.name for s in ctx.registry.stages.values() if table in s.outputs]
    if writers:
        item.reason = f"table {table} (from {path}) is already written by stage {writers[0]}"
        return
    if call.what is None:
        item.reason = "cannot tell which data this call writes"
        return
    inferred = contracts.infer(_resolve(ctx, path), call.fmt)
    frame = ctx.src.node_text(call.what)
    if inferred and inferred.index:
        frame = f"{frame}.reset_index()"  # the legacy file stored the named index as columns
    if table not in ctx.registry.tables:
        ctx.tables[table] = {"description": f"Migrated from {_marker(ctx, path)}",
                             "columns": inferred.columns if inferred else {}}
        if inferred and inferred.primary_key:
            ctx.tables[table]["primary_key"] = list(inferred.primary_key)
        if inferred is None:
            item.reason = "the file does not exist: declare the table's columns"
    ctx.src.replace(call.node, f"qsdk.write_table({table!r}, {frame}, mode=\"overwrite\")")
    ctx.consumed.add(ctx.src.span(call.node))
    ctx.outputs.append(table)
    item.status, item.table = "table", table
    item.reason = "contract from the existing file" if inferred else "contract unknown: declare its columns"


_READ_KEYWORDS = {"columns", "usecols", "parse_dates", "index_col", "filepath_or_buffer", "path", "source"}


def _to_table_read(ctx: _Context, call: fileio.IOCall, item: IOItem, path: str, param: str | None) -> None:
    table = _table_for_read(ctx, path)
    if table is None:
        if _resolve(ctx, path).exists():
            _as_source(ctx, call, item, path, param)
        else:
            item.reason = f"no table was migrated from {path} and the file does not exist"
        return
    extra = [kw.arg for kw in call.node.keywords if kw.arg not in _READ_KEYWORDS]
    if extra or len(call.node.args) > 1 or not call.how.endswith(("read_csv", "read_parquet", "read_table")):
        item.table = table
        item.reason = f"reads table {table} with options qsdk cannot map ({', '.join(map(str, extra)) or call.how})"
        return
    ctx.src.replace(call.node, _read_expression(ctx, call, table, path))
    ctx.consumed.add(ctx.src.span(call.node))
    if table not in ctx.inputs:
        ctx.inputs.append(table)
    item.status, item.table, item.reason = "table", table, f"read through DataLoader (was {path})"


def _read_expression(ctx: _Context, call: fileio.IOCall, table: str, path: str) -> str:
    kw = {k.arg: k.value for k in call.node.keywords}
    columns = kw.get("columns") or kw.get("usecols")
    arrow = call.how.endswith("read_table")  # pyarrow.parquet.read_table: the script wants an Arrow table
    text = f"qsdk.DataLoader().{'read_arrow' if arrow else 'read'}({table!r}"
    text += f", columns={ctx.src.node_text(columns)})" if columns is not None else ")"
    if arrow:
        return text
    inferred = contracts.infer(_resolve(ctx, path), call.fmt)
    timestamps = list(inferred.timestamps) if inferred else []
    if "parse_dates" in kw:
        timestamps = [*timestamps, *[c for c in _literal_list(kw["parse_dates"]) if c not in timestamps]]
    if timestamps:  # the legacy reader gave datetime64 where the table holds dates
        text += ".astype({" + ", ".join(f"{c!r}: \"datetime64[ns]\"" for c in timestamps) + "})"
    index = list(inferred.index) if inferred else []
    if "index_col" in kw:
        index = _literal_list(kw["index_col"])
    if index:
        text += f".set_index({index!r})"
    return text


def _literal_list(node: ast.expr) -> list[Any]:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return []
    return list(value) if isinstance(value, list | tuple) else [value] if isinstance(value, str) else []


def _as_source(ctx: _Context, call: fileio.IOCall, item: IOItem, path: str, param: str | None) -> None:
    """An external input file: keep the read, declare the file, point the path at it from the
    notebook's folder (stages run there)."""
    file = _resolve(ctx, path)
    if not file.exists():
        item.reason += f"; {path} does not exist"
        return
    try:
        declared = file.relative_to(ctx.root).as_posix()
    except ValueError:
        item.reason = f"{path} is outside the project: copy it in (or read it from a table)"
        return
    from_notebook = os.path.relpath(file, ctx.notebook_dir)
    if param is not None:
        ctx.params[param].default = from_notebook
        ctx.params[param].notes.append(f"{param}: default now relative to the notebook's folder")
    elif isinstance(call.path, ast.Constant):
        ctx.src.replace(call.path, repr(from_notebook))
    if declared not in ctx.sources:
        ctx.sources.append(declared)
    item.status = "source"
    item.reason = (f"external file, kept and declared in sources: (files: {declared}); if another script "
                   "writes it, import that one first and this one again")


def _todo(ctx: _Context, call: fileio.IOCall, item: IOItem, tree: ast.Module) -> None:
    stmt = _statement_of(tree, call.node)
    indent = " " * stmt.col_offset
    ctx.src.insert_line(convert.first_line(stmt), f"{indent}{_TODO} {item.how}: {item.reason}\n")


def _statement_of(tree: ast.Module, target: ast.AST) -> ast.stmt:
    """The innermost statement holding ``target`` (a ``with open(...)`` header is the ``with``)."""
    best: ast.stmt | None = None
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and any(sub is target for sub in ast.walk(node)):
            if best is None or (node.end_lineno - node.lineno) <= (best.end_lineno - best.lineno):  # type: ignore[operator]
                best = node
    if best is None:  # pragma: no cover - every call sits in a statement
        raise MigrationError("internal: an I/O call outside any statement")
    return best


def _used_params(ctx: _Context, tree: ast.Module) -> set[str]:
    """Parameters still referenced outside the I/O calls that were replaced."""
    used = set()
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Name):
            name = ctx.renames.get(node.id, node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ctx.args_names:
            name = node.attr
        if name in ctx.params:
            start, end = ctx.src.span(node)
            if not any(s <= start and end <= e for s, e in ctx.consumed) and not _in_constant_def(node, tree, ctx):
                used.add(name)
    return used


def _in_constant_def(node: ast.AST, tree: ast.Module, ctx: _Context) -> bool:
    return any(isinstance(s, ast.Assign) and s.targets[0] is node for s in tree.body) and \
        isinstance(node, ast.Name) and node.id in ctx.renames


def _is_path_param(ctx: _Context, p: ScriptParam) -> bool:
    return any(i.status == "table" and i.path == p.default for i in ctx.io)


def _siblings(path: Path) -> set[str]:
    folder = path.resolve().parent
    return {p.stem for p in folder.glob("*.py") if p.resolve() != path.resolve()}


def _with_import_qsdk(code: str) -> str:
    lines = code.splitlines(keepends=True)
    at = 0
    for i, line in enumerate(lines):
        if line.startswith("from __future__"):
            at = i + 1
    return "".join([*lines[:at], "import qsdk\n", *lines[at:]])


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _sync_dvc(root: Path) -> str:
    """Keep ``dvc.yaml`` in step with the registry (when the project has one and it loads clean)."""
    if not (root / "dvc.yaml").is_file():
        return "no dvc.yaml in the project: nothing to sync"
    from qsdk.config import Config
    from qsdk.integrations.dvc.dvcsync import sync
    from qsdk.model.registry import Registry

    registry = Registry.load(Config.load(root))
    if registry.problems:
        return (f"dvc.yaml not synced: the registry has {len(registry.problems)} problem(s) "
                "(`qsdk check`); fix them, then `qsdk dvc sync`")
    report = sync(registry)
    return f"dvc.yaml synced ({', '.join(report.changed) or 'already in step'})"
