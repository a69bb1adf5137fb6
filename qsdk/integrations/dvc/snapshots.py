"""Golden snapshots: a consistent set of Delta table versions, frozen as files tracked by DVC.

Layout, under the project root::

    snapshots/NAME/manifest.json           table -> version, rows, schema, commit, files + sha256
    snapshots/NAME/<table>/part-00000.parquet
    snapshots/NAME.dvc                     DVC's hash of the folder + qsdk's summary (commit it)

``create`` reads each table once at one explicit version (so a concurrent writer cannot make
the set inconsistent), exports that version to Parquet, ``dvc add``\\ s the folder and pushes it
to the default DVC remote (a local folder remote is configured when there is none). The
``.dvc`` file also carries, under ``meta.qsdk``, the summary ``list`` and ``diff`` need and the
sha256 of ``manifest.json``: a chain of trust from git (the ``.dvc`` file) to every byte.

``restore`` checks that it would not silently overwrite newer data, makes the folder match the
``.dvc`` file (``dvc pull``), and then re-hashes every file itself: DVC does not re-hash files
in its cache (they are read-only), so a same-size corruption passes ``dvc status`` and
``dvc checkout``. Only verified rows are written back, as a *new* Delta version (overwrite),
so the version it replaces stays reachable through Delta history.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from qsdk import names as qnames
from qsdk.config import Config
from qsdk.errors import (
    SnapshotConflict,
    SnapshotCorrupted,
    UnknownNameError,
    VersioningError,
)
from qsdk.integrations.dvc import command as dvc
from qsdk.lakehouse.tables import Lakehouse
from qsdk.lakehouse.types import TYPES
from qsdk.lazyimport import lazy_module
from qsdk.model.registry import Registry

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
else:
    pa = lazy_module("pyarrow")
    pq = lazy_module("pyarrow.parquet")

SNAPSHOT_DIR = "snapshots"
MANIFEST = "manifest.json"
FORMAT = 1
ROWS_PER_FILE = 1_000_000
# Delta commit metadata of a restore: which snapshot (and DVC hash) the rows came from
SNAPSHOT_KEY = "qsdk.snapshot"
SNAPSHOT_MD5_KEY = "qsdk.snapshot.md5"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")

TableState = Literal["missing", "unchanged", "restored", "changed"]


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 100 or name.endswith(".dvc"):
        raise VersioningError(
            f"invalid snapshot name {name!r}: use letters, digits, '_', '-' and single dots "
            "(for example gold-2024-01), at most 100 characters",
            snapshot=str(name),
        )
    return name


def sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _type_name(typ: pa.DataType) -> str:
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        return "string"
    return str(typ)


def _plain(table: pa.Table) -> pa.Table:
    """String views as plain strings: one Parquet encoding whatever the reader returned."""
    schema = pa.schema([
        f.with_type(pa.string()) if _type_name(f.type) == "string" else f for f in table.schema
    ])
    return table.cast(schema) if schema != table.schema else table


def _combined(files: Mapping[str, Mapping[str, Any]]) -> str:
    text = "\n".join(f"{rel} {files[rel]['sha256']}" for rel in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ value types


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as its ``.dvc`` file describes it (no data needed)."""

    name: str
    md5: str  # DVC's hash of the folder (``<md5>.dir``)
    created: str
    tables: dict[str, dict[str, Any]]  # table -> version, rows, sha256, columns
    manifest_sha256: str
    dvc_file: Path
    local: bool  # the folder is present in the workspace
    run_id: str | None = None

    @property
    def versions(self) -> dict[str, int]:
        return {t: int(e["version"]) for t, e in self.tables.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "md5": self.md5, "created": self.created, "run_id": self.run_id,
                "local": self.local, "dvc_file": str(self.dvc_file),
                "tables": {t: {"version": e["version"], "rows": e["rows"]} for t, e in self.tables.items()}}


@dataclass(frozen=True)
class Problem:
    """One snapshot file that is missing or differs from its recorded hash."""

    file: str  # path relative to the project root
    expected: str  # sha256 (or ``md5:...`` for a file known only from DVC's listing)
    actual: str | None  # None: missing
    cache: str | None = None  # the DVC cache object this file is checked out from
    cached: bool = True  # False: that cache object does not exist

    def describe(self) -> str:
        if not self.cached:
            return f"{self.file}: missing, and not in the DVC cache (no {self.cache})"
        got = "it is missing" if self.actual is None else f"got {self.actual}"
        where = f" (DVC cache file {self.cache})" if self.cache else ""
        return f"{self.file}: expected sha256 {self.expected}, {got}{where}"


