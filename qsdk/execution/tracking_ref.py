"""Tracking ids that arrive after the task has started.

A tracker that works in the background (:class:`qsdk.integrations.tracker.BackgroundTracking`)
cannot say a task's MLflow run id when the task is submitted: it is still importing MLflow and
creating the runs while the kernel starts. Its ``before_task`` then hands the task
``{PENDING_KEY: path}`` and writes the real entries (``mlflow_run_id``, ``mlflow_tracking_uri``)
as JSON to ``path`` once they exist. Whoever needs them (the commit's Delta metadata, a
notebook's ``qsdk.log_metric``) calls :func:`resolve`, which waits for the file; so the run's
own work never waits for the tracker, only the few steps that need its ids do.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PENDING_KEY = "tracking_file"
WAIT_S = 300.0  # the tracker writes the file (``{}`` if it failed) unless its process was killed


def resolve(tracking: dict[str, Any], *, timeout: float = WAIT_S) -> dict[str, Any]:
    """``tracking`` with a pending entry replaced by what the tracker wrote (waits for it).

    Updates ``tracking`` in place, so later calls return at once. After ``timeout`` seconds
    without the file the entries are left out, with a notice on stderr: the task is untracked.
    """
    path = tracking.get(PENDING_KEY)
    if not path:
        return tracking
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            found = json.loads(Path(path).read_text())
            break
        except (FileNotFoundError, ValueError):  # not there yet (written by rename: never partial)
            if time.monotonic() > deadline:
                print(f"qsdk: the tracker wrote no run id to {path} within {timeout:.0f} s; "
                      "this task is not tracked", file=sys.stderr)
                found = {}
                break
            time.sleep(delay)
            delay = min(0.1, delay * 2)
    tracking.pop(PENDING_KEY, None)
    tracking.update(found)
    return tracking


def publish(path: str | Path, entries: dict[str, Any] | None) -> None:
    """Write ``entries`` (``None``: the tracker failed, the task runs untracked) for :func:`resolve`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries or {}))
    os.replace(tmp, path)
