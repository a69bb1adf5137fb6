"""Content-hash cache per stage partition: skip work whose inputs, code and parameters are unchanged.

A task is *cached* when all of these match its last successful run:

* ``code``: the notebook's code cells (sources only; outputs, execution counts, metadata and
  markdown ignored; the parameters cell is left out because its effect is in ``params``);
* ``params``: the validated parameters of the partition (which include its date range);
* ``inputs``: for every read the notebook made, the data it saw. A read at an unchanged Delta
  version matches at once; after the table moved on, the same read (columns and filters) is
  evaluated again in the driver at the current version and compared by content fingerprint, so
  a new partition appended upstream does not invalidate the partitions that never read it;
* ``deps``: the code closure (:mod:`qsdk.codedeps`): every project or qsdk module the notebook
  imported, directly or through other project modules, by content hash; the version of every
  third-party distribution the notebook or project code imported; the Python version;
* ``contracts``: the contract (columns, types, keys) of every table it read or wrote;
* ``sources``: the declared non-table sources of the stage (registry ``sources:``: a package
  whose version is the data's identity, or files whose hashes are);
* the outputs it wrote are still there (each table exists and reached the recorded version).

The decision needs no kernel and no Ray: only Delta metadata and, when a table moved, the
re-read of the slices that were read. Records live in ``<lakehouse>/_qsdk_cache/``, beside the
tables they describe: wipe the lakehouse and the cache goes with it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qsdk import codedeps, storage
from qsdk import names as qnames
from qsdk.errors import QsdkError
from qsdk.lazyimport import lazy_module
from qsdk.nbfile import read_cells, tags

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
else:
    np = lazy_module("numpy")
    pa = lazy_module("pyarrow")

CACHE_DIR = "_qsdk_cache"
State = Literal["cached", "stale", "never"]


def code_hash(notebook: str | Path) -> str:
    digest = hashlib.sha256()
    for cell in read_cells(notebook):
        if cell["cell_type"] != "code" or "parameters" in tags(cell):
            continue
        source = "\n".join(line.rstrip() for line in cell["source"].strip().splitlines())
        digest.update(source.encode() + b"\0")
    return digest.hexdigest()


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def contract_hash(spec: dict[str, Any]) -> str:
    """Hash of one table's contract as the registry declares it (``TableSpec.to_dict()``)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(table: pa.Table) -> str:
    """Order-insensitive content hash of ``table`` (schema, row count, row hashes)."""
    import pandas as pd

    digest = hashlib.sha256(str(table.schema).encode())
    digest.update(str(table.num_rows).encode())
    if table.num_rows:
        rows = pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy(dtype=np.uint64)
        digest.update(int(rows.sum(dtype=np.uint64)).to_bytes(8, "little"))
        digest.update(int(np.bitwise_xor.reduce(rows)).to_bytes(8, "little"))
        digest.update(int((rows * np.uint64(0x9E3779B97F4A7C15)).sum(dtype=np.uint64)).to_bytes(8, "little"))
    return digest.hexdigest()


@dataclass
class CacheRecord:
    stage: str
    partition: str | None
    code: str
    params: str
    reads: list[dict[str, Any]]
    written: dict[str, int]
    run_id: str
    notebook: str
    # None in records written before qsdk tracked them: such a record is stale
    deps: dict[str, Any] | None = None
    contracts: dict[str, str] | None = None
    sources: dict[str, str] | None = None
    # what the task wrote: [{table, mode, predicate}] (checks that its rows are still there)
    writes: list[dict[str, Any]] | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, default=str)


@dataclass
class Verdict:
    state: State
    reasons: list[str] = field(default_factory=list)
    record: CacheRecord | None = None

    @property
    def hit(self) -> bool:
        return self.state == "cached"


