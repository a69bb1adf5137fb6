"""Typed stage parameters, read from a notebook's papermill ``parameters`` cell.

A parameters cell is plain Python assignments, optionally annotated, with an optional
trailing comment as help text::

    start: "date" = "2010-01-01"   # first session to ingest
    end: "date"                    # required: no default
    universe: list[str] = ["AAPL", "MSFT"]
    frequency: Literal["month", "year"] = "year"
    min_rows = 100                 # type inferred from the default: int

We parse the cell with :mod:`ast` rather than ``papermill.inspect_notebook``: papermill's
regex inference glues an annotation-only line (a required parameter) to the previous
default and drops ``Literal`` choices. Values are validated and coerced here, before any
kernel starts; only declared names ever reach papermill (it writes names into code as-is).
"""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import re
import tokenize
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

from qsdk.errors import ParameterError, RegistryError
from qsdk.nbfile import read_cells, tags

Kind = Literal["str", "int", "float", "bool", "date", "list", "any"]
_SCALARS = {"str", "int", "float", "bool", "date"}
_MISSING = object()
NONE_TOKEN = "None"  # the one command-line token that means None, and only for `X | None` parameters
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ParamType:
    kind: Kind
    item: ParamType | None = None  # for lists
    choices: tuple[Any, ...] | None = None  # for Literal[...]
    optional: bool = False  # ``X | None`` / ``Optional[X]``

    def describe(self) -> str:
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "list":
            text = f"list[{self.item.describe() if self.item else 'any'}]"
        elif self.kind == "date":
            text = "date (YYYY-MM-DD)"
        else:
            text = self.kind
        return f"{text} or None" if self.optional else text


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: ParamType
    default: Any = field(default=_MISSING, compare=False)
    help: str = ""
    # a computed default (`out_dir = os.path.join(root, "x")`): its source, never evaluated here,
    # and the other parameters of the cell it reads
    computed: str = field(default="", compare=False)
    uses: tuple[str, ...] = field(default=(), compare=False)

    @property
    def required(self) -> bool:
        return self.default is _MISSING and not self.computed

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type.describe(),
            "kind": self.type.kind,
            "choices": list(self.type.choices) if self.type.choices is not None else None,
            "required": self.required,
            "default": None if self.required or self.computed else self.default,
            "computed": self.computed or None,
            "help": self.help,
        }


# ---------------------------------------------------------------- parsing


def parameters_cell(cells: list[dict[str, Any]]) -> tuple[int, str] | None:
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code" and "parameters" in tags(cell):
            return index, cell["source"]
    return None


def read_notebook_cells(notebook: str | Path) -> list[dict[str, Any]]:
    """The cells of ``notebook`` (:func:`qsdk.nbfile.read_cells`); a registry error if unreadable."""
    try:
        return read_cells(notebook)
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read notebook {notebook}: {exc}") from exc


def read_parameters(notebook: str | Path, *, cells: list[dict[str, Any]] | None = None) -> dict[str, ParamSpec]:
    """The declared parameters of ``notebook`` (error if it has no ``parameters`` cell).

    ``cells``: the notebook's cells when the caller has read them already.
    """
    path = Path(notebook)
    found = parameters_cell(read_notebook_cells(path) if cells is None else cells)
    if found is None:
        raise RegistryError(
            f"{path} has no parameters cell: tag one code cell 'parameters' "
            "(JupyterLab: property inspector > Cell tags)"
        )
    return parse_parameters_source(found[1], origin=str(path))


def parse_parameters_source(source: str, *, origin: str = "<parameters>") -> dict[str, ParamSpec]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise RegistryError(f"{origin}: parameters cell is not valid Python: {exc}") from exc
    comments = _line_comments(source)
    specs: dict[str, ParamSpec] = {}
    for node in tree.body:
        spec = _spec_from_node(node, comments, origin)
        if spec is not None:
            specs[spec.name] = spec
    return {name: _with_uses(spec, specs) for name, spec in specs.items()}


def _with_uses(spec: ParamSpec, specs: dict[str, ParamSpec]) -> ParamSpec:
    """A computed default's ``uses``: the other parameters its expression reads."""
    if not spec.computed:
        return spec
    names = {n.id for n in ast.walk(ast.parse(spec.computed, mode="eval")) if isinstance(n, ast.Name)}
    return replace(spec, uses=tuple(n for n in specs if n in names and n != spec.name))


