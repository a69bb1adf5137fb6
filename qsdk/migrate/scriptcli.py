"""A script's command-line interface as typed qsdk parameters (argparse, click, constants).

Each option becomes one line of a ``parameters`` cell in qsdk's syntax (``qsdk.model.params``):
``name: type = default  # help``. Types: ``int``/``float``/``str``/``bool``, ``"date"`` for a
string default in ISO form, ``Literal[...]`` for choices, ``list[...]`` for ``nargs``/``multiple``,
``X | None`` for a ``None`` default; an option without a default that must be given is written
without a value (a required parameter).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

from qsdk.migrate.fileio import dotted

MISSING: Any = object()
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")
_TYPES = {"int": "int", "float": "float", "str": "str", "bool": "bool"}
_CLICK_TYPES = {"click.INT": "int", "click.FLOAT": "float", "click.STRING": "str", "click.BOOL": "bool",
                "click.Path": "str", "click.File": "str", "click.DateTime": "date"}


@dataclass
class ScriptParam:
    """One parameter found in a script; ``source`` is the option or constant it came from."""

    name: str
    kind: str  # int, float, str, bool, date, any
    default: Any = MISSING
    help: str = ""
    choices: tuple[Any, ...] | None = None
    many: bool = False  # nargs / multiple / append: a list
    computed: str = ""  # a default that is an expression (kept as a computed default)
    source: str = ""
    notes: list[str] = field(default_factory=list)
    lineno: int = 0

    @property
    def required(self) -> bool:
        return self.default is MISSING and not self.computed

    def annotation(self) -> str:
        base = {"date": '"date"', "any": "Any"}.get(self.kind, self.kind)
        if self.choices is not None:
            base = f"Literal[{', '.join(repr(c) for c in self.choices)}]"
        if self.many:
            base = f"list[{base}]"
        return f"{base} | None" if self.default is None else base

    def line(self) -> str:
        text = f"{self.name}: {self.annotation()}"
        if self.computed:
            text += f" = {self.computed}"
        elif not self.required:
            text += f" = {self.default!r}"
        help_text = " ".join(self.help.split())
        return f"{text}  # {help_text}" if help_text else text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.annotation(), "required": self.required,
                "default": None if self.required else (self.computed or self.default),
                "help": self.help, "from": self.source}


def parameters_cell(params: list[ScriptParam]) -> str:
    """The source of the ``parameters`` cell (with the typing imports it needs)."""
    lines = [p.line() for p in params]
    imports = [name for name in ("Any", "Literal") if any(f"{name}[" in ln or f": {name}" in ln for ln in lines)]
    head = [f"from typing import {', '.join(imports)}"] if imports else []
    return "\n".join(head + lines)


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return MISSING
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return _Computed(ast.unparse(node))


@dataclass(frozen=True)
class _Computed:
    source: str


def _kwargs(call: ast.Call) -> dict[str, ast.expr]:
    return {kw.arg: kw.value for kw in call.keywords if kw.arg}


def _dest(strings: list[str]) -> str:
    longs = [s for s in strings if s.startswith("--")]
    name = (longs or strings)[0].lstrip("-")
    return re.sub(r"\W", "_", name)


def _kind_of_type(node: ast.expr | None, names: dict[str, str]) -> tuple[str, str]:
    """(kind, note) of an argparse/click ``type=``."""
    if node is None:
        return "", ""
    name = dotted(node.func if isinstance(node, ast.Call) else node, names) or ""
    if name in _TYPES:
        return _TYPES[name], ""
    if name in _CLICK_TYPES:
        return _CLICK_TYPES[name], ""
    if name.endswith(("fromisoformat", "to_datetime", "Timestamp", "parse_date", "date")):
        return "date", ""
    return "str", f"type {ast.unparse(node)} is applied by the script, not by qsdk: the value arrives as a string"


def _finish(p: ScriptParam, kind: str, default: Any) -> ScriptParam:
    """Settle kind and default: infer from the default, ``"date"`` for ISO strings, computed defaults."""
    if isinstance(default, _Computed):
        p.computed, default = default.source, MISSING
    if isinstance(default, tuple):
        default = list(default)
    if p.many and default is None and not p.computed:
        default = []  # argparse gives None for an absent list option; a list parameter is cleaner
    if not kind:
        sample = default[0] if isinstance(default, list) and default else default
        kind = next((k for k, t in (("bool", bool), ("int", int), ("float", float), ("str", str))
                     if isinstance(sample, t)), "str")
        if p.choices:
            kind = next((k for k, t in (("int", int), ("float", float)) if isinstance(p.choices[0], t)), "str")
    if kind == "str" and isinstance(default, str) and _ISO_DATE.match(default):
        kind = "date"
    if kind == "float" and isinstance(default, int) and not isinstance(default, bool):
        default = float(default)
    p.kind, p.default = kind, default
    return p


# ------------------------------------------------------------------ argparse


def argparse_params(tree: ast.Module, names: dict[str, str]) -> list[ScriptParam]:
    """Every ``add_argument`` call (on a parser or an argument group)."""
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            param = _argparse_param(node, names)
            if param is not None:
                out.append(param)
    return sorted(out, key=lambda p: p.lineno)


def _constant(node: ast.expr | None, default: Any) -> Any:
    """The value of a literal keyword argument, else ``default``."""
    return node.value if isinstance(node, ast.Constant) else default


def _argparse_param(call: ast.Call, names: dict[str, str]) -> ScriptParam | None:
    strings = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if not strings:
        return None
    kw = _kwargs(call)
    optional = strings[0].startswith("-")
    dest = _constant(kw.get("dest"), _dest(strings))
    action = _constant(kw.get("action"), "store")
    help_text = _constant(kw.get("help"), "")
    nargs = _constant(kw.get("nargs"), None)
    choices = _literal(kw.get("choices"))
    required = bool(_literal(kw.get("required"))) if "required" in kw else not optional
    p = ScriptParam(dest, "", source=f"argparse {' '.join(strings)}",
                    choices=tuple(choices) if isinstance(choices, list | tuple) else None,
                    many=action in ("append", "extend") or nargs in ("+", "*") or isinstance(nargs, int) and nargs > 1)
    p.lineno = call.lineno
    default = _literal(kw.get("default"))
    kind, note = _kind_of_type(kw.get("type"), names)
    if action in ("store_true", "store_false"):
        kind, default = "bool", (action == "store_false") if default is MISSING else default
    elif action == "count":
        kind, default = "int", 0 if default is MISSING else default
    elif action == "store_const":
        p.notes.append(f"{dest}: action='store_const' became a plain parameter holding the value")
        default = _literal(kw.get("const")) if default is MISSING else default
    elif default is MISSING and not required:
        default = None  # argparse's default for an option not given
    if note:
        p.notes.append(f"{dest}: {note}")
    if nargs == "?" and default is MISSING and not optional:
        default = None
    p.help = help_text.replace("%(default)s", str(default if default is not MISSING else ""))
    return _finish(p, kind, default)


# ------------------------------------------------------------------ click


def click_command(tree: ast.Module, names: dict[str, str]) -> ast.FunctionDef | None:
    """The function decorated with ``@click.command()`` (or ``@click.group``'s commands: the first)."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                (dotted(d.func if isinstance(d, ast.Call) else d, names) or "").startswith("click.command")
                for d in node.decorator_list):
            return node
    return None


