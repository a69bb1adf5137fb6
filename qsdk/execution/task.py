"""Run one stage partition: the one papermill call, then the commit of its staged writes.

Failures come back as values (:class:`TaskResult` with a picklable :class:`StageFailed`), not
as exceptions, so an executor can tell a notebook that raised (never retried) from a worker
that died (retried by the executor).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from qsdk import names as qnames
from qsdk import storage
from qsdk.errors import FailureReason, KernelBootstrapError, QsdkError, StageFailed
from qsdk.execution import tracking_ref
from qsdk.execution.context import ENV_CONTEXT, StageContext
from qsdk.lakehouse import guard, staging
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.tables import Lakehouse

Status = Literal["succeeded", "failed", "cached", "skipped"]


@dataclass(frozen=True)
class Task:
    run_id: str
    stage: str
    partition: str | None
    notebook: str
    output_notebook: str
    parameters: dict[str, Any]
    context: StageContext
    timeout: float | None = None
    retries: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    preload: tuple[str, ...] = ()  # modules a pre-warmed kernel may import ahead (Stage.preload)
    project_root: str = ""  # where project modules live: the code closure (qsdk.codedeps) keys files by it
    sources: tuple[Any, ...] = ()  # the stage's declared non-table sources (Stage.sources)

    @property
    def key(self) -> str:
        return self.stage if self.partition is None else f"{self.stage}[{self.partition}]"

    @property
    def staging_dir(self) -> Path:
        return Path(self.context.staging_dir or "")

    def failure(self, detail: str, *, reason: FailureReason = "error", **fields: Any) -> StageFailed:
        """This task's :class:`StageFailed` (every executor builds its failures here)."""
        return StageFailed(detail, stage=self.stage, partition=self.partition, notebook=self.output_notebook,
                           reason=reason, **fields)


@dataclass
class TaskResult:
    stage: str
    partition: str | None
    status: Status
    notebook: str
    duration: float = 0.0
    written: dict[str, int] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)
    error: StageFailed | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # the executed notebook's bytes, on its way back from a worker that shares no disk with the
    # driver (qsdk.execution.detached); written to ``notebook`` by the driver, then None
    notebook_data: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.stage if self.partition is None else f"{self.stage}[{self.partition}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "partition": self.partition,
            "status": self.status,
            "notebook": self.notebook,
            "duration_s": round(self.duration, 3),
            "written": self.written,
            "read": self.read,
            "checks": self.extra.get("checks", []),
            "error": None if self.error is None else {"message": str(self.error), **_jsonable(self.error.fields)},
        }


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, str | int | float | bool | type(None)) else str(v) for k, v in fields.items()}


def run_task(task: Task, *, km: Any = None) -> TaskResult:
    """Execute ``task``'s notebook with papermill, then commit what it staged.

    ``km``: an already started kernel manager (a pre-warmed kernel) to run on instead of
    starting a new kernel; it is used for this one run only.
    """
    from qsdk.execution import engine

    engine.register()
    started = time.perf_counter()
    context_path = task.staging_dir / "context.json"
    if task.staging_dir.exists():  # a retried attempt starts from a clean staging folder
        shutil.rmtree(task.staging_dir)
    task.context.save(context_path)
    Path(task.output_notebook).parent.mkdir(parents=True, exist_ok=True)
    result = TaskResult(task.stage, task.partition, "failed", task.output_notebook,
                        parameters=dict(task.parameters))
    try:
        lake_before = _lake_files(task)
        failure: StageFailed | None = None
        try:
            _papermill(task, context_path, km)
        except StageFailed as exc:  # what it did around qsdk before failing is said first
            failure = exc
        _check_direct_writes(task, lake_before, then=failure)
        _check_direct_reads(task, then=failure)  # even if the notebook caught the guard's error
        if failure is not None:
            raise failure
        _check_outputs_written(task)
        result.read = staging.recorded_reads(task.staging_dir)
        result.extra["reads"] = staging.read_log(task.staging_dir)
        result.extra["deps"] = _dependencies(task)
        result.extra["writes"] = [{"table": w.table, "mode": w.mode, "predicate": w.predicate}
                                  for w in staging.staged_writes(task.staging_dir)]
        _run_checks(task, result)
        committing = time.perf_counter()
        result.written = _commit(task)
        result.extra["commit_s"] = time.perf_counter() - committing  # what the commit cost (bench_write.py)
        result.status = "succeeded"
    except StageFailed as exc:
        result.error = exc
    except QsdkError as exc:
        result.error = _failed(task, f"{type(exc).__name__}: {exc}", reason="commit",
                               ename=type(exc).__name__, evalue=str(exc))
    result.duration = time.perf_counter() - started
    return result


