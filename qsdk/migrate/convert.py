"""Rewrite a script's source into a stage notebook's code, keeping its comments.

The script is read with :mod:`ast` (never run). Changes are made as text edits at the
positions ``ast`` gives, so every comment and blank line the script had survives; jupytext's
``light`` format then cuts the text into cells (comment blocks become markdown cells, blocks of
code separated by blank lines become code cells).

What is rewritten: the argparse/click plumbing is removed (parser, ``parse_args``, decorators,
``if __name__ == "__main__":``, a ``main(args)`` that is called from there is inlined), ``args.x``
becomes the parameter ``x``, an ``UPPER_CASE`` constant becomes the parameter ``upper_case``,
and each file read or write the caller could map is replaced (:func:`rewrite`).
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field

from qsdk.migrate.fileio import dotted


def comments(source: str) -> dict[int, str]:
    """Line -> the text of the comment on that line."""
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        pass
    return out


class Source:
    """The script's text with edits keyed on character offsets (``ast`` columns are UTF-8 bytes)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.edits: list[tuple[int, int, str]] = []

    def offset(self, line: int, col: int) -> int:
        raw = self.lines[line - 1].encode("utf-8")[:col] if line <= len(self.lines) else b""
        return self.starts[line - 1] + len(raw.decode("utf-8", errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),  # type: ignore[attr-defined]
                self.offset(node.end_lineno, node.end_col_offset))  # type: ignore[attr-defined]

    def replace(self, node: ast.AST, text: str) -> None:
        self.edits.append((*self.span(node), text))

    def insert_line(self, line: int, text: str) -> None:
        self.edits.append((self.starts[line - 1], self.starts[line - 1], text))

    def render(self, start: int, end: int) -> str:
        """The text between two offsets with the edits inside applied (the outermost of nested ones)."""
        out, pos = [], start
        for s, e, text in sorted(self.edits, key=lambda x: (x[0], -x[1])):
            if s < pos or e > end or s < start or (s == e == end):  # an insertion belongs to the text after it
                continue
            out.append(self.text[pos:s] + text)
            pos = e
        return "".join(out) + self.text[pos:end]

    def node_text(self, node: ast.AST) -> str:
        return self.render(*self.span(node))

    def lines_text(self, first: int, last: int) -> str:
        """Lines ``first``..``last`` (1-based, inclusive) with their edits."""
        if last < first:
            return ""
        return self.render(self.starts[first - 1], self.starts[min(last, len(self.lines))])


def first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def is_main_guard(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


@dataclass
class Plumbing:
    """What to drop, what to inline, and the names that hold parsed arguments."""

    drop: set[int] = field(default_factory=set)  # id() of statements removed
    inline: dict[str, ast.FunctionDef] = field(default_factory=dict)  # functions inlined where called
    args_names: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _contains_parser(node: ast.AST, names: dict[str, str]) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            name = dotted(sub.func, names) or ""
            attr = sub.func.attr if isinstance(sub.func, ast.Attribute) else ""
            if name == "argparse.ArgumentParser" or attr in ("add_argument", "add_argument_group",
                                                             "parse_args", "parse_known_args", "set_defaults"):
                return True
    return False


def _called_function(stmt: ast.stmt) -> ast.Call | None:
    """``main(...)``, ``sys.exit(main(...))``, ``raise SystemExit(main(...))``: the inner call."""
    value = stmt.value if isinstance(stmt, ast.Expr) else stmt.exc if isinstance(stmt, ast.Raise) else None
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name | ast.Attribute):
        wrapper = ast.unparse(value.func)
        if wrapper in ("sys.exit", "exit", "SystemExit", "quit") and value.args and isinstance(value.args[0], ast.Call):
            return value.args[0]
        return value
    return None


def _inlinable(func: ast.FunctionDef) -> bool:
    """No ``return`` but possibly the last statement (``yield`` makes it a generator: keep it)."""
    body = func.body
    for stmt in body:
        for sub in _walk_same_scope(stmt):
            if isinstance(sub, ast.Yield | ast.YieldFrom | ast.Global | ast.Nonlocal):
                return False
            if isinstance(sub, ast.Return) and sub is not body[-1]:
                return False
    return True


def _walk_same_scope(node: ast.AST):
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            yield from _walk_same_scope(child)


def plumbing(tree: ast.Module, names: dict[str, str], *, click_func: ast.FunctionDef | None,
             constants: set[str]) -> Plumbing:
    """Find the command-line plumbing of ``tree`` (see the module docstring)."""
    plan = Plumbing()
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    parser_funcs = {n for n, f in functions.items() if _contains_parser(f, names) and f is not click_func
                    and not _has_work(f, names)}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom) and _only_cli_imports(stmt):
            plan.drop.add(id(stmt))
        elif isinstance(stmt, ast.FunctionDef) and stmt.name in parser_funcs:
            plan.drop.add(id(stmt))
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                and stmt.targets[0].id in constants:
            plan.drop.add(id(stmt))
    if click_func is not None:
        plan.inline[click_func.name] = click_func
        plan.drop.add(id(click_func))
    guards = [s for s in tree.body if isinstance(s, ast.If) and is_main_guard(s)]
    for guard in guards:
        _scan_block(guard.body, plan, names, functions, parser_funcs)
    _scan_block([s for s in tree.body if not is_main_guard(s) and not isinstance(s, ast.FunctionDef)],
                plan, names, functions, parser_funcs, inline=False)
    return plan