@dataclass
class RestoreReport:
    name: str
    md5: str
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        lines = [f"snapshot {self.name} ({self.md5})"]
        for table, e in self.tables.items():
            if e["status"] == "restored":
                prev = "new table" if e["previous_version"] is None else f"was version {e['previous_version']}"
                lines.append(f"  {table:<28} restored {e['rows']} rows of version {e['snapshot_version']} "
                             f"as version {e['version']} ({prev})")
            else:
                lines.append(f"  {table:<28} {e['status']} (version {e['version']})")
        return "\n".join(lines)


@dataclass
class TableDiff:
    table: str
    in_a: bool
    in_b: bool
    version_a: int | None
    version_b: int | None
    rows_a: int | None
    rows_b: int | None
    same_data: bool
    added: dict[str, str]  # columns in B only
    removed: dict[str, str]  # columns in A only
    retyped: dict[str, tuple[str, str]]  # column -> (type in A, type in B)

    def describe(self) -> str:
        if not (self.in_a and self.in_b):
            return f"  {self.table:<28} only in {'A' if self.in_a else 'B'}"
        delta = (self.rows_b or 0) - (self.rows_a or 0)
        parts = [f"rows {self.rows_a} -> {self.rows_b} ({delta:+d})",
                 f"version {self.version_a} -> {self.version_b}",
                 "same data" if self.same_data else "data differs"]
        if self.added:
            parts.append("added " + ", ".join(f"{c}: {t}" for c, t in self.added.items()))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        if self.retyped:
            parts.append("retyped " + ", ".join(f"{c}: {a} -> {b}" for c, (a, b) in self.retyped.items()))
        return f"  {self.table:<28} " + "; ".join(parts)


@dataclass
class SnapshotDiff:
    a: str
    b: str
    tables: list[TableDiff]

    @property
    def identical(self) -> bool:
        return all(t.in_a and t.in_b and t.same_data and not (t.added or t.removed or t.retyped)
                   for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "identical": self.identical,
                "tables": [asdict(t) for t in self.tables]}

    def describe(self) -> str:
        return "\n".join([f"A = {self.a}, B = {self.b}", *(t.describe() for t in self.tables)])


# ------------------------------------------------------------------ the store


