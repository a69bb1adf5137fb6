"""Reads of lakehouse files that bypass qsdk fail the stage (reason ``direct_read``).

A stage must read tables through ``qsdk.DataLoader``: that is where its contract is enforced
and where the read is recorded for lineage and the cache key. A notebook that opens a table's
files itself (``open()``, ``pd.read_parquet``, ``pyarrow.dataset``, ``deltalake.DeltaTable``)
reads around both. :func:`install` (called in the stage's kernel by :mod:`qsdk.execution.inkernel`
before the first cell) watches for that in two ways:

* a Python audit hook on the ``open`` event sees every Python-level open: ``open()``,
  ``pathlib``, pandas' readers of a file, numpy, ...;
* readers that open files in native code never reach Python's ``open``: the Python entry
  points of deltalake's Rust reader (``DeltaTable``) and of pyarrow's Parquet and dataset
  readers (``ParquetFile``, ``ParquetDataset``, hence ``read_table`` and pandas'
  ``read_parquet`` of a folder, ``pyarrow.dataset.dataset``) are wrapped, as soon as each
  module is imported.

An open of a path under the lakehouse root (links to folders resolved) raises
:class:`~qsdk.errors.DirectReadError` in the cell that did it, and is recorded in the task's
staging folder, so the executor fails the stage with reason ``direct_read`` even when the
notebook caught the exception. qsdk's own reads run inside :func:`trusted` (set by
:class:`~qsdk.lakehouse.tables.Lakehouse`): the flag marks *who* reads, not which path.
Writes are left to the direct-write check after the notebook, which sees what changed on disk
and says so (deltalake's own code, e.g. ``write_deltalake`` opening the table it writes to, is
a write). qsdk's private folders (cache records, sandboxes, locks, the runs folder) are not
tables and are not watched.

Limits: this catches mistakes, not a notebook set on evading it: a reader whose native code
opens files through an entry point not wrapped here (polars, DuckDB, a subprocess) is not seen,
nor an open through a link to a single lakehouse file made outside the lakehouse (a link made
inside it fails the stage as a direct write). On an object-store lakehouse the wrapped readers'
``s3://`` arguments are checked (and a key given with pyarrow's ``S3FileSystem``, as pandas
passes it on); reads through other clients (boto3, s3fs, DuckDB) are not seen.
Audit hooks cannot be removed: the hook stays for the kernel's life. When no stage is watched
it returns at once; otherwise an open costs a dict lookup (the folder, resolved once) and a
string prefix test, about a microsecond.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from qsdk.errors import DirectReadError

RECORD = "direct_reads.jsonl"  # in the task's staging folder, one JSON object per direct read

_trusted: ContextVar[bool] = ContextVar("qsdk_lakehouse_trusted", default=False)
_busy = threading.local()  # set while the guard records a violation (its own file write)


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """Mark the reads made inside as qsdk's own (``Lakehouse``): the guard lets them pass."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


@dataclass(frozen=True)
class _Watch:
    roots: tuple[str, ...]  # lakehouse roots, resolved, each ending with os.sep
    private: frozenset[str]  # resolved folders under a root that are not tables
    stage: str
    allowed: tuple[str, ...]  # tables the stage may read (for the message)
    staging_dir: str | None
    uris: tuple[str, ...] = ()  # object-store roots, ``s3://bucket/prefix/``
    private_uris: tuple[str, ...] = ()  # their folders that are not tables, each ending with /


_watch: _Watch | None = None
_folders: dict[str, str] = {}  # folder -> the folder resolved (links followed)


def private_folders(root: str | Path, runs_dir: str | None) -> set[str]:
    """Folders under ``root`` that qsdk writes outside table commits: cache records, sandboxes,
    table-creation locks, and the runs folder (a stage context's ``runs_dir``) when it lies
    inside the lakehouse."""
    root = Path(root)
    return {str(root / d) for d in private_names()} | ({str(Path(runs_dir))} if runs_dir else set())


def private_names() -> tuple[str, ...]:
    """The top-level folders of a lakehouse that qsdk writes outside table commits."""
    from qsdk.cache import CACHE_DIR
    from qsdk.names import LOCK_DIR, SANDBOX_DIR

    return (CACHE_DIR, SANDBOX_DIR, LOCK_DIR)