def _dependencies(task: Task) -> dict[str, Any]:
    """What the result depends on beyond notebook, parameters and reads, for its cache record:
    the code closure, the contracts of its tables, the identity of its declared sources."""
    from qsdk import codedeps
    from qsdk.cache import contract_hash

    root = task.project_root or str(Path(task.notebook).parent)
    closure = codedeps.closure(task.staging_dir, project_root=root, notebook_dir=Path(task.notebook).parent)
    return {
        "code": closure.to_dict(),
        "contracts": {t: contract_hash(spec) for t, spec in sorted(task.context.tables.items())},
        "sources": codedeps.source_fingerprints(task.sources, project_root=root),
    }


def _papermill(task: Task, context_path: Path, km: Any) -> None:
    import logging

    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    # papermill's regex parameter inference misreads annotated parameters and warns about
    # "unknown" ones; qsdk validated every name itself before this call.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {
        "kernel_env": {ENV_CONTEXT: str(context_path)},
        # the kernel's own start-up chatter (e.g. its TCP transport notice) is not stage output
        "extra_arguments": ["--IPKernelApp.log_level=ERROR"],
    }
    if km is not None:  # a pre-warmed kernel started elsewhere: the bootstrap moves it here
        kwargs.update(km=km, kernel_cwd=str(Path(task.notebook).parent.resolve()))
    try:
        pm.execute_notebook(
            task.notebook,
            task.output_notebook,
            parameters=task.parameters,
            engine_name="qsdk",
            kernel_name="python3",
            cwd=str(Path(task.notebook).parent),
            # nbclient takes whole seconds; never round a limit down to less than was asked
            execution_timeout=math.ceil(task.timeout) if task.timeout else None,
            progress_bar=False,
            log_output=False,
            **kwargs,
        )
    except PapermillExecutionError as exc:
        index = _source_cell_index(task.output_notebook, exc.cell_index)
        raise _failed(
            task,
            f"cell {index} (In [{exc.exec_count}]) raised {exc.ename}: {_first_line(exc.evalue)}",
            reason="error", cell_index=index, exec_count=exc.exec_count, ename=exc.ename, evalue=exc.evalue,
        ) from None
    except CellTimeoutError as exc:
        # which cell: the last one papermill started (it marks even the timed-out one "completed")
        from qsdk.nbfile import read_cells

        try:
            cells = read_cells(task.output_notebook)
        except (OSError, ValueError):
            cells = []
        started = [i for i, c in enumerate(cells) if (c["metadata"].get("papermill") or {}).get("start_time")]
        timed_out: int | None = _source_cell_index(task.output_notebook, started[-1]) if started else None
        where = f"cell {timed_out} (`{_first_line(cells[started[-1]]['source'])}`)" if started else "a cell"
        raise _failed(task, f"{where} ran longer than the stage timeout of {task.timeout} s",
                      reason="timeout", cell_index=timed_out, ename="CellTimeoutError",
                      evalue=_first_line(str(exc))) from None
    except DeadKernelError as exc:
        raise _failed(task, "the kernel died (killed, out of memory, or crashed)",
                      reason="kernel_died", ename="DeadKernelError", evalue=_first_line(str(exc))) from None
    except KernelBootstrapError as exc:
        raise _failed(task, str(exc), reason="bootstrap", ename=type(exc).__name__, evalue=str(exc)) from None
    except RuntimeError as exc:  # e.g. "Kernel died before replying to kernel_info"
        raise _failed(task, f"the kernel failed: {_first_line(str(exc))}", reason="kernel_died",
                      ename=type(exc).__name__, evalue=str(exc)) from None


