"""One error root for qsdk, and every error qsdk raises on purpose.

Every error derives from :class:`QsdkError`: a one-line message that says what to fix, plus
keyword ``fields`` (JSON-able context: the table, the parameter, ...). Errors whose fields code
reads by name declare them as typed attributes (:class:`StageFailed`, :class:`FlowCycleError`,
:class:`SnapshotConflict`, :class:`SnapshotCorrupted`); nothing sets attributes dynamically.
Errors that cross process boundaries (kernel -> driver, Ray worker -> driver) pickle by
calling their constructor again with the same arguments (``__reduce__``, like nbclient's).
"""

from __future__ import annotations

from typing import Any, Literal


def _construct(cls: type[QsdkError], first: str, fields: dict[str, Any]) -> QsdkError:
    """Unpickling: the constructor again, with the same arguments."""
    return cls(first, **fields)


class QsdkError(Exception):
    """Root of all qsdk errors. ``str(err)`` is a one-line message that says what to fix."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self._fields = dict(fields)

    @property
    def fields(self) -> dict[str, Any]:
        """The keyword context the error was raised with."""
        return dict(self._fields)

    def __reduce__(self) -> tuple[Any, ...]:  # keep fields across pickling (Ray, multiprocessing)
        return (_construct, (type(self), self.message, self._fields))

    def __str__(self) -> str:
        return self.message


class ConfigError(QsdkError):
    """The project layout or an environment override is unusable."""


class RegistryError(QsdkError):
    """The stage registry in ``pipelines/`` is invalid (bad YAML, unknown table, ...)."""


class FlowCycleError(RegistryError):
    """Declared table I/O forms a cycle; ``cycle`` lists the stages in the loop."""

    def __init__(self, message: str, *, flow: str, cycle: list[str]) -> None:
        super().__init__(message, flow=flow, cycle=cycle)
        self.flow = flow
        self.cycle = cycle


class UnknownNameError(QsdkError):
    """A flow, stage or table name that the registry does not know; ``known`` lists them."""


class ParameterError(QsdkError):
    """A run parameter is unknown, missing, or of the wrong type (checked before any kernel starts)."""


class TableNameError(QsdkError):
    """A table name is not of the form ``layer.name`` with safe characters."""


class ContractViolation(QsdkError):
    """A stage read or wrote outside its declared contract; the table was left untouched."""


class DirectReadError(ContractViolation):
    """A stage opened lakehouse files itself instead of reading through ``qsdk.DataLoader``.

    Fields: ``stage``, ``path`` (the file or folder opened), ``table`` (``layer.name`` or
    ``None``), ``how`` (``open``, ``deltalake.DeltaTable``, ``pyarrow.dataset.dataset``, ...).
    """


class CheckFailed(ContractViolation):
    """A data check of severity ``error`` failed on rows about to be committed; nothing was committed.

    Fields: ``table``, ``check`` (the first failing check), ``failing_rows``, ``examples`` (JSON
    of up to five failing rows), ``failed`` (every failing ``table:check``).
    """


class SqlAccessDenied(ContractViolation):
    """``%%qsdk sql`` refused a statement that reaches outside the tables it registered (file
    functions, ``COPY``, ``ATTACH``, ``INSTALL``/``LOAD``, settings); ``detail`` is DuckDB's word."""


class LakehouseError(QsdkError):
    """A Delta Lake read or write failed (wrapped once, at the I/O boundary)."""


FailureReason = Literal[
    "error",  # a cell raised
    "timeout",  # a cell, or the whole notebook, ran past the stage's timeout
    "kernel_died", "bootstrap",  # the kernel died, or qsdk could not set it up
    "outputs_missing", "direct_read", "direct_write",  # the notebook broke its contract
    "check_failed", "commit",  # a data check failed, or the commit did
    "out_of_memory", "worker_died", "cancelled", "resources", "executor",  # the executor failed the task
]