def install(context: Any) -> None:
    """Watch the lakehouse of stage ``context`` (a :class:`~qsdk.execution.context.StageContext`) in this
    process, from now on. Idempotent; ``None`` stops watching (the hook itself stays)."""
    global _watch
    _install_hooks()
    if context is None:
        _watch = None
        return
    every = list(dict.fromkeys(str(r) for r in (context.lakehouse_root, *context.read_roots.values())))
    roots = [r for r in every if "://" not in r]
    uris = tuple(_uri(r).rstrip("/") + "/" for r in every if "://" in r)
    private_uris = tuple(f"{u}{d}/" for u in uris for d in private_names())
    real = [os.path.realpath(r) for r in dict.fromkeys(roots)]
    private = set()
    for root in real:
        private |= {os.path.realpath(p) for p in private_folders(root, context.runs_dir)}
    _watch = _Watch(roots=tuple(r.rstrip(os.sep) + os.sep for r in real), private=frozenset(private),
                    uris=uris, private_uris=private_uris, stage=context.stage,
                    allowed=tuple(context.allowed_reads), staging_dir=context.staging_dir)


def recorded(staging_dir: str | Path) -> list[dict[str, Any]]:
    """The direct reads the guard recorded for a task (each: ``path``, ``how``, ``table``)."""
    path = Path(staging_dir) / RECORD
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ the check


def check(source: Any, *, how: str, filesystem: Any = None) -> None:
    """Raise :class:`DirectReadError` if ``source`` (a path, ``file://`` or ``s3://`` URI, or a
    list of them) lies in a watched lakehouse and this is not one of qsdk's own reads. A path
    given with a pyarrow ``S3FileSystem`` (``bucket/key``, as pandas passes it on) is an
    ``s3://`` URI."""
    if _watch is None or _trusted.get() or getattr(_busy, "on", False):
        return
    if _watch.uris:
        on_s3 = type(filesystem).__name__ == "S3FileSystem"
        for uri in _uris(source, on_s3=on_s3):
            if uri.startswith(_watch.uris) and not uri.startswith(_watch.private_uris):
                raise _violation(uri, how)
    for path in _paths(source):
        hit = _lakehouse_path(path)
        if hit is not None:
            raise _violation(hit, how)


def _uri(text: str) -> str:
    """``s3a://`` spelled ``s3://``; other text as it is."""
    return "s3://" + text[len("s3a://"):] if text.startswith("s3a://") else text


def _uris(source: Any, *, on_s3: bool) -> list[str]:
    if isinstance(source, list | tuple):
        return [u for item in source for u in _uris(item, on_s3=on_s3)]
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        return []
    if "://" in source:
        return [_uri(source)]
    return [f"s3://{source.lstrip('/')}"] if on_s3 else []


def _paths(source: Any) -> list[str]:
    if isinstance(source, list | tuple):
        return [p for item in source for p in _paths(item)]
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    elif not isinstance(source, str):
        try:
            source = os.fspath(source)
        except TypeError:  # a file object, a buffer, a file descriptor: no path to check
            return []
        source = os.fsdecode(source)
    if source.startswith("file:"):
        source = unquote(urlparse(source).path)
    elif "://" in source:  # another file system (s3://...): not this lakehouse
        return []
    return [source]


def _lakehouse_path(path: str) -> str | None:
    """``path`` with its folder resolved (links followed, memoised per folder), if it lies
    under a watched root outside qsdk's private folders."""
    watch = _watch
    if watch is None:
        return None
    if not path.startswith(os.sep):
        path = os.path.join(os.getcwd(), path)
    if "/." in path or "//" in path:
        path = os.path.normpath(path)
    folder, _, name = path.rpartition(os.sep)
    real_folder = _folders.get(folder)
    if real_folder is None:
        real_folder = _folders[folder] = os.path.realpath(folder or os.sep)
    real = f"{real_folder}{os.sep}{name}"
    if not real.startswith(watch.roots):
        return None
    if any(real == p or real.startswith(p + os.sep) for p in watch.private):
        return None
    return real


