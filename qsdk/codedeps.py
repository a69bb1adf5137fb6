"""The code a task's result depends on beyond its notebook: the modules it imported.

Two halves:

* **In the kernel** (:func:`start_recording`, :func:`dump_recorded`, called by
  :mod:`qsdk.execution.inkernel`): every ``import`` statement and ``importlib.import_module`` call made
  while the notebook runs is noted as an edge *importer -> imported*, whatever module runs it
  (the notebook itself is ``__main__``). At the end the edges and the imported modules' files
  are written to the task's staging folder (``imports.json``).
* **In the driver** (:func:`closure`): from the edges whose importer is the notebook or a
  project module, the *code closure*: every project or qsdk module reached, followed through
  the static module-level imports of each (a pre-warmed kernel imported some modules before
  the notebook started, so their own imports ran unrecorded), each with a content hash; and
  the distribution version of every third-party package the notebook or project code imported.

Only edges from the notebook and from project code count, so the closure does not depend on
which modules a pre-warmed kernel happened to import ahead, nor on what pandas imports inside
itself. Hashes are memoised by (path, size, mtime), so a check re-hashes a file only when it
changed on disk.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMPORTS_FILE = "imports.json"
_NOTEBOOK = "__main__"

# ------------------------------------------------------------------ in the kernel
_edges: set[tuple[str, str]] = set()
_originals: dict[str, Any] = {}


def start_recording() -> None:
    """Wrap ``builtins.__import__`` and ``importlib.import_module`` to note every import."""
    import builtins
    import importlib

    if _originals:
        return
    original_import, original_import_module = builtins.__import__, importlib.import_module
    _originals.update(import_=original_import, import_module=original_import_module)

    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        module = original_import(name, globals, locals, fromlist, level)
        try:
            _note_statement(name, globals, fromlist, level)
        except Exception:  # noqa: BLE001 - recording must never break an import
            pass
        return module

    def recording_import_module(name, package=None):
        module = original_import_module(name, package)
        try:
            importer = sys._getframe(1).f_globals.get("__name__", "")
            _edges.add((importer, module.__name__))
        except Exception:  # noqa: BLE001
            pass
        return module

    builtins.__import__ = recording_import
    importlib.import_module = recording_import_module


def _note_statement(name: str, globals: Mapping[str, Any] | None, fromlist: Any, level: int) -> None:
    importer = (globals or {}).get("__name__", "")
    if level:
        from importlib.util import resolve_name

        base = resolve_name("." * level + name, (globals or {}).get("__package__") or "") if name else \
            resolve_name("." * level, (globals or {}).get("__package__") or "")
    else:
        base = name
    _edges.add((importer, base))
    for item in fromlist or ():
        if isinstance(item, str) and item != "*" and f"{base}.{item}" in sys.modules:
            _edges.add((importer, f"{base}.{item}"))


def stop_recording() -> None:
    import builtins
    import importlib

    if _originals:
        builtins.__import__ = _originals.pop("import_")
        importlib.import_module = _originals.pop("import_module")


def dump_recorded(staging_dir: str | Path) -> Path:
    """Write the recorded edges and each imported module's file to ``imports.json``."""
    stop_recording()
    files: dict[str, str | None] = {}
    for importer, imported in _edges:
        for name in (importer, *_parents(imported)):
            if name not in files:
                module = sys.modules.get(name)
                files[name] = getattr(module, "__file__", None) if module is not None else None
    path = Path(staging_dir) / IMPORTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"edges": sorted(_edges), "files": files}))
    return path


def _parents(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: importing a submodule runs its packages' ``__init__``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


# ------------------------------------------------------------------ in the driver
@dataclass(frozen=True)
class Closure:
    """What a task's code depends on beyond its notebook, as recorded after it ran.

    ``files``: project or qsdk source files, keyed by path relative to the project root
    (absolute when outside it), with their SHA-256; ``packages``: ``{distribution: version}``
    of the third-party packages the notebook or project code imported; ``python``: the
    interpreter version.
    """

    files: dict[str, str] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)
    python: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"files": dict(sorted(self.files.items())), "packages": dict(sorted(self.packages.items())),
                "python": self.python}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Closure:
        return cls(dict(data.get("files") or {}), dict(data.get("packages") or {}), str(data.get("python") or ""))


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def closure(staging_dir: str | Path, *, project_root: str | Path, notebook_dir: str | Path | None = None) -> Closure:
    """The code closure of the task whose kernel wrote ``imports.json`` into ``staging_dir``."""
    path = Path(staging_dir) / IMPORTS_FILE
    if not path.is_file():
        return Closure(python=python_version())
    log = json.loads(path.read_text())
    scope = _Scope(Path(project_root), Path(notebook_dir) if notebook_dir else None, log.get("files") or {})
    project = {name for name in scope.files if scope.project_file(name)}
    start = {imported for importer, imported in log.get("edges") or [] if importer == _NOTEBOOK or importer in project}
    files, third_party = scope.walk(start)
    return Closure(
        files={scope.key(f): file_hash(f) for f in sorted(files)},
        packages=distributions(third_party),
        python=python_version(),
    )