def _source_cell_index(executed: str, index: int) -> int:
    """papermill counts cells of the parameterized notebook, which has the injected-parameters
    cell; users edit the stage's own notebook, which does not. Return the index there."""
    from qsdk.nbfile import read_cells, tags

    try:
        cells = read_cells(executed)
    except (OSError, ValueError):
        return index
    # the saved notebook also has papermill's error banners: skip them, then the injected cell
    cells = [c for c in cells if "papermill-error-cell-tag" not in tags(c)]
    injected = next((i for i, c in enumerate(cells) if "injected-parameters" in tags(c)), None)
    return index - 1 if injected is not None and index > injected else index


def _check_outputs_written(task: Task) -> None:
    written = {w.table for w in staging.staged_writes(task.staging_dir)}
    missing = [t for t in task.context.outputs if t not in written]
    if missing:
        raise _failed(
            task,
            f"the notebook finished without writing its declared output(s) {missing} (did it call "
            "sys.exit() or return early?); write each declared output with qsdk.write_table, "
            "even an empty frame",
            reason="outputs_missing", ename="OutputsMissing", evalue=", ".join(missing),
        )


def _check_direct_reads(task: Task, *, then: StageFailed | None = None) -> None:
    """Fail the stage if the in-kernel guard (:mod:`qsdk.lakehouse.guard`) recorded reads of
    lakehouse files that did not go through ``qsdk.DataLoader``."""
    reads = guard.recorded(task.staging_dir)
    if not reads:
        return
    paths = list(dict.fromkeys(r["path"] for r in reads))
    first = reads[0]
    table = first.get("table")
    fix = (f"read it with qsdk.DataLoader().read({table!r})" if table
           else "read tables only with qsdk.DataLoader().read('layer.name')")
    if table and table not in task.context.allowed_reads:
        fix += f" after adding {table!r} to the stage's inputs: in pipelines/"
    more = f" (and {len(paths) - 1} more path(s))" if len(paths) > 1 else ""
    also = _also(then) if then is not None and then.ename != "DirectReadError" else ""
    raise _failed(
        task,
        f"the notebook read {first['path']} directly ({first['how']}){more}, around its contract "
        f"and unrecorded for lineage and the cache: {fix}; the stage's own writes were not committed{also}",
        reason="direct_read", ename="DirectLakehouseRead", evalue="\n".join(paths),
        tables=sorted({r["table"] for r in reads if r.get("table")}),
        cell_index=then.cell_index if then else None,
    )


# A data file as delta-rs names it. One that no commit references yet belongs to another task's
# commit in flight (or one that lost a conflict): invisible to Delta readers, not this notebook's.
# ``#N`` is object_store's staging suffix: a local write goes to ``name#N``, then is renamed.
_STAGING_SUFFIX = re.compile(r"#\d+$")
_DELTA_DATA_FILE = re.compile(r"part-\d{5}-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}-c\d{3}(\.\w+)?\.parquet(#\d+)?")
_COMMIT_FILE = re.compile(r"\d{20}\.json")


_LINK = -1  # the size recorded for a symbolic link: never a file's


def _lake_files(task: Task) -> dict[str, tuple[int, int]]:
    """``{relative path: (mtime_ns, size)}`` of every file and symbolic link (size ``_LINK``)
    under the lakehouse root, but qsdk's own folders and the runs folder (when it lies inside
    the lakehouse). Links are never followed. On an object store, every object under the root
    (one recursive listing) but qsdk's own folders; its modification times have the store's
    resolution, which is why a commit or data file counts as changed only by being new or gone
    or resized or re-timed: Delta never rewrites either."""
    loc = storage.location(task.context.lakehouse_root)
    if isinstance(loc, storage.ObjectPath):
        return storage.object_tree(loc, skip=guard.private_names())
    root = Path(task.context.lakehouse_root)
    skip = guard.private_folders(root, task.context.runs_dir)
    files: dict[str, tuple[int, int]] = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if os.path.join(folder, d) not in skip]
        links = [d for d in subfolders if os.path.islink(os.path.join(folder, d))]  # os.walk lists, never enters
        for name in [*names, *links]:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # a concurrent commit's temporary file
                continue
            link = stat.S_ISLNK(st.st_mode)
            files[os.path.relpath(path, root)] = (st.st_mtime_ns, _LINK if link else st.st_size)
    return files