class SnapshotStore:
    """The snapshots of one project (``<project>/snapshots``) over its lakehouse."""

    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self._registry = registry

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.load(self.config)
        return self._registry

    @property
    def project(self) -> Path:
        return self.config.project_root

    @property
    def folder(self) -> Path:
        return self.project / SNAPSHOT_DIR

    def path(self, name: str) -> Path:
        return self.folder / check_name(name)

    def dvc_file(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}.dvc"

    def lakehouse(self) -> Lakehouse:
        return Lakehouse(self.config.lakehouse_root, self.registry.tables)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.project).as_posix()

    # -------------------------------------------------------------- reading .dvc files
    def list(self) -> list[SnapshotInfo]:
        if not self.folder.is_dir():
            return []
        infos = []
        for path in sorted(self.folder.glob("*.dvc")):
            info = self._load(path, strict=False)
            if info is not None:
                infos.append(info)
        return infos

    def get(self, name: str) -> SnapshotInfo:
        path = self.dvc_file(name)
        if not path.is_file():
            known = [i.name for i in self.list()]
            raise UnknownNameError(
                f"unknown snapshot {name!r} (no {self._rel(path)}); known snapshots: "
                f"{', '.join(known) or '(none)'}",
                known=known,
            )
        info = self._load(path, strict=True)
        assert info is not None
        return info

    def _load(self, path: Path, *, strict: bool) -> SnapshotInfo | None:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
            out = doc["outs"][0]
            meta = doc["meta"]["qsdk"]
            return SnapshotInfo(
                name=path.stem, md5=str(out["md5"]), created=str(meta["created"]),
                tables={str(t): dict(e) for t, e in meta["tables"].items()},
                manifest_sha256=str(meta["manifest_sha256"]), dvc_file=path,
                local=(path.with_suffix("") / MANIFEST).is_file(), run_id=meta.get("run_id"),
            )
        except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError) as exc:
            if strict:
                raise VersioningError(
                    f"{self._rel(path)} is not a qsdk snapshot (no meta.qsdk written by `qsdk snapshot "
                    f"create`, or it was edited): {type(exc).__name__}: {exc}"
                ) from None
            return None

    # -------------------------------------------------------------- create
    def check_new(self, name: str) -> None:
        """Raise unless ``name`` is a valid, unused snapshot name in a DVC repository."""
        folder, dvc_file = self.path(name), self.dvc_file(name)
        if folder.exists() or dvc_file.exists():
            raise VersioningError(
                f"snapshot {name!r} already exists ({self._rel(dvc_file)}); snapshots are immutable: "
                "choose another name", snapshot=name,
            )
        dvc.require_root(self.project)

    def create(
        self,
        name: str,
        tables: Sequence[str] = (),
        *,
        versions: Mapping[str, int | None] | None = None,
        push: bool = True,
        run_id: str | None = None,
    ) -> SnapshotInfo:
        """Freeze ``tables`` (default: every registry table that exists) into snapshot ``name``.

        ``versions`` pins tables to explicit Delta versions (a table given with ``None`` is
        taken at its current version); the others are read once at their current version.
        ``push``: also ``dvc push`` to the default remote (configured if there is none).
        """
        self.check_new(name)
        lake = self.lakehouse()
        wanted = dict(versions or {})
        names = list(dict.fromkeys([*tables, *wanted])) or [t for t in sorted(self.registry.tables)
                                                             if lake.exists(t)]
        if not names:
            raise VersioningError(
                f"nothing to snapshot: none of the registry's tables exists under {lake.root}; run a flow first"
            )
        for table in names:
            self.registry.table(table)  # unknown name -> UnknownNameError listing the known ones
            if not lake.exists(table):
                raise VersioningError(f"table {table!r} does not exist under {lake.root}: run the stage "
                                      "that writes it, or leave it out of the snapshot", table=table)
        pinned = {t: v if (v := wanted.get(t)) is not None else lake.latest_version(t) for t in names}
        folder, dvc_file = self.path(name), self.dvc_file(name)
        tmp = self.folder / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            manifest = _export(lake, pinned, tmp, name=name, run_id=run_id)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            dvc.run("add", self._rel(folder), cwd=self.project)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            dvc_file.unlink(missing_ok=True)
            raise
        doc = yaml.safe_load(dvc_file.read_text())
        doc["meta"] = {"qsdk": {
            "format": FORMAT,
            "created": manifest["created"],
            "run_id": run_id,
            "manifest_sha256": sha256(folder / MANIFEST),
            "tables": {t: {"version": e["version"], "rows": e["rows"], "sha256": e["sha256"],
                           "commit": e["commit"], "columns": e["columns"]}
                       for t, e in manifest["tables"].items()},
        }}
        dvc_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        if push:
            self.push(name)
        return self.get(name)

    def push(self, name: str) -> str:
        """``dvc push`` the snapshot to the default remote; returns the remote's name."""
        remote = dvc.ensure_remote(self.project)
        try:
            dvc.run("push", "-r", remote, self._rel(self.dvc_file(name)), cwd=self.project)
        except VersioningError as exc:
            raise VersioningError(
                f"snapshot {name!r} is created and in the local DVC cache, but pushing it to remote "
                f"{remote!r} failed: {exc}; run `dvc push {self._rel(self.dvc_file(name))}` once the "
                "remote is reachable", snapshot=name,
            ) from exc
        return remote

    # -------------------------------------------------------------- verify and materialise
    def verify(self, name: str, tables: Sequence[str] | None = None) -> builtins.list[Problem]:
        """Re-hash the snapshot's files in the workspace; ``[]`` when every file matches."""
        info = self.get(name)
        folder = self.path(name)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            return [Problem(self._rel(manifest_path), info.manifest_sha256, None)]
        actual = sha256(manifest_path)
        if actual != info.manifest_sha256:  # nothing else in the folder can be trusted
            return [Problem(self._rel(manifest_path), info.manifest_sha256, actual)]
        manifest = json.loads(manifest_path.read_text())
        problems = []
        for table in tables if tables is not None else sorted(manifest["tables"]):
            for rel, entry in sorted(manifest["tables"][table]["files"].items()):
                path = folder / rel
                got = sha256(path) if path.is_file() else None
                if got != entry["sha256"]:
                    problems.append(Problem(self._rel(path), entry["sha256"], got))
        return problems

    def materialise(self, name: str, tables: Sequence[str] | None = None) -> dict[str, Any]:
        """Make ``snapshots/NAME`` whole and verified; return its manifest.

        Files that are missing or differ are checked out again (``dvc pull``: from the cache,
        fetched from the remote when the cache lacks them), then everything is re-hashed. A file
        that still differs is named with its cache object in :class:`SnapshotCorrupted`.
        """
        problems = self.verify(name, tables)
        if problems:
            for p in problems:  # DVC's state database would call a damaged copy up to date
                if p.actual is not None:
                    (self.project / p.file).unlink()
            remote = dvc.ensure_remote(self.project)
            proc = dvc.run("pull", "--force", "-r", remote, self._rel(self.dvc_file(name)),
                           cwd=self.project, check=False)
            problems = self.verify(name, tables)
            if problems:
                raise self._corrupted(name, problems, None if proc.returncode == 0 else dvc.last_words(proc))
        return json.loads((self.path(name) / MANIFEST).read_text())

    def _corrupted(self, name: str, problems: builtins.list[Problem], dvc_error: str | None) -> SnapshotCorrupted:
        info = self.get(name)
        objects = _cache_objects(self.project, info.md5)
        prefix = self._rel(self.path(name)) + "/"
        named = []
        for p in problems:
            cache, _ = objects.get(p.file.removeprefix(prefix), (None, ""))
            named.append(Problem(p.file, p.expected, p.actual, cache,
                                 cached=cache is None or p.actual is not None or Path(cache).exists()))
        seen = {p.file for p in named}
        for rel, (cache, md5) in sorted(objects.items()):  # what DVC could not check out, by name
            if prefix + rel not in seen and not Path(cache).exists():
                named.append(Problem(prefix + rel, f"md5:{md5}", None, cache, cached=False))
        lines = "; ".join(p.describe() for p in named[:10])
        more = f" (and {len(named) - 10} more)" if len(named) > 10 else ""
        hint = ("delete the named DVC cache file(s) and restore again to fetch them from the DVC remote"
                if any(p.actual is not None for p in named) else
                "the DVC cache and the remote lack them: push the snapshot from a machine that has it")
        why = f"; DVC said: {dvc_error}" if dvc_error else ""
        return SnapshotCorrupted(
            f"snapshot {name!r} ({info.md5}) failed verification, nothing was restored: {lines}{more}{why}. "
            f"DVC does not re-hash its read-only cache, so `dvc status` can miss this: {hint}",
            snapshot=name, problems=[asdict(p) for p in named],
        )

    # -------------------------------------------------------------- restore
    def state(self, lake: Lakehouse, table: str, info: SnapshotInfo) -> TableState:
        """How ``table`` relates to the snapshot: ``missing``, ``unchanged`` (still the frozen
        version, same commit), ``restored`` (its latest version is a restore of this snapshot),
        or ``changed``."""
        if not lake.exists(table):
            return "missing"
        current = lake.latest_version(table)
        meta = lake.commit_metadata(table, current)
        if meta.get(SNAPSHOT_KEY) == info.name and meta.get(SNAPSHOT_MD5_KEY) == info.md5:
            return "restored"
        if current == info.tables[table]["version"]:
            commit = info.tables[table].get("commit") or {}
            if (meta.get("timestamp"), meta.get(qnames.WRITE_ID)) == (commit.get("timestamp"), commit.get("write_id")):
                return "unchanged"
        return "changed"

    def restore(self, name: str, tables: Sequence[str] = (), *, force: bool = False) -> RestoreReport:
        """Write the snapshot's rows back into its tables, each as a new Delta version.

        Tables that moved on since the snapshot (or are not the tables it froze) are refused
        unless ``force``; a table still at the frozen version is left alone.
        """
        info = self.get(name)
        names = list(tables) or sorted(info.tables)
        unknown = [t for t in names if t not in info.tables]
        if unknown:
            raise UnknownNameError(f"snapshot {name!r} has no table(s) {unknown}; it holds {sorted(info.tables)}",
                                   known=sorted(info.tables))
        lake = self.lakehouse()
        states = {t: self.state(lake, t, info) for t in names}
        changed = [t for t in names if states[t] == "changed"]
        if changed and not force:
            detail = ", ".join(f"{t} (snapshot froze version {info.tables[t]['version']}, the table is at "
                               f"version {lake.version(t)})" for t in changed)
            raise SnapshotConflict(
                f"restoring snapshot {name!r} would overwrite tables that changed since it was taken: "
                f"{detail}. Re-run with --force (force=True): the snapshot's rows are written as a new "
                "version and the current one stays reachable through Delta history",
                snapshot=name, tables=changed,
            )
        report = RestoreReport(name, info.md5)
        todo = [t for t in names if states[t] in ("missing", "changed")]
        self._check_contracts(info, todo)  # before anything is written
        manifest = self.materialise(name, todo) if todo else {}
        for table in names:
            frozen = info.tables[table]["version"]
            if table not in todo:
                status = "already restored" if states[table] == "restored" else states[table]
                report.tables[table] = {"status": status, "snapshot_version": frozen,
                                        "previous_version": lake.version(table), "version": lake.version(table),
                                        "rows": info.tables[table]["rows"]}
                continue
            data = _read_files(self.path(name), manifest["tables"][table]["files"])
            previous = lake.version(table)
            version = lake.write(table, data, mode="overwrite", metadata={
                SNAPSHOT_KEY: name, SNAPSHOT_MD5_KEY: info.md5, "qsdk.snapshot.version": frozen,
                qnames.OPERATION: "snapshot-restore",
            })
            report.tables[table] = {"status": "restored", "snapshot_version": frozen,
                                    "previous_version": previous, "version": version, "rows": data.num_rows}
        return report

    def _check_contracts(self, info: SnapshotInfo, tables: Sequence[str]) -> None:
        for table in tables:
            spec = self.registry.table(table)
            want = {c: _type_name(TYPES[t]) for c, t in spec.columns.items()}
            have = info.tables[table].get("columns") or {}
            if want != have:
                raise VersioningError(
                    f"snapshot {info.name!r} froze {table!r} with columns {have}, but its contract now "
                    f"declares {want}: restore it into a lakehouse whose contract matches (an older "
                    "checkout of pipelines/), or migrate the snapshot's rows yourself",
                    snapshot=info.name, table=table,
                )

    # -------------------------------------------------------------- diff
    def diff(self, a: str, b: str) -> SnapshotDiff:
        """Row counts, versions and schema per table between snapshots ``a`` and ``b``."""
        ia, ib = self.get(a), self.get(b)
        rows = []
        for table in sorted(set(ia.tables) | set(ib.tables)):
            ea, eb = ia.tables.get(table), ib.tables.get(table)
            ca, cb = (ea or {}).get("columns", {}), (eb or {}).get("columns", {})
            rows.append(TableDiff(
                table=table, in_a=ea is not None, in_b=eb is not None,
                version_a=(ea or {}).get("version"), version_b=(eb or {}).get("version"),
                rows_a=(ea or {}).get("rows"), rows_b=(eb or {}).get("rows"),
                same_data=bool(ea and eb and ea["sha256"] == eb["sha256"]),
                added={c: t for c, t in cb.items() if c not in ca} if ea and eb else {},
                removed={c: t for c, t in ca.items() if c not in cb} if ea and eb else {},
                retyped={c: (ca[c], cb[c]) for c in ca if c in cb and ca[c] != cb[c]},
            ))
        return SnapshotDiff(a, b, rows)


