"""One error root for qsdk.

Every error qsdk raises on purpose derives from :class:`QsdkError`. Errors that cross
process boundaries (kernel -> driver, Ray worker -> driver) keep their fields and pickle:
each class implements ``__reduce__`` from its keyword fields, like nbclient's errors.
"""

from __future__ import annotations

from typing import Any


class QsdkError(Exception):
    """Root of all qsdk errors. ``str(err)`` is a one-line message that says what to fix."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __reduce__(self):  # keep fields across pickling (Ray, multiprocessing)
        return (_rebuild, (type(self), self.message, self.fields))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[QsdkError], message: str, fields: dict[str, Any]) -> QsdkError:
    err = cls.__new__(cls)
    QsdkError.__init__(err, message, **fields)
    return err


class ConfigError(QsdkError):
    """The project layout or an environment override is unusable."""


class RegistryError(QsdkError):
    """The stage registry in ``pipelines/`` is invalid (bad YAML, unknown table, ...)."""


class FlowCycleError(RegistryError):
    """Declared table I/O forms a cycle; ``cycle`` lists the stages in the loop."""


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


class StageFailed(QsdkError):
    """A stage (or one partition of it) failed.

    Fields: ``stage``, ``partition``, ``cell_index``, ``ename``, ``evalue``, ``notebook``
    (path of the executed notebook that holds the error), ``reason``.
    """


class FlowFailed(QsdkError):
    """A flow run ended with at least one failed stage; ``run_id`` and ``failures`` tell which."""


class VersioningError(QsdkError):
    """A DVC or golden-snapshot operation failed (``qsdk dvc ...``, ``qsdk snapshot ...``)."""


class SnapshotConflict(VersioningError):
    """Restoring would overwrite tables that changed since the snapshot; ``tables`` lists them."""


class SnapshotCorrupted(VersioningError):
    """Snapshot files are missing or do not match their recorded sha256; ``problems`` names each
    (``file``, ``expected``, ``actual``, ``cache``)."""


class MigrationError(QsdkError):
    """``qsdk import-script`` cannot convert a script: it does not parse, or the stage, notebook or
    flow it would create clashes with what the project already has. ``path`` names the script."""


class StaticCheckError(QsdkError):
    """``qsdk check`` found, in a stage notebook, what the contract forbids and the kernel guard
    may not see: direct file I/O on a path, an import from ``scripts/``, a ``sys.path`` change.

    Fields: ``file``, ``cell`` (index among the notebook's cells), ``line`` (within the cell),
    ``rule`` (``direct_io``, ``script_import``, ``sys_path`` or ``pair_out_of_sync``).
    """
