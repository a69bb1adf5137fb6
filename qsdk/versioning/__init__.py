"""Versioning with DVC: ``dvc.yaml`` kept in step with the registry, and golden snapshots.

* :mod:`qsdk.versioning.dvcsync`: ``qsdk dvc sync`` renders ``dvc.yaml`` (and seeds
  ``params.yaml``) from ``pipelines/``; ``qsdk dvc run`` is what each DVC stage runs.
* :mod:`qsdk.versioning.snapshots`: ``qsdk snapshot create|list|restore|diff``.
* :mod:`qsdk.versioning.hook`: ``-p snapshot=NAME`` on a flow run, and MLflow tags
  ``qsdk.snapshot.<name>`` for snapshots a run created or read.
* :mod:`qsdk.versioning.dvc`: the one place that calls DVC (its command line).

The repository commits DVC's project files (``.dvc/config`` with a local default remote,
``.dvcignore``), so its ``dvc.yaml`` works in a fresh clone; qsdk itself never runs ``dvc init``.
"""

from qsdk.versioning.dvcsync import SyncReport, render, run_stage, sync
from qsdk.versioning.hook import VersioningHook, run_options
from qsdk.versioning.snapshots import RestoreReport, SnapshotDiff, SnapshotInfo, SnapshotStore

__all__ = [
    "RestoreReport", "SnapshotDiff", "SnapshotInfo", "SnapshotStore", "SyncReport", "VersioningHook",
    "render", "run_options", "run_stage", "sync",
]