def _also(then: StageFailed) -> str:
    """The notebook's own failure, after what it did around qsdk."""
    return f" (the notebook then failed too, reason {then.reason}: {then.ename}: {_first_line(then.evalue)})"


def _check_direct_writes(task: Task, before: dict[str, tuple[int, int]], *,
                         then: StageFailed | None = None) -> None:
    """Fail the stage if its notebook wrote into the lakehouse folder itself, bypassing
    ``qsdk.write_table`` (e.g. pandas ``to_parquet`` into a table's folder, or ``deltalake``).

    Other tasks commit while this one runs (partitions in parallel), so a change counts only
    if no qsdk commit explains it: every new Delta commit must carry qsdk's commit metadata,
    commit files and data files are immutable, and a new file inside a table must be added by
    one of the new commits (or be named like a delta-rs data file, see ``_DELTA_DATA_FILE``).
    """
    root = storage.location(task.context.lakehouse_root)
    if isinstance(root, Path):
        root = Path(task.context.lakehouse_root)  # as given: the message names the folder the user set
    after = _lake_files(task)
    changed = sorted({p for p, st in after.items() if before.get(p) != st} | (before.keys() - after.keys()))
    added: dict[str, set[str]] = {}  # table folder -> data files its new commits add
    stray: list[str] = []
    commits: dict[str, list[int]] = {}  # table folder -> versions committed around qsdk
    links = [rel for rel in changed if rel in after and after[rel][1] == _LINK]
    for rel in changed:
        parts = Path(rel).parts
        table = Path(*parts[:2]) if len(parts) > 2 else None
        in_table = table is not None and _has_log(str(table), before, after)
        if rel in links:
            continue
        if in_table and parts[2] == "_delta_log":
            if rel not in after or not _COMMIT_FILE.fullmatch(parts[-1]) or len(parts) != 4:
                continue  # checkpoints, _last_checkpoint, temporary files, expired-log clean-up
            if rel in before:
                stray.append(rel)  # a rewritten commit
            elif not _qsdk_commit(root / rel, added.setdefault(str(table), set())):
                stray.append(rel)  # a commit qsdk did not make
                commits.setdefault(str(table), []).append(int(Path(rel).stem))
            continue
        if rel in before:  # a data file (or a file outside any table) modified or deleted
            if not (_STAGING_SUFFIX.search(parts[-1]) and _DELTA_DATA_FILE.fullmatch(parts[-1])):
                stray.append(rel)  # (another writer's staging file renamed away is not a change)
        elif not (_DELTA_DATA_FILE.fullmatch(parts[-1]) and len(parts) > 2):
            stray.append(rel)
    stray = [rel for rel in stray if not _added_by_commit(rel, added)]
    if stray or links:
        raise _failed(
            task,
            f"the notebook changed the lakehouse folder {root} directly instead of through "
            f"qsdk.write_table: {_what_it_did(root, stray, links, commits, before, after)}; the stage's own "
            "writes were not committed; write tables only with qsdk.write_table" + (_also(then) if then else ""),
            reason="direct_write", ename="DirectLakehouseWrite", evalue="\n".join([*stray, *links]),
            commits={folder.replace(os.sep, "."): versions for folder, versions in commits.items()},
        )


def _has_log(table: str, *trees: dict[str, tuple[int, int]]) -> bool:
    """Whether folder ``table`` holds a Delta log (in the listing before or after the task)."""
    prefix = f"{table}/_delta_log/"
    return any(rel.startswith(prefix) for tree in trees for rel in tree)


