"""Stage writes are staged, then committed when the notebook has finished successfully.

A notebook's ``write_table`` validates the data against the contract at once (so the error
points at the cell that wrote it) and saves it as Parquet in the run's staging folder. The
executor commits the staged writes only after the whole notebook succeeded: a stage that
raises, is killed, or times out halfway leaves every table at its last good version. Each
commit carries a Delta application transaction id, so a retried task never commits twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from qsdk.errors import QsdkError
from qsdk.lakehouse.tables import Lakehouse

MANIFEST = "writes.jsonl"
READS = "reads.jsonl"


@dataclass(frozen=True)
class StagedWrite:
    index: int
    table: str
    mode: str
    predicate: str | None
    file: str
    rows: int


def stage_write(staging_dir: str | Path, table: str, data: pa.Table, *, mode: str,
                predicate: str | None) -> StagedWrite:
    folder = Path(staging_dir)
    folder.mkdir(parents=True, exist_ok=True)
    index = len(staged_writes(folder))
    file = folder / f"{index:04d}-{table}.parquet"
    pq.write_table(data, file)
    entry = StagedWrite(index, table, mode, predicate, file.name, data.num_rows)
    with open(folder / MANIFEST, "a") as fh:
        fh.write(json.dumps(entry.__dict__) + "\n")
    return entry


def staged_writes(staging_dir: str | Path) -> list[StagedWrite]:
    path = Path(staging_dir) / MANIFEST
    if not path.exists():
        return []
    return [StagedWrite(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def record_read(staging_dir: str | Path, table: str, version: int, *, columns: list[str] | None = None,
                filters: list[Any] | None = None, fingerprint: str | None = None) -> None:
    """Log one read: table, version, and what was read (for lineage and the cache)."""
    folder = Path(staging_dir)
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"table": table, "version": version, "columns": columns,
             "filters": [list(f) for f in filters] if filters else None, "fingerprint": fingerprint}
    with open(folder / READS, "a") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")


def read_log(staging_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(staging_dir) / READS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recorded_reads(staging_dir: str | Path) -> dict[str, int]:
    """``{table: version}`` of every table read (one version per table within a stage)."""
    return {entry["table"]: entry["version"] for entry in read_log(staging_dir)}


def commit_staged(staging_dir: str | Path, lakehouse: Lakehouse, *, app_prefix: str,
                  metadata: dict[str, Any]) -> dict[str, int]:
    """Commit every staged write in order; return ``{table: version written}``.

    If a later commit fails, tables this call already moved are restored to the version they
    had before (a new Delta version; the failed attempt stays in the history), then the
    error is raised.
    """
    before: dict[str, int | None] = {}
    written: dict[str, int] = {}
    folder = Path(staging_dir)
    try:
        for entry in staged_writes(folder):
            before.setdefault(entry.table, lakehouse.version(entry.table))
            data = pq.read_table(folder / entry.file)
            written[entry.table] = lakehouse.write(
                entry.table, data, mode=entry.mode, predicate=entry.predicate,  # type: ignore[arg-type]
                metadata={**metadata, "qsdk.write_index": entry.index},
                app_id=f"{app_prefix}:{entry.index}",
            )
    except QsdkError:
        _roll_back(lakehouse, before, written, metadata)
        raise
    return written


def _roll_back(lakehouse: Lakehouse, before: dict[str, int | None], written: dict[str, int],
               metadata: dict[str, Any]) -> None:
    for table in written:
        previous = before.get(table)
        if previous is not None:
            lakehouse.restore(table, previous, metadata={**metadata, "qsdk.rollback": True})