def _has_work(func: ast.FunctionDef, names: dict[str, str]) -> bool:
    """A function that builds a parser *and* does other work is a ``main``: inline it, do not drop it."""
    def plumbing_only(s: ast.stmt) -> bool:
        docstring = isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
        returns_name = isinstance(s, ast.Return) and (s.value is None or isinstance(s.value, ast.Name))
        return _contains_parser(s, names) or docstring or returns_name

    return not all(plumbing_only(s) for s in func.body)


def _only_cli_imports(stmt: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(stmt, ast.Import):
        return all(a.name in ("argparse", "click") for a in stmt.names)
    return stmt.module in ("argparse", "click")


def _scan_block(body: list[ast.stmt], plan: Plumbing, names: dict[str, str],
                functions: dict[str, ast.FunctionDef], parser_funcs: set[str], *, inline: bool = True) -> None:
    """Drop the parser statements of ``body``; inline the functions it calls (only at the
    ``__main__`` guard's level: helpers that ``main()`` calls stay functions)."""
    for stmt in body:
        call = _called_function(stmt)
        func = functions.get(call.func.id) if call is not None and isinstance(call.func, ast.Name) else None
        if func is None or func.name in parser_funcs or not inline:
            if _contains_parser(stmt, names) or _calls(stmt, parser_funcs):
                plan.drop.add(id(stmt))
                if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name) \
                        and _parses(stmt.value, parser_funcs):
                    plan.args_names.add(stmt.targets[0].id)
            continue
        if call is None or not _inlinable(func):
            plan.notes.append(f"{func.name}() returns early or yields: kept as a function and called")
            continue
        plan.inline[func.name] = func
        plan.drop.add(id(func))
        for arg, param in zip(call.args, func.args.args, strict=False):
            if isinstance(arg, ast.Name) and arg.id in plan.args_names or _parses(arg, parser_funcs):
                plan.args_names.add(param.arg)
        _scan_block(func.body, plan, names, functions, parser_funcs, inline=False)


def _calls(stmt: ast.stmt, funcs: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in funcs
               for n in ast.walk(stmt))


def _parses(node: ast.expr, parser_funcs: set[str]) -> bool:
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr in ("parse_args", "parse_known_args"))
        or (isinstance(node.func, ast.Name) and node.func.id in parser_funcs))


# ------------------------------------------------------------------ emitting the text


@dataclass
class Emitter:
    """Writes the module body back out, dropping, unwrapping and inlining per :class:`Plumbing`."""

    src: Source
    plan: Plumbing
    final_return: Callable[[ast.Return], str] | None = None

    def block(self, body: list[ast.stmt], *, start: int, end: int) -> str:
        """The statements of ``body`` with the text between them (comments), lines ``start``..``end``,
        dedented to column 0."""
        indent = body[0].col_offset if body else 0
        out: list[str] = []
        line = start
        for stmt in body:
            gap = self.src.lines_text(line, first_line(stmt) - 1)
            if id(stmt) in self.plan.drop:
                out.append(_dedent(_without_attached_comment(gap), indent))
            else:
                out.append(_dedent(gap, indent))
                out.append(self.statement(stmt, indent))
            line = stmt.end_lineno + 1  # type: ignore[operator]
        out.append(_dedent(self.src.lines_text(line, end), indent))
        return "".join(out)

    def statement(self, stmt: ast.stmt, indent: int) -> str:
        if isinstance(stmt, ast.If) and is_main_guard(stmt):
            return self.block(stmt.body, start=stmt.body[0].lineno, end=stmt.end_lineno)  # type: ignore[arg-type]
        call = _called_function(stmt)
        if call is not None and isinstance(call.func, ast.Name) and call.func.id in self.plan.inline:
            func = self.plan.inline[call.func.id]
            body = func.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]  # the docstring of main(): the notebook's markdown says it
            if not body:
                return ""
            text = self.block(body, start=first_line(body[0]), end=func.end_lineno)  # type: ignore[arg-type]
            return text if text.endswith("\n") else text + "\n"
        if isinstance(stmt, ast.Return):  # the last statement of an inlined main()
            if stmt.value is None or isinstance(stmt.value, ast.Constant):
                return ""  # an exit code: nothing to show
            return self.src.node_text(stmt.value) + "\n"  # the cell shows it, as the notebook's result
        return _dedent(self.src.lines_text(first_line(stmt), stmt.end_lineno), indent)  # type: ignore[arg-type]


def _dedent(text: str, indent: int) -> str:
    if not indent:
        return text
    out = []
    for line in text.splitlines(keepends=True):
        stripped = len(line) - len(line.lstrip(" \t"))
        out.append(line[min(indent, stripped):] if line.strip() else line.lstrip(" \t"))
    return "".join(out)


def _without_attached_comment(gap: str) -> str:
    """A gap before a dropped statement, without the comment lines right above it (they described it)."""
    lines = gap.splitlines(keepends=True)
    while lines and lines[-1].lstrip().startswith("#"):
        lines.pop()
    return "".join(lines)


def module_text(src: Source, tree: ast.Module, plan: Plumbing) -> tuple[str, str]:
    """(docstring, code) of the rewritten module."""
    body = list(tree.body)
    doc = ""
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc = textwrap.dedent(body[0].value.value).strip()
        plan.drop.add(id(body[0]))
    text = Emitter(src, plan).block(body, start=1, end=len(src.lines)) if body else src.text
    return doc, _squeeze_blank_lines(text)


def _squeeze_blank_lines(text: str) -> str:
    """At most two blank lines in a row (what was dropped leaves gaps)."""
    out: list[str] = []
    for line in text.splitlines():
        if line.strip() or not (len(out) >= 2 and not out[-1].strip() and not out[-2].strip()):
            out.append(line.rstrip())
    return "\n".join(out).strip("\n") + "\n"
