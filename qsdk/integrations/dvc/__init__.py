"""Versioning with DVC: ``dvc.yaml`` kept in step with the registry, and golden snapshots.

* :mod:`qsdk.integrations.dvc.dvcsync`: ``qsdk dvc sync`` renders ``dvc.yaml`` (and seeds
  ``params.yaml``) from ``pipelines/``; ``qsdk dvc run`` is what each DVC stage runs.
* :mod:`qsdk.integrations.dvc.snapshots`: ``qsdk snapshot create|list|restore|diff``.
* :mod:`qsdk.integrations.dvc.hook`: the provenance of snapshot-restored inputs (a hook),
  ``run_pipeline(..., snapshot=NAME)`` and MLflow tags ``qsdk.snapshot.<name>`` for snapshots a
  run created or read.
* :mod:`qsdk.integrations.dvc.command`: the one place that calls DVC (its command line).

The repository commits DVC's project files (``.dvc/config`` with a local default remote,
``.dvcignore``), so its ``dvc.yaml`` works in a fresh clone; qsdk itself never runs ``dvc init``.
"""

from qsdk.integrations.dvc.dvcsync import SyncReport, render, run_stage, sync
from qsdk.integrations.dvc.hook import VersioningHook, freeze_outputs, snapshot_tags, tag_flow_run
from qsdk.integrations.dvc.snapshots import RestoreReport, SnapshotDiff, SnapshotInfo, SnapshotStore

__all__ = [
    "RestoreReport", "SnapshotDiff", "SnapshotInfo", "SnapshotStore", "SyncReport", "VersioningHook",
    "freeze_outputs", "render", "run_stage", "snapshot_tags", "sync", "tag_flow_run",
]
