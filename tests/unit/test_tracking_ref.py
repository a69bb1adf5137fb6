"""A task's tracking ids that the background tracker publishes after the task has started."""

from __future__ import annotations

import threading
import time

from qsdk.execution import tracking_ref


def test_resolve_waits_for_the_published_ids_and_then_answers_at_once(tmp_path):
    path = tmp_path / ".tracking" / "stage.json"
    tracking = {tracking_ref.PENDING_KEY: str(path)}
    ids = {"mlflow_run_id": "abc", "mlflow_tracking_uri": "sqlite:///x.db"}
    publisher = threading.Timer(0.3, tracking_ref.publish, args=(path, ids))
    publisher.start()
    started = time.monotonic()
    assert tracking_ref.resolve(tracking) == ids
    assert time.monotonic() - started >= 0.25  # it waited for the file
    assert tracking == ids  # resolved in place: the pending entry is gone
    assert tracking_ref.resolve(tracking) == ids


def test_a_tracker_that_failed_or_never_answers_leaves_the_task_untracked(tmp_path, capsys):
    failed = tmp_path / "failed.json"
    tracking_ref.publish(failed, None)
    assert tracking_ref.resolve({tracking_ref.PENDING_KEY: str(failed)}) == {}
    silent = {tracking_ref.PENDING_KEY: str(tmp_path / "never.json")}
    assert tracking_ref.resolve(silent, timeout=0.2) == {}
    assert "this task is not tracked" in capsys.readouterr().err
    assert tracking_ref.resolve({"mlflow_run_id": "r"}) == {"mlflow_run_id": "r"}  # nothing pending