class _Scope:
    """Resolves module names to project files, from the kernel's record or by path search."""

    def __init__(self, project_root: Path, notebook_dir: Path | None, files: Mapping[str, str | None]) -> None:
        self.root = project_root.resolve()
        self.qsdk_dir = Path(__file__).resolve().parent  # this module sits at the top of qsdk/
        self.search = [p for p in (notebook_dir, self.qsdk_dir.parent, self.root) if p is not None]
        self.files = dict(files)
        self._excluded = tuple({Path(p).resolve() for p in (sys.prefix, sys.base_prefix)})

    def project_file(self, name: str) -> Path | None:
        """The file of module ``name`` when it is project or qsdk code, else None."""
        if not name:
            return None
        if name in self.files:  # the kernel's record: None for built-in and namespace modules
            file = self.files[name]
            path = Path(file).resolve() if file else None
        else:
            path = self._find(name)
        if path is None or path.suffix != ".py":
            return None
        if path.is_relative_to(self.qsdk_dir):
            return path
        if path.is_relative_to(self.root) and "site-packages" not in path.parts \
                and not any(path.is_relative_to(p) for p in self._excluded):
            return path
        return None

    def _find(self, name: str) -> Path | None:
        rel = Path(*name.split("."))
        for base in self.search:
            for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
                if candidate.is_file():
                    return candidate.resolve()
        return None

    def walk(self, start: Iterable[str], *,
             follow: Callable[[Path, str], list[str]] | None = None) -> tuple[set[Path], set[str]]:
        """Project files reached from ``start`` through ``follow(path, module)`` (the imports of
        a project module to walk on; default: its module-level imports), and the top-level names
        of the third-party modules met."""
        follow = follow or static_imports
        files: set[Path] = set()
        third_party: set[str] = set()
        queue = [p for name in start for p in _parents(name)]
        seen: set[str] = set()
        while queue:
            name = queue.pop()
            if name in seen or not name:
                continue
            seen.add(name)
            path = self.project_file(name)
            if path is None:
                top = name.split(".")[0]
                if self.project_file(top) is not None:
                    continue  # a name inside a project module (`from qsdk.x import SomeClass`)
                if top not in sys.stdlib_module_names and top not in sys.builtin_module_names \
                        and top != _NOTEBOOK and not top.startswith("_"):
                    third_party.add(top)
                continue
            files.add(path)
            queue += [p for imported in follow(path, name) for p in _parents(imported)]
        return files, third_party

    def key(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


def resolve_key(key: str, project_root: str | Path) -> Path:
    path = Path(key)
    return path if path.is_absolute() else Path(project_root) / path


_STATIC: dict[tuple[str, int, int], list[str]] = {}


def static_imports(path: Path, module: str) -> list[str]:
    """Modules ``path`` (the module named ``module``) imports at module level; ``if
    TYPE_CHECKING`` blocks left out. ``from a import b`` yields ``a`` and ``a.b``."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo in _STATIC:
        return _STATIC[memo]
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = _imports_in(_module_level(tree.body), package=package)
    _STATIC[memo] = found
    return found


_ALL: dict[tuple[str, int, int, str], list[str]] = {}


def all_imports(path: Path, module: str) -> list[str]:
    """Every module ``path`` (the module named ``module``) imports, function-level ones included;
    memoised by (path, size, mtime) like :func:`static_imports` (``qsdk dvc sync`` walks the same
    modules for every stage)."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns, module)
    if memo not in _ALL:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        _ALL[memo] = _imports_in(ast.walk(ast.parse(path.read_bytes())), package=package)
    return _ALL[memo]


def _imports_in(nodes: Iterable[ast.AST], *, package: str) -> list[str]:
    """Absolute module names of the import statements among ``nodes``."""
    found: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
              and isinstance(node.value.func, ast.Name) and node.value.func.id == "lazy_module"
              and node.value.args and isinstance(node.value.args[0], ast.Constant)):
            found.append(str(node.value.args[0].value))  # qsdk.lazyimport: imported on first use
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - node.level + 1] if node.level > 1 else parts
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names if a.name != "*"]
    return found


def _module_level(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    for node in body:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "TYPE_CHECKING" not in test:
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)  # `else: pa = lazy_module("pyarrow")`
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _module_level(block)
        else:
            yield node