def _what_it_did(root: storage.Location, stray: list[str], links: list[str], commits: dict[str, list[int]],
                 before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    """What a direct write left behind, and for each kind how to undo it: only what is true."""
    said = []
    for folder, versions in sorted(commits.items()):
        table, first = folder.replace(os.sep, "."), min(versions)
        what = f"committed version{'s' if len(versions) > 1 else ''} {', '.join(map(str, sorted(versions)))} " \
               f"of {table} itself (e.g. with deltalake.write_deltalake), and qsdk did not undo " \
               f"{'them' if len(versions) > 1 else 'it'}"
        if first == 0:
            what += f": it created the table; delete the folder {root / folder} to undo it"
        else:
            what += f": undo with `qsdk restore {table} --version {first - 1}`"
            latest = max(int(Path(rel).stem) for rel in after
                         if rel.startswith(f"{folder}/_delta_log/") and _COMMIT_FILE.fullmatch(Path(rel).name))
            if latest > max(versions):
                what += f" (this also undoes the later versions up to {latest})"
        said.append(what)
    commit_files = {f"{folder}{os.sep}_delta_log{os.sep}{v:020d}.json" for folder, vs in commits.items() for v in vs}
    new = [rel for rel in stray if rel not in before and rel not in commit_files]
    old = [rel for rel in stray if rel in before]
    if new:
        said.append(f"added {_shown(new)} (nothing committed them; remove those files)")
    if old:
        said.append(f"changed or deleted {_shown(old)}, files of committed table versions: qsdk cannot "
                    "repair them; restore a golden snapshot (qsdk snapshot restore) or rebuild the table")
    if links:
        said.append(f"created the symbolic link{'s' if len(links) > 1 else ''} {_shown(links)} (a link "
                    "makes another folder look like a table, or leads out of the lakehouse; remove it)")
    return "; ".join(said)


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def _qsdk_commit(path: storage.Location, adds: set[str]) -> bool:
    """Whether the Delta commit file at ``path`` was made by qsdk; collect its ``add`` paths."""
    ours = False
    try:
        actions = [json.loads(line) for line in (storage.read_text(path) or "").splitlines() if line.strip()]
    except (OSError, ValueError):  # unreadable: not a commit qsdk wrote
        return False
    for action in actions:
        if "commitInfo" in action:
            ours = any(key.startswith("qsdk.") for key in action["commitInfo"])
        elif "add" in action:
            adds.add(unquote(action["add"]["path"]))
    return ours


def _added_by_commit(rel: str, added: dict[str, set[str]]) -> bool:
    parts = Path(rel).parts
    return len(parts) > 2 and "/".join(parts[2:]) in added.get(str(Path(*parts[:2])), ())


def _lakehouse(task: Task) -> Lakehouse:
    ctx = task.context
    return Lakehouse(ctx.lakehouse_root, {n: TableSpec.from_dict(s) for n, s in ctx.tables.items()})


def _run_checks(task: Task, result: TaskResult) -> None:
    """Evaluate the declared data checks on the staged writes, record the results (the
    ``qsdk.checks`` table and ``result.extra["checks"]``), and fail the stage with reason
    ``check_failed`` when an ``error`` check failed: then nothing is committed."""
    from qsdk.lakehouse import check_results, checks

    started = time.perf_counter()
    results = staging.check_staged(task.staging_dir, _lakehouse(task))
    result.extra["checks"] = [r.to_dict() for r in results]
    ctx = task.context
    check_results.record(ctx.lakehouse_root, results, run_id=ctx.run_id, stage=ctx.stage, partition=ctx.partition,
                  source="flow")
    result.extra["checks_s"] = time.perf_counter() - started  # what the checks cost (bench_checks.py)
    try:
        checks.raise_for(results)
    except QsdkError as exc:
        raise _failed(task, str(exc), reason="check_failed", ename=type(exc).__name__, evalue=str(exc),
                      table=exc.fields["table"], check=exc.fields["check"],
                      failing_rows=exc.fields["failing_rows"], examples=exc.fields["examples"]) from None


def _commit(task: Task) -> dict[str, int]:
    ctx = task.context
    lakehouse = _lakehouse(task)
    metadata = {
        qnames.RUN_ID: ctx.run_id,
        qnames.STAGE: ctx.stage,
        qnames.PARTITION: ctx.partition or "",
        qnames.INPUTS: staging.recorded_reads(task.staging_dir),
        **{f"qsdk.{k}": v for k, v in tracking_ref.resolve(ctx.tracking).items()},
    }
    app_prefix = f"qsdk:{ctx.run_id}:{ctx.stage}:{ctx.partition or '-'}"
    return staging.commit_staged(task.staging_dir, lakehouse, app_prefix=app_prefix, metadata=metadata)


def _failed(task: Task, detail: str, *, reason: FailureReason = "error", **fields: Any) -> StageFailed:
    return task.failure(detail, reason=reason, **fields)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
