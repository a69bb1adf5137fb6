"""Snapshots in flow runs: ``run_pipeline(..., snapshot=NAME)`` and the provenance of
snapshot-restored inputs.

:class:`VersioningHook` only observes: it notices inputs read at a version that ``qsdk snapshot
restore`` wrote and records them in ``result.extra["snapshots_read"]`` (so in ``run.json``). It
changes no status and needs no other hook before or after it. What acts on a finished run is
called by :meth:`qsdk.sdk.QuantSDK.run_pipeline` once every hook is done, so hook order never
matters: :func:`freeze_outputs` snapshots the flow's output tables at exactly the versions the run
wrote (``snapshot=NAME``), and :func:`tag_flow_run` tags the flow's MLflow run
``qsdk.snapshot.<name> = <DVC md5>`` for the snapshots it created or read.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from qsdk.config import Config
from qsdk.execution.hooks import Hook
from qsdk.integrations.dvc.snapshots import SNAPSHOT_KEY, SNAPSHOT_MD5_KEY, SnapshotStore
from qsdk.lakehouse.tables import Lakehouse

if TYPE_CHECKING:
    from qsdk.execution.scheduling import RunResult, RunState
    from qsdk.execution.task import Task, TaskResult
    from qsdk.model.flow import Flow

TAG_PREFIX = "qsdk.snapshot."


class VersioningHook(Hook):
    """Records which golden snapshots a run's inputs came from (``result.extra["snapshots_read"]``)."""

    def __init__(self) -> None:
        self._reads: dict[str, dict[str, set[int]]] = {}

    def after_task(self, *, run: RunState, task: Task, result: TaskResult, **_: Any) -> None:
        reads = self._reads.setdefault(run.run_id, {})
        elsewhere = set(task.context.read_roots)  # read from another lakehouse (reproduce)
        for table, version in result.read.items():
            if table not in elsewhere:
                reads.setdefault(table, set()).add(int(version))

    def after_flow(self, *, run: RunState, result: RunResult, **_: Any) -> None:
        read = self._snapshots_read(run, self._reads.pop(run.run_id, {}))
        if read:
            result.extra["snapshots_read"] = read

    @staticmethod
    def _snapshots_read(run: RunState, reads: dict[str, set[int]]) -> dict[str, str]:
        """name -> md5 of the snapshots whose restored versions this run read."""
        lake = Lakehouse(run.config.lakehouse_root)
        found: dict[str, str] = {}
        for table, versions in sorted(reads.items()):
            try:
                for version in sorted(versions):
                    meta = lake.commit_metadata(table, version)
                    if meta.get(SNAPSHOT_KEY) and meta.get(SNAPSHOT_MD5_KEY):
                        found[str(meta[SNAPSHOT_KEY])] = str(meta[SNAPSHOT_MD5_KEY])
            except Exception as exc:  # provenance must not turn a finished run into an error
                warnings.warn(f"qsdk: cannot check whether {table} came from a snapshot: {exc}",
                              RuntimeWarning, stacklevel=2)
        return found


def freeze_outputs(config: Config, flow: Flow, result: RunResult, name: str, *,
                   push: bool = True) -> dict[str, Any]:
    """Snapshot ``flow``'s output tables as ``result`` left them (the versions it wrote, the
    current one for outputs it did not write) under ``name``; ``{"name", "md5", "tables"}``.
    Raises :class:`~qsdk.errors.VersioningError` when DVC cannot."""
    written: dict[str, int] = {}
    for r in result.results:
        for table, version in r.written.items():
            written[table] = max(int(version), written.get(table, -1))
    lake = Lakehouse(config.lakehouse_root)
    versions = {t: written.get(t) for s in flow.stages for t in s.outputs if t in written or lake.exists(t)}
    info = SnapshotStore(config).create(name, versions=versions, push=push, run_id=result.run_id)
    return {"name": info.name, "md5": info.md5, "tables": info.versions}


def snapshot_tags(result: RunResult) -> dict[str, str]:
    """The MLflow tags of the snapshots ``result`` read and created (or failed to create)."""
    tags = {TAG_PREFIX + name: md5 for name, md5 in result.extra.get("snapshots_read", {}).items()}
    made = result.extra.get("snapshot") or {}
    if made.get("md5"):
        tags[TAG_PREFIX + made["name"]] = made["md5"]
    elif made.get("error"):
        tags["qsdk.snapshot_error"] = str(made["error"])[:5000]
    return tags


def tag_flow_run(result: RunResult) -> None:
    """Tag the flow's MLflow run (when :class:`qsdk.integrations.mlflow.MlflowTracking` recorded
    one) with :func:`snapshot_tags`."""
    tags = snapshot_tags(result)
    if not tags:
        return
    from qsdk.integrations import mlflow as tracking

    run_id, uri = result.extra.get(tracking.RUN_ID_KEY), result.extra.get(tracking.URI_KEY)
    if not (run_id and uri):
        return
    try:
        c = tracking.client(uri)
        for key, value in sorted(tags.items()):
            tracking.with_retry(c.set_tag, run_id, key, value)
    except Exception as exc:  # tracking must not turn a finished run into an error
        warnings.warn(f"qsdk: could not tag MLflow run {run_id} with its snapshots: {exc}",
                      RuntimeWarning, stacklevel=2)
