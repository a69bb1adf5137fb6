"""Every Delta Lake read and write in qsdk goes through :class:`Lakehouse`.

Foreign errors from ``deltalake`` are wrapped once, here, as :class:`LakehouseError`.
Tables live at ``<root>/<layer>/<name>``; names are validated so no path can escape the root.
The root is a local folder or an ``s3://bucket/prefix`` (:mod:`qsdk.storage`, the one seam
between qsdk and where the files are).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qsdk import names as qnames
from qsdk import storage
from qsdk.errors import ContractViolation, LakehouseError, TableNameError
from qsdk.lakehouse.contract import TableSpec, conform, validate_table_name
from qsdk.lakehouse.guard import trusted
from qsdk.lazyimport import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

WriteMode = Literal["append", "overwrite", "merge"]
WRITE_MODES: tuple[str, ...] = ("append", "overwrite", "merge")
Filters = Sequence[tuple[str, str, Any]] | None
_CONFLICT_RETRIES = 8
LOCK_DIR = qnames.LOCK_DIR  # lock files older versions took to create a table (none now)
_KEEP = "qsdk_undo_keep"  # undo_keys: marks keys whose earlier row is put back (else deleted)


@dataclass(frozen=True)
class TableInfo:
    name: str
    version: int | None
    rows: int | None
    path: str
    broken: str | None = None  # why the table cannot be read (a link, a damaged _delta_log, ...)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "rows": self.rows, "path": self.path,
                "broken": self.broken}


class Lakehouse:
    """Delta tables under ``root``; ``specs`` are the contracts writes are checked against."""

    def __init__(self, root: str | Path | storage.ObjectPath,
                 specs: Mapping[str, TableSpec] | None = None) -> None:
        self.root: storage.Location = storage.location(root)
        self.specs: dict[str, TableSpec] = dict(specs or {})

    # ------------------------------------------------------------ paths and metadata
    def path(self, name: str) -> storage.Location:
        layer, table = validate_table_name(name).split(".", 1)
        if isinstance(self.root, storage.ObjectPath):  # no links in an object store
            return self.root / layer / table
        path = (self.root / layer / table).resolve()
        if self.root not in path.parents:  # defence in depth; the name regex already forbids it
            raise LakehouseError(f"table {name!r} resolves outside the lakehouse root {self.root}")
        return path

    @property
    def storage_options(self) -> dict[str, str] | None:
        """What deltalake needs to reach an object-store root (``None`` for a local folder)."""
        return storage.storage_options(self.root)

    def spec(self, name: str) -> TableSpec:
        validate_table_name(name)
        try:
            return self.specs[name]
        except KeyError:
            raise ContractViolation(
                f"table {name!r} has no contract: declare it under tables: in pipelines/*.yaml",
                table=name,
            ) from None

    def exists(self, name: str) -> bool:
        """Whether ``name`` has a committed version. A ``_delta_log`` folder alone is not enough:
        a writer creating the table makes the folder before its first commit lands."""
        # commits and checkpoints: 000...
        return any(entry[:1].isdigit() for entry in storage.listdir(self.path(name) / "_delta_log"))

    def _table(self, name: str, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        if not self.exists(name):
            raise LakehouseError(
                f"table {name!r} does not exist yet under {self.root}: run the stage that writes it",
                table=name,
            )
        try:
            with trusted():  # qsdk's own read: the in-kernel direct-read guard lets it pass
                return DeltaTable(str(self.path(name)), version=version, storage_options=self.storage_options)
        except Exception as exc:  # deltalake raises several foreign types
            raise LakehouseError(f"cannot open {name!r} at version {version}: {exc}", table=name) from exc

    def version(self, name: str) -> int | None:
        return self._table(name).version() if self.exists(name) else None

    def info(self, name: str) -> TableInfo:
        """Version and row count; a table that cannot be resolved or read comes back with
        ``broken`` saying why (never an error: one bad folder must not hide the others)."""
        layer, _, table = name.partition(".")
        folder = self.root / layer / table
        try:
            validate_table_name(name)
        except TableNameError as exc:  # a folder qsdk never wrote (listed by list_tables)
            return TableInfo(name, None, None, str(folder), broken=str(exc))
        link = next((p for p in (folder.parent, folder) if isinstance(p, Path) and p.is_symlink()), None)
        if link is not None:
            return TableInfo(name, None, None, str(folder), broken=(
                f"{link} is a symbolic link (to {os.readlink(link)}), not a table folder: tables are "
                "written only by qsdk; remove the link"))
        try:
            if not self.exists(name):
                return TableInfo(name, None, None, str(self.path(name)))
            dt = self._table(name)
            actions = pa.table(dt.get_add_actions(flatten=True))
        except (LakehouseError, OSError) as exc:
            return TableInfo(name, None, None, str(folder), broken=str(exc))
        rows = int(pc.sum(actions.column("num_records")).as_py() or 0) if actions.num_rows else 0
        return TableInfo(name, dt.version(), rows, str(folder))

    def history(self, name: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self._table(name).history(limit))

    def commit_metadata(self, name: str, version: int) -> dict[str, Any]:
        for entry in self.history(name):
            if entry.get("version") == version:
                return entry
        raise LakehouseError(f"table {name!r} has no version {version}", table=name)

    def list_tables(self) -> list[str]:
        """Names of the folders that look like tables (``layer/name/_delta_log``), readable or
        not: :meth:`info` says which are broken."""
        names = []
        for layer in storage.listdir(self.root):
            for table in storage.listdir(self.root / layer):
                if "_delta_log" in storage.listdir(self.root / layer / table):
                    names.append(f"{layer}.{table}")
        return names

    # ------------------------------------------------------------ reads
    def read(
        self,
        name: str,
        *,
        columns: Sequence[str] | None = None,
        filters: Filters = None,
        version: int | None = None,
    ) -> pa.Table:
        dt = self._table(name, version)
        try:
            with trusted():
                dataset = dt.to_pyarrow_dataset()
                return dataset.to_table(
                columns=list(columns) if columns else None,
                filter=_expression(filters, dataset.schema),
            )
        except ContractViolation:
            raise
        except Exception as exc:
            raise LakehouseError(f"failed reading {name!r}: {exc}", table=name) from exc

    def read_where(self, name: str, predicate: str, *, version: int | None = None) -> pa.Table:
        """The rows matching a Delta SQL ``predicate`` (as a partition overwrite takes it), at
        ``version``, evaluated by Delta's own engine (DataFusion), so the slice is exactly the
        one an overwrite with that predicate replaces."""
        from deltalake import QueryBuilder

        dt = self._table(name, version)
        try:
            reader = QueryBuilder().register("t", dt).execute(f"SELECT * FROM t WHERE {predicate}")
            return pa.table(pa.RecordBatchReader.from_stream(reader))
        except Exception as exc:
            raise LakehouseError(f"failed reading {name!r} where {predicate}: {exc}", table=name) from exc

    def count_where(self, name: str, predicate: str, *, version: int | None = None) -> int:
        """How many rows :meth:`read_where` would return (the slice a partition overwrite replaces)."""
        from deltalake import QueryBuilder

        dt = self._table(name, version)
        try:
            reader = QueryBuilder().register("t", dt).execute(f"SELECT count(*) AS n FROM t WHERE {predicate}")
            return int(pa.table(pa.RecordBatchReader.from_stream(reader)).column("n")[0].as_py())
        except Exception as exc:
            raise LakehouseError(f"failed counting {name!r} where {predicate}: {exc}", table=name) from exc

    def commit_info(self, name: str, version: int) -> dict[str, Any] | None:
        """The ``commitInfo`` of one version, read from its log file (``None`` when the file is
        gone, e.g. after log clean-up). Cheaper than :meth:`history` for a few versions."""
        import json

        try:
            text = storage.read_text(self.path(name) / "_delta_log" / f"{version:020d}.json")
            for line in (text or "").splitlines():
                if '"commitInfo"' in line:
                    info: dict[str, Any] = json.loads(line)["commitInfo"]
                    return info
        except (OSError, ValueError):
            return None
        return None if text is None else {}

    # ------------------------------------------------------------ writes
    def write(
        self,
        name: str,
        data: Any,
        *,
        mode: WriteMode,
        predicate: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        app_id: str | None = None,
        app_version: int = 1,
        key_checked: bool = False,
    ) -> int:
        """Validate ``data`` against the contract and commit it; return the new table version.

        ``mode``: ``append`` (new keys only), ``overwrite`` (whole table, or only the rows
        matching ``predicate``: a partition overwrite), ``merge`` (upsert on the primary key).
        ``app_id``: a Delta application transaction id; a commit whose ``app_id`` is already at
        ``app_version`` is skipped, so a retried task never writes twice. ``key_checked``: the
        rows passed :func:`~qsdk.lakehouse.contract.conform` already (a staged write, in its kernel).
        """
        if mode not in WRITE_MODES:
            raise ContractViolation(f"unknown write mode {mode!r}; use one of {WRITE_MODES}")
        spec = self.spec(name)
        table = conform(data, spec, key_checked=key_checked)
        if predicate is not None and mode != "overwrite":
            raise ContractViolation(f"predicate= only goes with mode='overwrite' (got {mode!r})")
        if mode == "merge" and not spec.primary_key:
            raise ContractViolation(f"merge into {name!r} needs a primary_key in its contract")
        if self.exists(name):
            self._check_existing_schema(name, spec)
            if app_id is not None:
                done = self._table(name).transaction_version(app_id)
                if done is not None and done >= app_version:
                    return self._version_of_app(name, app_id)  # already committed by an earlier attempt
        write_id = uuid.uuid4().hex
        meta = {**(metadata or {}), qnames.WRITE_ID: write_id, "qsdk.mode": mode,
                **({qnames.APP_ID: app_id} if app_id else {})}
        committed: int | None = None
        for attempt in range(_CONFLICT_RETRIES):
            try:
                committed = self._commit(name, spec, table, mode=mode, predicate=predicate, meta=meta,
                                         app_id=app_id, app_version=app_version)
                break
            except ContractViolation:
                raise
            except Exception as exc:
                if "failed validation check" in str(exc):
                    raise ContractViolation(
                        f"overwrite of {name!r} with predicate {predicate!r}: some rows fall outside "
                        "the predicate; write only the partition's rows",
                        table=name,
                    ) from exc
                if _is_conflict(exc) and attempt + 1 < _CONFLICT_RETRIES:
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise LakehouseError(f"failed writing {name!r} ({mode}): {exc}", table=name) from exc
        return committed if committed is not None else self._version_of_write(name, write_id)

    def _commit(self, name: str, spec: TableSpec, table: pa.Table, *, mode: str, predicate: str | None,
                meta: Mapping[str, Any], app_id: str | None, app_version: int | None) -> int | None:
        """Commit ``table``; return the version committed (``None`` when this created the table).

        Writes go through a loaded ``DeltaTable``, whose version after the commit is the one
        this commit got: ``history()`` labels versions from its own snapshot, so it misnumbers
        commits that land while it is read (concurrent writers).
        """
        from deltalake import CommitProperties, Transaction, write_deltalake

        txns = [Transaction(app_id=app_id, version=app_version)] if app_id and app_version is not None else None
        props = CommitProperties(custom_metadata=_stringify(meta), app_transactions=txns)
        if not self.exists(name) and self._create(name, spec, table, app_id=app_id, app_version=app_version,
                                                  meta=meta):
            return None
        dt = self._table(name)  # one snapshot for the key check and the commit
        on = " AND ".join(f"t.{_q(k)} = s.{_q(k)}" for k in spec.primary_key)
        if mode == "append":
            self._refuse_existing_keys(name, spec, table, version=dt.version())
            if spec.primary_key:
                # an insert-only merge, not a blind append: a concurrent commit that adds rows is
                # then a conflict (retried, and the retry's key check refuses duplicates)
                dt.merge(table, predicate=on, source_alias="s", target_alias="t",
                         commit_properties=props).when_not_matched_insert_all().execute()
            else:
                write_deltalake(dt, table, mode="append", commit_properties=props)
        elif mode == "overwrite":
            write_deltalake(dt, table, mode="overwrite", predicate=predicate, commit_properties=props)
        else:
            (
                dt.merge(table, predicate=on, source_alias="s", target_alias="t", commit_properties=props)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
        return int(dt.version())

    def _create(self, name: str, spec: TableSpec, table: pa.Table, *, app_id: str | None,
                app_version: int | None, meta: Mapping[str, Any]) -> bool:
        """Create ``name`` with ``table`` as its version 0; ``False`` when another writer created
        it first (then the caller writes as to any existing table: its keys are checked against
        the winner's and its commit is conflict-checked).

        Delta's optimistic concurrency does not cover creation: delta-rs commits a second writer's
        concurrent creation as version 1 without a conflict, so two first appends of the same keys
        would both land. Here the creation is ``mode="error"`` with no commit retry: its commit
        file ``00000000000000000000.json`` is written only if absent (an atomic no-replace rename
        on a local disk, a conditional put on an object store), so exactly one creator wins,
        across processes and hosts, with no lock file.
        """
        from deltalake import CommitProperties, Transaction, write_deltalake

        txns = [Transaction(app_id=app_id, version=app_version)] if app_id and app_version is not None else None
        props = CommitProperties(custom_metadata=_stringify(meta), app_transactions=txns, max_commit_retries=0)
        try:
            write_deltalake(str(self.path(name)), table, mode="error", partition_by=list(spec.partition_by) or None,
                            name=name, description=spec.description or None, commit_properties=props,
                            storage_options=self.storage_options)
        except Exception:
            if self.exists(name):
                return False  # lost the race: version 0 is another writer's
            raise
        return True

    def _refuse_existing_keys(self, name: str, spec: TableSpec, table: pa.Table, *,
                              version: int | None = None) -> None:
        if not spec.primary_key or table.num_rows == 0:
            return
        keys = list(spec.primary_key)
        existing = self.read(name, columns=keys, version=version)
        clash = existing.join(table.select(keys), keys=keys, join_type="inner")
        if clash.num_rows:
            example = {k: clash.column(k)[0].as_py() for k in keys}
            raise ContractViolation(
                f"append to {name!r} would duplicate {clash.num_rows} existing primary key(s), "
                f"for example {example}; use mode='merge' to upsert or mode='overwrite' with a "
                "predicate to replace a partition",
                table=name,
                duplicates=clash.num_rows,
            )

    def _check_existing_schema(self, name: str, spec: TableSpec) -> None:
        current = pa.schema(self._table(name).schema())
        want = spec.arrow_schema()
        cur = {f.name: f.type for f in current}
        if list(cur) != want.names or any(
            not _same_type(cur[f.name], f.type) for f in want
        ):
            raise ContractViolation(
                f"table {name!r} on disk has schema {dict((k, str(v)) for k, v in cur.items())}, "
                f"the contract declares {spec.columns}: migrate the table or fix the contract",
                table=name,
            )

    def _version_of_app(self, name: str, app_id: str) -> int:
        """The version an earlier attempt committed under ``app_id`` (its commit metadata)."""
        latest = self.latest_version(name)
        for version in range(latest, max(latest - 500, -1), -1):
            if (self.commit_info(name, version) or {}).get(qnames.APP_ID) == app_id:
                return version
        return latest

    def _version_of_write(self, name: str, write_id: str) -> int:
        for entry in self.history(name, limit=50):
            if entry.get(qnames.WRITE_ID) == write_id or (
                entry.get("userMetadata") and write_id in str(entry.get("userMetadata"))
            ):
                return int(entry["version"])
        return self.latest_version(name)

    def latest_version(self, name: str) -> int:
        """The table's latest version; a clear error when the table does not exist."""
        version = self.version(name)
        if version is None:
            raise LakehouseError(f"table {name!r} has no version: it does not exist", table=name)
        return version

    def undo_keys(self, name: str, keys: pa.Table, *, before: int | None,
                  metadata: Mapping[str, Any] | None = None) -> int:
        """Put the rows with these primary ``keys`` back as they were at version ``before``
        (``None``: the table did not exist, so the rows are deleted), in one merge commit that
        touches no other key: the compensation of a failed task's append or merge."""
        from deltalake import CommitProperties

        spec = self.spec(name)
        pk = list(spec.primary_key)
        if not pk:
            raise LakehouseError(
                f"cannot undo a write to {name!r}: the table has no primary_key to find the rows by; "
                "declare one under tables: in pipelines/", table=name)
        keys = keys.select(pk).group_by(pk).aggregate([])
        old = self._rows_with_keys(name, keys, version=before)
        old = old.append_column(_KEEP, pa.repeat(pa.scalar(True), old.num_rows))
        source = keys.join(old, keys=pk, join_type="left outer")
        on = " AND ".join(f"t.{_q(k)} = s.{_q(k)}" for k in pk)
        updates = {_q(c): f"s.{_q(c)}" for c in spec.columns if c not in pk}
        props = CommitProperties(custom_metadata=_stringify(metadata or {}))

        def commit() -> int:
            dt = self._table(name)
            merger = dt.merge(source, predicate=on, source_alias="s", target_alias="t", commit_properties=props)
            if updates:
                merger = merger.when_matched_update(updates, predicate=f"s.{_q(_KEEP)} = true")
            merger.when_matched_delete(predicate=f"s.{_q(_KEEP)} IS NULL").execute()
            return int(dt.version())

        return self._with_conflict_retries(name, commit, what="undo")

    def _rows_with_keys(self, name: str, keys: pa.Table, *, version: int | None) -> pa.Table:
        spec = self.spec(name)
        if version is None or keys.num_rows == 0:
            return spec.arrow_schema().empty_table()
        first = spec.primary_key[0]
        rows = self.read(name, version=version, filters=[(first, "in", keys.column(first).to_pylist())])
        return conform(rows.join(keys, keys=list(spec.primary_key), join_type="inner"), spec)

    def _with_conflict_retries(self, name: str, commit: Callable[[], int], *, what: str) -> int:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                return commit()
            except Exception as exc:
                if _is_conflict(exc) and attempt + 1 < _CONFLICT_RETRIES:
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise LakehouseError(f"failed to {what} on {name!r}: {exc}", table=name) from exc
        raise AssertionError("unreachable")

    def restore(self, name: str, version: int, *, metadata: Mapping[str, Any] | None = None) -> int:
        from deltalake import CommitProperties

        dt = self._table(name)
        try:
            dt.restore(version, commit_properties=CommitProperties(custom_metadata=_stringify(metadata or {})))
        except Exception as exc:
            raise LakehouseError(f"failed restoring {name!r} to version {version}: {exc}", table=name) from exc
        return self.latest_version(name)


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    if a == b:
        return True
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(f(a) for f in strings) and any(f(b) for f in strings):
        return True
    return bool(pa.types.is_timestamp(a) and pa.types.is_timestamp(b) and a.tz == b.tz)


def _q(column: str) -> str:
    return f"`{column}`"


def _stringify(meta: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else __import__("json").dumps(v, default=str) for k, v in meta.items()}


def _is_conflict(exc: Exception) -> bool:
    from deltalake.exceptions import CommitFailedError

    text = str(exc).lower()
    return isinstance(exc, CommitFailedError) or "conflict" in text or "concurrent" in text


_OPS = {  # filter operator -> pyarrow.compute function
    "=": "equal", "==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal",
    ">": "greater", ">=": "greater_equal",
}


def _expression(filters: Filters, schema: pa.Schema) -> Any:
    """AND of ``(column, op, value)`` filters as a pushed-down Arrow expression.

    Values are cast to the column's stored type, so ``('date', '>=', '2020-01-01')`` works on a
    date column and a plain ``str`` works on a ``string_view`` column.
    """
    if not filters:
        return None
    expr = None
    for item in filters:
        if not (isinstance(item, tuple | list) and len(item) == 3):
            raise ContractViolation(
                f"filter {item!r} is not (column, op, value); e.g. ('date', '>=', '2020-01-01')"
            )
        column, op, value = item
        if column not in schema.names:
            raise ContractViolation(f"filter on unknown column {column!r}; columns: {schema.names}")
        typ = schema.field(column).type
        field = pc.field(column)
        if op in ("in", "not in"):
            values = pa.array([_cast_value(v, typ) for v in value], type=typ)
            term = field.isin(values)
            term = ~term if op == "not in" else term
        elif op in _OPS:
            term = getattr(pc, _OPS[op])(field, _cast_value(value, typ))
        else:
            raise ContractViolation(f"unknown filter operator {op!r}; use one of {[*_OPS, 'in', 'not in']}")
        expr = term if expr is None else expr & term
    return expr


def _cast_value(value: Any, typ: pa.DataType) -> pa.Scalar:
    if pa.types.is_date(typ) and isinstance(value, str):
        import datetime as _dt

        value = _dt.date.fromisoformat(value)
    return pa.scalar(value).cast(typ)