# ------------------------------------------------------------------ files


def _export(lake: Lakehouse, pinned: Mapping[str, int], folder: Path, *, name: str,
            run_id: str | None) -> dict[str, Any]:
    folder.mkdir(parents=True)
    tables: dict[str, Any] = {}
    for table, version in sorted(pinned.items()):
        data = _plain(lake.read(table, version=version))
        commit = lake.commit_metadata(table, version)
        (folder / table).mkdir()
        files: dict[str, dict[str, Any]] = {}
        for i, start in enumerate(range(0, max(data.num_rows, 1), ROWS_PER_FILE)):
            part = data.slice(start, ROWS_PER_FILE)
            rel = f"{table}/part-{i:05d}.parquet"
            pq.write_table(part, folder / rel)
            files[rel] = {"sha256": sha256(folder / rel), "bytes": (folder / rel).stat().st_size,
                          "rows": part.num_rows}
        tables[table] = {
            "version": int(version),
            "rows": data.num_rows,
            "columns": {f.name: _type_name(f.type) for f in data.schema},
            "commit": {"timestamp": commit.get("timestamp"), "write_id": commit.get(qnames.WRITE_ID)},
            "files": files,
            "sha256": _combined(files),
        }
    manifest = {
        "format": FORMAT,
        "name": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
        "lakehouse": str(lake.root),
        "tables": tables,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _read_files(folder: Path, files: Mapping[str, Any]) -> pa.Table:
    parts = [pq.read_table(folder / rel) for rel in sorted(files)]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _cache_objects(project: Path, dir_md5: str) -> dict[str, tuple[str, str]]:
    """relpath -> (DVC cache file, md5) of each file in the snapshot folder (empty when unknown)."""
    try:
        cache = dvc.cache_dir(project)
        listing = json.loads(dvc.cache_file(cache, dir_md5.removesuffix(".dir") + ".dir").read_text())
        return {e["relpath"]: (str(dvc.cache_file(cache, e["md5"])), e["md5"]) for e in listing}
    except (VersioningError, OSError, ValueError, KeyError, TypeError):
        return {}