def _line_comments(source: str) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except tokenize.TokenError:
        pass
    return out


def _spec_from_node(node: ast.stmt, comments: dict[int, str], origin: str) -> ParamSpec | None:
    if isinstance(node, ast.Import | ast.ImportFrom | ast.Expr):
        return None  # imports and docstrings are allowed in the cell
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        name, annotation, value = node.target.id, node.annotation, node.value
    elif (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    ):
        name, annotation, value = node.targets[0].id, None, node.value
    else:
        raise RegistryError(
            f"{origin}: line {node.lineno} of the parameters cell is not a simple "
            "`name: type = value` assignment; keep only parameters in that cell"
        )
    default: Any = _MISSING
    if value is not None:
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError):  # computed in the notebook; never evaluated here
            ptype = _type_from_annotation(annotation, origin, name) if annotation else ParamType("str")
            return ParamSpec(name, ptype, help=comments.get(node.lineno, ""), computed=ast.unparse(value))
    ptype = _type_from_annotation(annotation, origin, name) if annotation else _infer(default)
    if default is not _MISSING and default is not None:
        default = coerce(ParamSpec(name, ptype), default, stage=origin)
    elif default is None and not ptype.optional and annotation is not None:
        ptype = ParamType(ptype.kind, ptype.item, ptype.choices, optional=True)
    return ParamSpec(name, ptype, default, comments.get(node.lineno, ""))


def _infer(default: Any) -> ParamType:
    if default is _MISSING or default is None:
        return ParamType("any", optional=True)
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(default, types):
            return ParamType(kind)  # type: ignore[arg-type]
    if isinstance(default, list | tuple):
        items = {_infer(v).kind for v in default}
        return ParamType("list", ParamType(items.pop()) if len(items) == 1 else None)
    return ParamType("any")


def _type_from_annotation(node: ast.expr, origin: str, name: str) -> ParamType:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "date"
        node = ast.parse(node.value, mode="eval").body
    if isinstance(node, ast.Name) and node.id in _SCALARS | {"list", "Any"}:
        return ParamType("any" if node.id == "Any" else node.id)  # type: ignore[arg-type]
    if isinstance(node, ast.Attribute) and node.attr == "date":  # datetime.date
        return ParamType("date")
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [node.left, node.right]
        if any(isinstance(p, ast.Constant) and p.value is None for p in parts):
            inner = next(p for p in parts if not (isinstance(p, ast.Constant) and p.value is None))
            base = _type_from_annotation(inner, origin, name)
            return ParamType(base.kind, base.item, base.choices, optional=True)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        head, arg = node.value.id, node.slice
        if head in {"list", "List"}:
            return ParamType("list", _type_from_annotation(arg, origin, name))
        if head == "Optional":
            base = _type_from_annotation(arg, origin, name)
            return ParamType(base.kind, base.item, base.choices, optional=True)
        if head == "Literal":
            elts = arg.elts if isinstance(arg, ast.Tuple) else [arg]
            choices = tuple(ast.literal_eval(e) for e in elts)
            return ParamType(_infer(choices[0]).kind, choices=choices)
    raise RegistryError(
        f"{origin}: parameter {name!r} has unsupported annotation `{ast.unparse(node)}`; use "
        "str, int, float, bool, \"date\", list[...], Literal[...] or X | None"
    )


# ---------------------------------------------------------------- validation


def coerce(spec: ParamSpec, value: Any, *, stage: str) -> Any:
    """Return ``value`` converted to ``spec``'s type, or raise :class:`ParameterError`."""
    try:
        return _coerce(spec.type, value)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"stage {stage!r}, parameter {spec.name!r}: expected {spec.type.describe()}, "
            f"got {_short(value)} ({exc})",
            stage=stage,
            parameter=spec.name,
            expected=spec.type.describe(),
        ) from None