def click_params(func: ast.FunctionDef, names: dict[str, str]) -> list[ScriptParam]:
    out = []
    for deco in reversed(func.decorator_list):  # click applies them bottom-up; show them top-down
        if not isinstance(deco, ast.Call):
            continue
        name = dotted(deco.func, names)
        if name in ("click.option", "click.argument"):
            out.append(_click_param(deco, argument=name == "click.argument", names=names))
    return list(reversed(out))


def _click_param(call: ast.Call, *, argument: bool, names: dict[str, str]) -> ScriptParam:
    strings = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    kw = _kwargs(call)
    identifiers = [s for s in strings if not s.startswith("-")]
    dest = identifiers[0] if identifiers else _dest(strings).lower()
    type_node = kw.get("type")
    choices = None
    if isinstance(type_node, ast.Call) and dotted(type_node.func, names) == "click.Choice" and type_node.args:
        found = _literal(type_node.args[0])
        choices = tuple(found) if isinstance(found, list | tuple) else None
        type_node = None
    kind, note = _kind_of_type(type_node, names)
    is_flag = bool(_literal(kw["is_flag"])) if "is_flag" in kw else False
    many = bool(_literal(kw["multiple"])) if "multiple" in kw else False
    nargs = _literal(kw.get("nargs"))
    many = many or (isinstance(nargs, int) and (nargs > 1 or nargs == -1))
    required = bool(_literal(kw["required"])) if "required" in kw else argument
    default = _literal(kw.get("default"))
    if is_flag:
        kind, default = "bool", False if default is MISSING else default
    elif default is MISSING and not required:
        default = None
    help_text = _constant(kw.get("help"), "")
    p = ScriptParam(dest, "", help=help_text, choices=choices, many=many,
                    source=f"click {' '.join(strings)}")
    if note:
        p.notes.append(f"{dest}: {note}")
    return _finish(p, kind, default)


# ------------------------------------------------------------------ constants


def constant_params(tree: ast.Module, comments: dict[int, str], taken: set[str]) -> list[ScriptParam]:
    """Module-level ``UPPER_CASE = literal`` assignments; the parameter is the lower-case name
    (kept upper-case when the script already uses the lower-case one)."""
    stores: dict[str, int] = {}
    for node in ast.walk(tree):  # a name assigned more than once is a variable, not a setting
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stores[node.id] = stores.get(node.id, 0) + 1
        elif isinstance(node, ast.Global | ast.Nonlocal):
            stores.update({n: 2 for n in node.names})
    out = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and _CONSTANT.match(node.targets[0].id) and stores.get(node.targets[0].id) == 1):
            continue
        value = _literal(node.value)
        if isinstance(value, _Computed) or not _plain(value):
            continue
        const = node.targets[0].id
        name = const.lower() if const.lower() not in taken else const
        help_text = comments.get(node.lineno) or comments.get(node.lineno - 1, "")
        p = ScriptParam(name, "", help=help_text, many=isinstance(value, list | tuple), source=f"constant {const}")
        out.append(_finish(p, "", value))
    return out


def _plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return len({type(v) for v in value}) <= 1 and all(isinstance(v, str | int | float | bool) for v in value)
    return isinstance(value, str | int | float | bool)