class StageFailed(QsdkError):
    """A stage (or one partition of it) failed; the one constructor every executor uses.

    The message is ``stage KEY failed: DETAIL (executed notebook: PATH)``. Fields: ``stage``,
    ``partition``, ``notebook`` (the executed notebook that holds the error), ``reason``,
    ``cell_index`` (in the stage's own notebook), ``exec_count``, ``ename``, ``evalue``; for
    ``check_failed`` also ``table``, ``check``, ``failing_rows``, ``examples``; for
    ``direct_read`` the ``tables`` read, for ``direct_write`` the foreign ``commits``.
    """

    def __init__(
        self,
        detail: str,
        *,
        stage: str,
        partition: str | None = None,
        notebook: str | None = None,
        reason: FailureReason = "error",
        cell_index: int | None = None,
        exec_count: int | None = None,
        ename: str | None = None,
        evalue: str | None = None,
        table: str | None = None,
        check: str | None = None,
        failing_rows: int | None = None,
        examples: str | None = None,
        tables: list[str] | None = None,
        commits: dict[str, list[int]] | None = None,
    ) -> None:
        key = stage if partition is None else f"{stage}[{partition}]"
        where = f" (executed notebook: {notebook})" if notebook else ""
        super().__init__(f"stage {key} failed: {detail}{where}")
        self.detail = detail
        self.stage = stage
        self.partition = partition
        self.notebook = notebook
        self.reason: FailureReason = reason
        self.cell_index = cell_index
        self.exec_count = exec_count
        self.ename = ename
        self.evalue = evalue
        self.table = table
        self.check = check
        self.failing_rows = failing_rows
        self.examples = examples
        self.tables = tables
        self.commits = commits

    _CORE = ("stage", "partition", "notebook", "reason", "cell_index", "ename", "evalue")
    _OPTIONAL = ("exec_count", "table", "check", "failing_rows", "examples", "tables", "commits")

    @property
    def fields(self) -> dict[str, Any]:
        """Every field, the optional ones only when set (``run.json``, ``--json``)."""
        core = {k: getattr(self, k) for k in self._CORE}
        return {**core, **{k: getattr(self, k) for k in self._OPTIONAL if getattr(self, k) is not None}}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_construct, (type(self), self.detail, self.fields))


class FlowFailed(QsdkError):
    """A flow run ended with at least one failed stage; ``run_id`` and ``failures`` tell which."""


class VersioningError(QsdkError):
    """A DVC or golden-snapshot operation failed (``qsdk dvc ...``, ``qsdk snapshot ...``)."""


class SnapshotConflict(VersioningError):
    """Restoring would overwrite tables that changed since the snapshot; ``tables`` lists them."""

    def __init__(self, message: str, *, tables: list[str], **fields: Any) -> None:
        super().__init__(message, tables=tables, **fields)
        self.tables = tables


class SnapshotCorrupted(VersioningError):
    """Snapshot files are missing or do not match their recorded sha256; ``problems`` names each
    (``file``, ``expected``, ``actual``, ``cache``)."""

    def __init__(self, message: str, *, problems: list[dict[str, Any]], **fields: Any) -> None:
        super().__init__(message, problems=problems, **fields)
        self.problems = problems


class MigrationError(QsdkError):
    """``qsdk import-script`` cannot convert a script: it does not parse, or the stage, notebook or
    flow it would create clashes with what the project already has. ``path`` names the script."""


class StaticCheckError(QsdkError):
    """``qsdk check`` found, in a stage notebook, what the contract forbids and the kernel guard
    may not see: direct file I/O on a path, an import from ``scripts/``, a ``sys.path`` change.

    Fields: ``file``, ``cell`` (index among the notebook's cells), ``line`` (within the cell),
    ``rule`` (``direct_io``, ``script_import``, ``sys_path`` or ``pair_out_of_sync``).
    """


class KernelPoolError(QsdkError):
    """The kernel pool could not start a kernel, or was used after it was closed."""


class KernelBootstrapError(QsdkError):
    """qsdk could not set up a stage's kernel (its context, its import recorder) before the first
    cell; the stage fails with reason ``bootstrap``."""