def _coerce(ptype: ParamType, value: Any) -> Any:
    """``None`` (from a YAML ``null`` or a notebook default) and the string ``"None"`` mean None,
    and only for an optional type; any other string, ``"none"`` and ``"null"`` included, is a value."""
    if value is None or (ptype.optional and isinstance(value, str) and value.strip() == NONE_TOKEN):
        if ptype.optional:
            return None
        raise ValueError("a value is required; only a parameter typed `X | None` takes None")
    if isinstance(value, str) and value.strip() == NONE_TOKEN and ptype.kind not in ("str", "any"):
        raise ValueError("only a parameter typed `X | None` takes None")
    converted = _coerce_kind(ptype, value)
    if ptype.choices is not None and converted not in ptype.choices:
        raise ValueError("not one of the allowed choices")
    return converted


def _coerce_kind(ptype: ParamType, value: Any) -> Any:
    kind = ptype.kind
    if kind == "any":
        json.dumps(value)  # only plain data may pass through
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError("not a string")
        return value
    if kind == "bool":
        return _to_bool(value)
    if kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError("not an integer")
        return int(value.strip() if isinstance(value, str) else value)
    if kind == "float":
        if isinstance(value, bool):
            raise TypeError("not a number")
        return float(value)
    if kind == "date":
        if isinstance(value, dt.datetime):
            value = value.date()
        if isinstance(value, dt.date):
            return value.isoformat()
        if not isinstance(value, str):
            raise TypeError("not a date")
        return dt.date.fromisoformat(value.strip()).isoformat()
    if kind == "list":
        items = _to_list(value)
        return [_coerce(ptype.item, v) if ptype.item else v for v in items]
    raise TypeError(f"unknown kind {kind}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "no", "off"}:
        return False
    raise TypeError("not a boolean (true/false)")


def _to_list(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            parsed = json.loads(text)
            if not isinstance(parsed, list):
                raise TypeError("not a list")
            return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    raise TypeError("not a list")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(
    specs: dict[str, ParamSpec], values: dict[str, Any], *, stage: str, overridden: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check ``values`` against ``specs``; return the full, coerced parameter set.

    Unknown names and missing required values are errors. Defaults fill in the rest; a computed
    default is left out (the notebook computes it) unless a parameter it reads is set here to
    another value than its default, or in ``overridden`` (set later, such as a partition's
    dates): see :func:`_derived`.
    """
    for name in values:
        if name not in specs:
            hint = get_close_matches(name, specs, n=1)
            known = ", ".join(sorted(specs)) or "(none)"
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ParameterError(
                f"stage {stage!r} has no parameter {_short(name)}{suggestion} (declared: {known})",
                stage=stage,
                parameter=name,
            )
    resolved: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in values:
            resolved[name] = coerce(spec, values[name], stage=stage)
        elif spec.computed:
            continue  # checked below, once the values it may read are coerced
        elif spec.required:
            raise ParameterError(
                f"stage {stage!r}: parameter {name!r} is required ({spec.type.describe()}); "
                f"pass it with -p {name}=...",
                stage=stage,
                parameter=name,
            )
        else:
            resolved[name] = spec.default
    changed = {n for n, v in resolved.items() if n in values and (specs[n].computed or v != specs[n].default)}
    for spec in specs.values():
        if spec.computed and spec.name not in values:
            _derived(spec, changed | set(overridden), stage=stage)
    return {n: resolved[n] for n in specs if n in resolved}


def _derived(spec: ParamSpec, given: set[str], *, stage: str) -> None:
    """A computed default is derived in the kernel, from the cell's own defaults: papermill injects
    the values passed *after* the parameters cell. So when a parameter it reads is given a
    value other than its default (``given``), the computed one would be stale, and it must be
    given too."""
    stale = [u for u in spec.uses if u in given]
    if stale:
        raise ParameterError(
            f"stage {stage!r}: parameter {spec.name!r} is computed in the parameters cell "
            f"(`{spec.name} = {spec.computed}`) from {', '.join(stale)}, which this run sets; "
            "papermill injects values after that cell, so it would keep the value computed from "
            f"the defaults. Pass it too (-p {spec.name}=...) or compute it in a later cell",
            stage=stage, parameter=spec.name,
        )


def parse_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["start=2010-01-01", "ingest.n=3"]`` -> ``{"start": "2010-01-01", "ingest.n": "3"}``
    (front-ends' ``-p KEY=VALUE``; values stay strings until a stage's types coerce them)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"parameter {pair!r} is not KEY=VALUE (for example -p start=2010-01-01)")
        out[key.strip()] = value
    return out


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ParameterError(f"{_short(name)} is not a valid parameter name", parameter=name)
    return name
