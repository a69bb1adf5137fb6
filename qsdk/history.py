"""Past runs as users see them: ``runs/<run_id>/run.json``, newest first (``qsdk runs``).

A run folder is created before the first task and ``run.json`` is written when the run ends,
so a folder without one is a run still going, or one whose process was killed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RUN_ID = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{6}$")  # as qsdk.execution.scheduling.new_run_id makes them


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    flow: str
    status: str  # succeeded, failed, or unfinished (no run.json yet)
    started: str  # ISO 8601, UTC, from the run id
    duration_s: float | None
    mlflow_run_id: str | None
    run_dir: str
    tracking_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def started_at(run_id: str) -> dt.datetime | None:
    """When run ``run_id`` started (its id begins with the UTC time), or None for another name."""
    match = RUN_ID.match(run_id)
    if match is None:
        return None
    return dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)


def list_runs(runs_dir: Path, *, limit: int | None = 20, flow: str | None = None) -> list[RunSummary]:
    """The last ``limit`` runs in ``runs_dir`` (of ``flow`` only, when given), newest first."""
    if not runs_dir.is_dir():
        return []
    folders = sorted((p for p in runs_dir.iterdir() if p.is_dir() and started_at(p.name)),
                     key=lambda p: p.name, reverse=True)
    out: list[RunSummary] = []
    for folder in folders:
        summary = read_run(folder)
        if flow is None or summary.flow == flow:
            out.append(summary)
        if limit is not None and len(out) >= limit:
            break
    return out


def read_run(folder: Path) -> RunSummary:
    """The summary of the run in ``folder`` (its ``run.json``, or what the folder alone tells)."""
    started = started_at(folder.name)
    when = started.isoformat() if started else ""
    try:
        doc = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        # the folder alone does not name the flow (its notebooks are named after their stages)
        return RunSummary(folder.name, "?", "unfinished", when, None, None, str(folder))
    return RunSummary(
        run_id=str(doc.get("run_id", folder.name)), flow=str(doc.get("flow", "")), status=str(doc.get("status", "")),
        started=when, duration_s=doc.get("duration_s"), mlflow_run_id=doc.get("mlflow_run_id"),
        run_dir=str(folder), tracking_uri=doc.get("mlflow_tracking_uri"),
    )



def run_record(runs_dir: Path, run_id: str) -> dict[str, Any]:
    """The full ``run.json`` of run ``run_id``; an error naming the recent runs when there is none."""
    from qsdk.errors import UnknownNameError

    path = runs_dir / run_id / "run.json"
    if not RUN_ID.match(run_id) or not path.is_file():
        recent = [r.run_id for r in list_runs(runs_dir, limit=5) if r.status != "unfinished"]
        raise UnknownNameError(f"no finished run {run_id!r} in {runs_dir}; recent runs: "
                               f"{', '.join(recent) or '(none)'} (`qsdk runs` lists them)", known=recent)
    return json.loads(path.read_text())