_HASHES: dict[str, tuple[int, int, str]] = {}


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file, memoised by (path, size, mtime): a check re-hashes changed files only.
    A missing file hashes to ``""``."""
    path = str(path)
    try:
        st = os.stat(path)
    except OSError:
        return ""
    memo = _HASHES.get(path)
    if memo is not None and memo[:2] == (st.st_size, st.st_mtime_ns):
        return memo[2]
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    _HASHES[path] = (st.st_size, st.st_mtime_ns, digest)
    return digest


_TOP_LEVEL: tuple[tuple[tuple[str, int], ...], Mapping[str, list[str]]] | None = None


_PROVIDERS: dict[tuple[str, tuple[tuple[str, int], ...]], dict[str, str]] = {}


def distributions(top_level_names: Iterable[str]) -> dict[str, str]:
    """``{distribution: version}`` of the installed distributions providing these import names.

    Memoised per import name while no ``sys.path`` folder changes (an install, upgrade or
    uninstall adds or removes a ``.dist-info`` folder, which changes its folder's mtime): asking
    ``importlib.metadata`` and parsing each ``METADATA`` took a Ray worker about 0.4 s per task."""
    stamp = _path_stamp()
    out: dict[str, str] = {}
    for name in top_level_names:
        if (name, stamp) not in _PROVIDERS:
            _PROVIDERS[(name, stamp)] = _providers(name, stamp)
        out.update(_PROVIDERS[(name, stamp)])
    return out


def _path_stamp() -> tuple[tuple[str, int], ...]:
    stamp = []
    for folder in sys.path:
        try:
            stamp.append((folder, os.stat(folder or ".").st_mtime_ns))
        except OSError:
            continue
    return tuple(stamp)


def _providers(name: str, stamp: tuple[tuple[str, int], ...]) -> dict[str, str]:
    from importlib import metadata

    version = installed_version(name)  # most import names are their distribution's name
    if version is not None:
        return {metadata.distribution(name).metadata["Name"]: version}
    out: dict[str, str] = {}
    for dist in _top_level(stamp).get(name, ()):
        version = installed_version(dist)
        if version is not None:
            out[dist] = version
    return out


def _top_level(stamp: tuple[tuple[str, int], ...]) -> Mapping[str, list[str]]:
    """``importlib.metadata.packages_distributions()`` for these ``sys.path`` folders: it reads
    every installed distribution's file list (about 0.2 s on an idle machine, for each new
    process: every Ray worker, every ``qsdk run``), so it is kept in memory and on disk
    (:func:`user_cache_dir`), under a key that changes with any ``sys.path`` folder's mtime."""
    global _TOP_LEVEL
    if _TOP_LEVEL is None or _TOP_LEVEL[0] != stamp:
        _TOP_LEVEL = (stamp, _stored_top_level(stamp))
    return _TOP_LEVEL[1]


def _stored_top_level(stamp: tuple[tuple[str, int], ...]) -> Mapping[str, list[str]]:
    from importlib import metadata

    folder = user_cache_dir("distributions")
    key = hashlib.sha256(json.dumps([sys.version, sys.prefix, stamp]).encode()).hexdigest()
    path = folder / f"{key}.json" if folder is not None else None
    if path is not None:
        try:
            index = json.loads(path.read_text())
            if isinstance(index, dict):
                return index
        except (OSError, ValueError):
            pass  # not there yet, or unreadable: scan
    index = metadata.packages_distributions()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(index))
            os.replace(partial, path)  # readers see the whole file or none
            _prune(path.parent, keep=_STORED_SCANS, written=path)
        except OSError:
            pass  # a read-only home: scan again next time
    return index


_STORED_SCANS = 16  # one per install state (and per sys.path a process has): the newest are kept


def _prune(folder: Path, *, keep: int, written: Path) -> None:
    """Keep ``written`` and the ``keep - 1`` most recently written other ``*.json`` files of
    ``folder``; delete the rest."""
    others = [p for p in folder.glob("*.json") if p != written]
    others.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in others[keep - 1:]:
        old.unlink(missing_ok=True)


def user_cache_dir(name: str) -> Path | None:
    """``$XDG_CACHE_HOME/qsdk/<name>`` (default ``~/.cache``), for what qsdk may recompute at any
    time; None when that folder cannot be named (no home)."""
    folder = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(folder) / "qsdk" / name if os.path.isabs(folder) else None


def installed_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


_INDEX = "\0dist-info index"  # the key under which a versions memo keeps its index
_VERSIONS: dict[str, Any] = {}  # the process-wide memo of listed_version


def listed_version(dist: str) -> str | None:
    """The installed version of ``dist`` from one listing of the dist-info folders per process.

    For keys that only spare repeated work (the check-validation markers); a cache decision
    lists afresh per check (``versions`` of :func:`changes` and :func:`source_fingerprints`)."""
    return _listed_version(dist, _VERSIONS)