def _violation(path: str, how: str) -> DirectReadError:
    watch = _watch
    assert watch is not None
    root = next(r for r in (*watch.roots, *watch.uris) if path.startswith(r))
    parts = Path(path[len(root):]).parts
    table = f"{parts[0]}.{parts[1]}" if len(parts) >= 2 else None
    if table is None:
        fix = "read tables only with qsdk.DataLoader().read('layer.name')"
    else:
        fix = f"read the table with qsdk.DataLoader().read({table!r})"
        if table not in watch.allowed:
            fix += f", after adding {table!r} to the inputs: of stage {watch.stage!r} in pipelines/"
    _record(watch, {"path": path, "how": how, "table": table})
    return DirectReadError(
        f"stage {watch.stage!r} read {path} directly ({how}), around its contract and unrecorded "
        f"for lineage and the cache: {fix}",
        stage=watch.stage, path=path, table=table, how=how,
    )


def _record(watch: _Watch, entry: dict[str, Any]) -> None:
    if not watch.staging_dir:
        return
    _busy.on = True
    try:
        folder = Path(watch.staging_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / RECORD, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
    finally:
        _busy.on = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """The ``open`` audit hook: runs on every open in the kernel, so kept to a few dict and
    string operations for a path outside the lakehouse."""
    if event != "open" or _watch is None:
        return
    path, flags = args[0], (args[2] if len(args) > 2 else None)
    if isinstance(flags, int) and flags & os.O_ACCMODE == os.O_WRONLY:
        return  # a write: the direct-write check after the notebook reports it
    try:
        if type(path) is not str:
            path = _paths(path)[0] if not isinstance(path, int) else None
        hit = _lakehouse_path(path) if path else None
    except Exception:  # noqa: BLE001 - a guard bug must never break the kernel's every open
        hit = None
    if hit is not None and not _trusted.get() and not getattr(_busy, "on", False):
        raise _violation(hit, "open")


# ------------------------------------------------------------------ native readers


def _guard_init(cls: type, how: str, *, param: str, skip_callers: tuple[str, ...] = ()) -> None:
    """Check the path argument (first, or ``param=``) of ``cls(...)`` before it opens anything."""
    original = cls.__init__  # type: ignore[misc]  # wrapping the class's own __init__ is the point
    if getattr(original, "__qsdk_guarded__", False):
        return

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if _watch is not None and not (skip_callers and caller.startswith(skip_callers)):
            check(args[0] if args else kwargs.get(param), how=how, filesystem=kwargs.get("filesystem"))
        original(self, *args, **kwargs)

    __init__.__qsdk_guarded__ = True  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]


def _guard_function(module: Any, name: str, how: str) -> None:
    original = getattr(module, name)
    if getattr(original, "__qsdk_guarded__", False):
        return

    @functools.wraps(original)
    def wrapper(source: Any, *args: Any, **kwargs: Any) -> Any:
        check(source, how=how, filesystem=kwargs.get("filesystem"))
        return original(source, *args, **kwargs)

    wrapper.__qsdk_guarded__ = True  # type: ignore[attr-defined]
    setattr(module, name, wrapper)


def _patch_deltalake(module: Any) -> None:
    # deltalake's own code opening the table it writes to (write_deltalake) is a write
    _guard_init(module.DeltaTable, "deltalake.DeltaTable", param="table_uri", skip_callers=("deltalake.",))


def _patch_parquet(module: Any) -> None:
    _guard_init(module.ParquetFile, "pyarrow.parquet.ParquetFile", param="source")
    _guard_init(module.ParquetDataset, "pyarrow.parquet.read_table", param="path_or_paths")


def _patch_dataset(module: Any) -> None:
    _guard_function(module, "dataset", "pyarrow.dataset.dataset")


_PATCHES: dict[str, Callable[[Any], None]] = {
    "deltalake.table": _patch_deltalake,
    "pyarrow.parquet.core": _patch_parquet,
    "pyarrow.dataset": _patch_dataset,
}


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module (before anyone can use it)."""

    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self._loader, self._patch = loader, patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self._loader, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


_hooks_installed = False


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    sys.addaudithook(_audit)
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PatchOnImport())
