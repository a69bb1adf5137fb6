"""Snapshots in flow runs: ``-p snapshot=NAME`` and the provenance of snapshot-restored inputs.

``snapshot`` is a *run option*, not a stage parameter: :func:`run_options` takes it out of the
run's parameters before the flow validates them (a stage may not declare a parameter of that
name), and :class:`VersioningHook` acts on it after the flow succeeded, freezing the tables the
flow wrote at exactly the versions it wrote. The same hook notices inputs read at a version
that ``qsdk snapshot restore`` wrote. Both end up in ``result.extra`` (so in ``run.json``) and,
when the run is tracked, as MLflow tags ``qsdk.snapshot.<name> = <DVC md5>`` on the flow run.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qsdk.errors import ParameterError, QsdkError
from qsdk.execution.hooks import Hook
from qsdk.integrations.dvc.snapshots import SNAPSHOT_KEY, SNAPSHOT_MD5_KEY, SnapshotStore
from qsdk.lakehouse.tables import Lakehouse

if TYPE_CHECKING:
    from qsdk.execution.scheduling import RunResult, RunState
    from qsdk.execution.task import Task, TaskResult
    from qsdk.model.flow import Flow

SNAPSHOT_OPTION = "snapshot"
TAG_PREFIX = "qsdk.snapshot."


def run_options(flow: Flow, params: Mapping[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """``(stage parameters, snapshot name or None)``: split the run option off the parameters."""
    params = dict(params or {})
    if SNAPSHOT_OPTION not in params:
        return params, None
    if any(p.name == SNAPSHOT_OPTION for p in flow.parameters()):
        owners = [s.name for s in flow.stages if SNAPSHOT_OPTION in s.params]
        raise ParameterError(
            f"stage(s) {owners} declare a parameter named {SNAPSHOT_OPTION!r}, which qsdk reserves for "
            "`-p snapshot=NAME` (snapshot the flow's outputs): rename the notebook parameter",
            parameter=SNAPSHOT_OPTION,
        )
    name = str(params.pop(SNAPSHOT_OPTION)).strip()
    return params, name or None


class VersioningHook(Hook):
    """``snapshot``: after a successful run, snapshot the flow's output tables under this name."""

    def __init__(self, *, snapshot: str | None = None, push: bool = True) -> None:
        self.snapshot = snapshot
        self.push = push
        self._reads: dict[str, dict[str, set[int]]] = {}

    def after_task(self, *, run: RunState, task: Task, result: TaskResult, **_: Any) -> None:
        reads = self._reads.setdefault(run.run_id, {})
        elsewhere = set(task.context.read_roots)  # read from another lakehouse (reproduce)
        for table, version in result.read.items():
            if table not in elsewhere:
                reads.setdefault(table, set()).add(int(version))

    def after_flow(self, *, run: RunState, result: RunResult, **_: Any) -> None:
        tags: dict[str, str] = {}
        read = self._snapshots_read(run)
        if read:
            result.extra["snapshots_read"] = read
            tags.update({TAG_PREFIX + name: md5 for name, md5 in read.items()})
        if self.snapshot and result.status == "succeeded":
            try:
                info = SnapshotStore(run.config).create(
                    self.snapshot, versions=_outputs(run, result), push=self.push, run_id=run.run_id)
                result.extra["snapshot"] = {"name": info.name, "md5": info.md5, "tables": info.versions}
                tags[TAG_PREFIX + info.name] = info.md5
            except QsdkError as exc:  # the run's data is fine; the run as asked for is not done
                result.status = "failed"
                result.extra["snapshot"] = {"name": self.snapshot, "error": str(exc)}
                tags["qsdk.snapshot_error"] = str(exc)[:5000]
        self._reads.pop(run.run_id, None)
        if tags:
            _tag_mlflow(result, tags)

    def _snapshots_read(self, run: RunState) -> dict[str, str]:
        """name -> md5 of the snapshots whose restored versions this run read."""
        lake = Lakehouse(run.config.lakehouse_root)
        found: dict[str, str] = {}
        for table, versions in sorted(self._reads.get(run.run_id, {}).items()):
            try:
                for version in sorted(versions):
                    meta = lake.commit_metadata(table, version)
                    if meta.get(SNAPSHOT_KEY) and meta.get(SNAPSHOT_MD5_KEY):
                        found[str(meta[SNAPSHOT_KEY])] = str(meta[SNAPSHOT_MD5_KEY])
            except Exception as exc:  # provenance must not turn a finished run into an error
                warnings.warn(f"qsdk: cannot check whether {table} came from a snapshot: {exc}",
                              RuntimeWarning, stacklevel=2)
        return found


def _outputs(run: RunState, result: RunResult) -> dict[str, int | None]:
    """The flow's output tables at the versions this run wrote (current version if it wrote none)."""
    written: dict[str, int] = {}
    for r in result.results:
        for table, version in r.written.items():
            written[table] = max(int(version), written.get(table, -1))
    lake = Lakehouse(run.config.lakehouse_root)
    return {t: written.get(t) for s in run.flow.stages for t in s.outputs if t in written or lake.exists(t)}


def _tag_mlflow(result: RunResult, tags: dict[str, str]) -> None:
    """Tag the flow's MLflow run, when :class:`qsdk.integrations.mlflow.MlflowTracking` recorded one."""
    try:
        from qsdk.integrations import mlflow as tracking
    except ImportError:
        return
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