def _listed_version(dist: str, memo: dict[str, Any]) -> str | None:
    """``installed_version`` without importing ``importlib.metadata``: installed wheels name
    their ``NAME-VERSION.dist-info`` folder after both, so one listing of each ``sys.path``
    folder (kept in ``memo``) answers for every distribution; anything else asks importlib."""
    if _INDEX not in memo:
        index: dict[str, str] = {}
        for folder in sys.path:
            try:
                names = os.listdir(folder or ".")
            except OSError:
                continue
            for name in names:
                stem = name[: -len(".dist-info")]
                if name.endswith(".dist-info") and stem.count("-") == 1:
                    dist_name, version = stem.split("-")
                    index.setdefault(_normalise(dist_name), version)
        memo[_INDEX] = index
    return memo[_INDEX].get(_normalise(dist)) or installed_version(dist)


def _normalise(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "_", name).lower()


def changes(recorded: Closure, *, project_root: str | Path,
            versions: dict[str, str | None] | None = None) -> list[str]:
    """Why ``recorded`` no longer describes the code on this machine, in words a user can act on
    (``qsdk/quant/metrics.py changed``, ``pandas 2.2.3 -> 2.3.0``). ``versions``: a memo of
    installed versions shared by the checks of one status or run."""
    out: list[str] = []
    for key, digest in recorded.files.items():
        now = file_hash(resolve_key(key, project_root))
        if now != digest:
            out.append(f"{key} {'is gone' if not now else 'changed'}")
    memo = versions if versions is not None else {}
    for dist, version in recorded.packages.items():
        if dist not in memo:
            memo[dist] = _listed_version(dist, memo)
        if memo[dist] != version:
            out.append(f"{dist} {version} -> {memo[dist] or 'not installed'}")
    if recorded.python and recorded.python != python_version():
        out.append(f"python {recorded.python} -> {python_version()}")
    return out


def source_fingerprints(sources: Iterable[Any], *, project_root: str | Path,
                        versions: dict[str, Any] | None = None) -> dict[str, str]:
    """``{label: identity}`` of a stage's declared non-table sources (:class:`qsdk.model.stage.SourceSpec`):
    a package's installed version, or a hash over the files a glob matches (path and content).
    ``versions``: the memo of installed versions :func:`changes` takes (one listing per check);
    never the process-wide one, which would hide an upgrade from a long-lived Jupyter session."""
    out: dict[str, str] = {}
    root = Path(project_root)
    memo = versions if versions is not None else {}
    for source in sources:
        if source.kind == "package":
            out[source.label] = _listed_version(source.name, memo) or "not installed"
        else:
            digest = hashlib.sha256()
            for path in sorted(root.glob(source.name)):
                if path.is_file():
                    digest.update(f"{path.relative_to(root)}\0{file_hash(path)}\0".encode())
            out[source.label] = digest.hexdigest()
    return out


def source_changes(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    out = []
    for label in sorted(set(recorded) | set(current)):
        before, now = recorded.get(label), current.get(label)
        if before == now:
            continue
        if label.startswith("files "):
            out.append(f"source {label} changed")
        elif before is None or now is None:
            out.append(f"source {label} {'declared' if before is None else 'no longer declared'}")
        else:
            out.append(f"source {label} {before} -> {now}")
    return out


def notebook_closure(cells: Iterable[Mapping[str, Any]], *, notebook: str | Path,
                     project_root: str | Path) -> list[str]:
    """The project modules a notebook's code imports, found without running it (for
    ``dvc.yaml`` deps): every import in its code cells, then through project modules their
    imports, as paths relative to ``project_root``. In qsdk's own machinery (all of qsdk but
    ``qsdk.quant``) only module-level imports and lazy imports of ``qsdk.quant`` count: read
    statically, its other lazy imports pull in nearly every module (the cache records the ones
    a run executes). ``import qsdk`` counts as the lakehouse loader, which
    ``qsdk.DataLoader`` and ``qsdk.write_table`` load on first use."""
    names: set[str] = set()
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = "\n".join(line for line in str(cell.get("source", "")).splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        names |= set(_imports_in(ast.walk(tree), package=""))
    if "qsdk" in names:
        names.add("qsdk.lakehouse.loader")
    scope = _Scope(Path(project_root), Path(notebook).parent, {})
    root = scope.root
    machinery = scope.qsdk_dir

    def follow(path: Path, name: str) -> list[str]:
        found = all_imports(path, name)
        if path.is_relative_to(machinery) and not path.is_relative_to(machinery / "quant"):
            # qsdk's machinery: its lazy imports would fan out to all of it; keep the quant library's
            return [*static_imports(path, name), *(n for n in found if n.startswith("qsdk.quant"))]
        return found

    files, _ = scope.walk(names, follow=follow)
    return sorted(str(f.relative_to(root)) for f in files if f.is_relative_to(root))