class Cache:
    def __init__(self, lakehouse: Any, *, project_root: str | Path) -> None:
        self.lakehouse = lakehouse
        self.project_root = Path(project_root)
        self.root = storage.location(lakehouse.root) / CACHE_DIR  # a folder or an object-store prefix
        self._versions: dict[str, int | None] | None = None
        self._dists: dict[str, Any] = {}  # installed versions, looked up once per Cache
        self._sources: dict[tuple[Any, ...], dict[str, str]] = {}
        self._commits: dict[tuple[str, int], dict[str, Any] | None] = {}  # commit infos read

    @contextmanager
    def versions_pinned(self, versions: dict[str, int | None] | None = None) -> Iterator[None]:
        """Within the block, read each table's Delta version once.

        For checking all tasks of one stage before any of them runs: its inputs were written
        by stages that have finished and its outputs only by itself, so no version moves
        during the block. Opening a Delta table per input and output per task is most of a
        no-op re-run's time otherwise. ``versions``: the memo to fill (and keep using across
        blocks while the caller knows nothing has written since); a fresh one by default.
        """
        outer, self._versions = self._versions, ({} if versions is None else versions)
        try:
            yield
        finally:
            self._versions = outer

    def _version(self, table: str) -> int | None:
        if self._versions is not None and table in self._versions:
            return self._versions[table]
        try:
            version = self.lakehouse.version(table)
        except QsdkError:
            version = None
        if self._versions is not None:
            self._versions[table] = version
        return version

    def _path(self, stage: str, partition: str | None) -> storage.Location:
        return self.root / stage / f"{partition or '_all'}.json"

    def load(self, stage: str, partition: str | None) -> CacheRecord | None:
        text = storage.read_text(self._path(stage, partition))
        if text is None:
            return None
        try:
            return CacheRecord(**json.loads(text))
        except (ValueError, TypeError):
            return None  # a damaged record is a miss, never an error

    def save(self, record: CacheRecord) -> None:
        # atomic (a temporary file renamed, or one PUT): a crash never leaves half a record
        storage.write_text(self._path(record.stage, record.partition), record.to_json())

    def invalidate(self, stage: str, partition: str | None) -> None:
        storage.delete(self._path(stage, partition))

    def check(self, *, stage: str, partition: str | None, notebook: str, params: dict[str, Any],
              code: str | None = None, sources: Any = ()) -> Verdict:
        """``sources``: the stage's declared non-table sources (:class:`qsdk.model.stage.SourceSpec`)."""
        record = self.load(stage, partition)
        if record is None:
            return Verdict("never", ["never run"])
        reasons = []
        if record.code != (code or code_hash(notebook)):
            reasons.append(f"notebook {_short(notebook, self.project_root)} changed")
        if record.params != params_hash(params):
            reasons.append("parameters changed")
        reasons += self._dependency_changes(record, sources)
        reasons += self._input_changes(record)
        reasons += self._missing_outputs(record)
        return Verdict("stale" if reasons else "cached", reasons, record)

    def current_sources(self, sources: Any) -> dict[str, str]:
        key = tuple(sources)
        if key not in self._sources:
            self._sources[key] = codedeps.source_fingerprints(key, project_root=self.project_root,
                                                                 versions=self._dists)
        return self._sources[key]

    def _dependency_changes(self, record: CacheRecord, sources: Any) -> list[str]:
        if record.deps is None or record.contracts is None or record.sources is None:
            return ["recorded before qsdk tracked imported code, contracts and sources"]
        out = codedeps.changes(codedeps.Closure.from_dict(record.deps), project_root=self.project_root,
                               versions=self._dists)
        for table, digest in sorted(record.contracts.items()):
            spec = self.lakehouse.specs.get(table)
            if spec is None:
                out.append(f"contract of {table} is gone")
            elif contract_hash(spec.to_dict()) != digest:
                out.append(f"contract of {table} changed")
        out += codedeps.source_changes(record.sources, self.current_sources(sources))
        return out

    def _input_changes(self, record: CacheRecord) -> list[str]:
        out = []
        for read in record.reads:
            table = read["table"]
            current = self._version(table)
            if current is None:
                out.append(f"input {table} is gone")
            elif current != read["version"]:
                data = self.lakehouse.read(table, columns=read.get("columns"), filters=read.get("filters"))
                if fingerprint(data) != read.get("fingerprint"):
                    out.append(f"input {table} changed (version {read['version']} -> {current})")
        return out

    def _missing_outputs(self, record: CacheRecord) -> list[str]:
        out = []
        for table, version in record.written.items():
            current = self._version(table)
            if current is None or current < version:
                out.append(f"output {table} is missing or was rolled back")
            elif current > version and not self._still_holds(record, table, version, current):
                out.append(f"output {table} no longer holds the rows this task wrote (a later restore, "
                           "rollback or foreign commit changed them)")
        return out

    def _still_holds(self, record: CacheRecord, table: str, version: int, current: int) -> bool:
        """Whether the commits after ``version`` left this task's rows of ``table`` alone.

        Plain commits of other qsdk tasks write their own slices or keys (the contract and
        Delta's conflict checks see to it); a restore, a rollback, a commit qsdk did not make, or
        another write to this task's own slice may have changed its rows. Then a partition
        overwrite's slice is compared by content with the version this task wrote; other modes
        count as changed.
        """
        writes = [w for w in record.writes or [] if w.get("table") == table]
        suspicious = [v for v in range(version + 1, current + 1)
                      if self._touches(record, table, v, modes={w.get("mode") for w in writes})]
        if not suspicious:
            return True
        slices = [w["predicate"] for w in writes if w.get("mode") == "overwrite" and w.get("predicate")]
        if not writes or len(slices) != len(writes):
            return False
        try:
            return all(fingerprint(self.lakehouse.read_where(table, p, version=version))
                       == fingerprint(self.lakehouse.read_where(table, p)) for p in slices)
        except QsdkError:
            return False

    def _touches(self, record: CacheRecord, table: str, version: int, *, modes: set[Any]) -> bool:
        key = (table, version)
        if key not in self._commits:
            self._commits[key] = self.lakehouse.commit_info(table, version)
        info = self._commits[key]
        if info is None or qnames.STAGE not in info or info.get("operation") == "RESTORE":
            return True  # log entry gone, a foreign commit, or a restore
        ours = info.get(qnames.STAGE) == record.stage and (info.get(qnames.PARTITION) or None) == record.partition
        if info.get(qnames.ROLLBACK) == "true":
            # another task's compensation touches only its own keys, which an append never shares
            return ours or modes != {"append"}
        return ours


@dataclass(frozen=True)
class TaskStatus:
    stage: str
    partition: str | None
    state: State
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "partition": self.partition, "state": self.state, "reasons": list(self.reasons)}


def _short(path: str | Path, root: Path) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else str(p)


def flow_status(flow: Any, params: dict[str, dict[str, Any]], *, cache: Cache) -> list[TaskStatus]:
    """Cached / stale (with reasons) / never run, per stage and partition, without running anything.

    A cached task downstream of tasks that will run is stale too when one of them rewrites rows
    it read: a partition overwrite's date slice is compared with the task's recorded read
    filters on the same column (so extending a backfill makes only the partitions that read the
    new dates stale); any other write counts as touching every read. Whether the rewritten rows
    really differ is known only once the upstream task ran: the run then decides by content, so
    an upstream re-run that reproduces its output leaves such a task cached.
    """
    out: list[TaskStatus] = []
    will_write: dict[str, list[_Slice]] = {}  # table -> slices that tasks which will run rewrite
    for name in flow.order():
        stage = flow.stage(name)
        code = code_hash(stage.notebook)
        with cache.versions_pinned():
            verdicts = [(key, values, cache.check(stage=name, partition=key, notebook=str(stage.notebook),
                                                  params=values, code=code, sources=stage.sources))
                        for key, values in stage.partitions(params[name])]
        siblings = [v.record for _, _, v in verdicts if v.record is not None]
        for key, values, verdict in verdicts:
            reasons = list(verdict.reasons)
            state = verdict.state
            if state == "cached" and verdict.record is not None:
                hit = _upstream_rewrites(verdict.record, will_write)
                if hit:
                    state, reasons = "stale", [f"upstream {u} will run and rewrites rows it read" for u in hit]
            out.append(TaskStatus(name, key, state, tuple(reasons)))
            if state != "cached":
                for table in stage.outputs:
                    will_write.setdefault(table, []).append(
                        _Slice(name, _written_slice(stage, table, values, verdict.record, siblings)))
    return out


@dataclass(frozen=True)
class _Slice:
    stage: str
    between: tuple[str, str, str] | None  # (column, first, last): a partition overwrite; None: anything


_BETWEEN = re.compile(r"(\w+) >= '([^']*)' AND \1 <= '([^']*)'")


def _between(predicate: str | None) -> tuple[str, str, str] | None:
    match = _BETWEEN.fullmatch(predicate or "")
    return (match[1], match[2], match[3]) if match else None


def _written_slice(stage: Any, table: str, values: dict[str, Any], record: CacheRecord | None,
                   siblings: list[CacheRecord]) -> tuple[str, str, str] | None:
    """The date slice a task that will run rewrites in ``table``: the predicate its last run
    used, or for a partition never run, its own range on the column its stage's other
    partitions overwrite by (when each of those overwrote exactly its own range)."""
    if record is not None:
        found = [_between(w.get("predicate")) for w in record.writes or [] if w.get("table") == table]
        return found[0] if len(found) == 1 and found[0] is not None and record.params == params_hash(values) \
            else None
    part = getattr(stage, "partition", None)
    columns = set()
    for sibling in siblings:
        bounds = (sibling.partition or "").split("_")
        for write in sibling.writes or []:
            between = _between(write.get("predicate")) if write.get("table") == table else None
            if between is None or list(between[1:]) != bounds:
                return None
            columns.add(between[0])
    if part is None or len(columns) != 1:
        return None
    return (columns.pop(), str(values[part.start]), str(values[part.end]))


def _upstream_rewrites(record: CacheRecord, will_write: dict[str, list[_Slice]]) -> list[str]:
    """The stages that will run and rewrite rows ``record``'s task read."""
    hit: list[str] = []
    for read in record.reads:
        for slice_ in will_write.get(read["table"], ()):
            if slice_.stage not in hit and _overlaps(read.get("filters") or [], slice_.between):
                hit.append(slice_.stage)
    return hit


def _overlaps(filters: list[Any], between: tuple[str, str, str] | None) -> bool:
    if between is None:
        return True
    column, first, last = between
    lo, hi = None, None
    for col, op, value in filters:
        if col != column or not isinstance(value, str):
            continue
        day = value[:10]  # ISO dates and timestamps compare by their date, conservatively
        if op in (">=", ">"):
            lo = max(lo or day, day)
        elif op in ("<=", "<"):
            hi = min(hi or day, day)
        elif op in ("=", "=="):
            lo, hi = max(lo or day, day), min(hi or day, day)
    return (lo is None or lo <= last[:10]) and (hi is None or first[:10] <= hi)
