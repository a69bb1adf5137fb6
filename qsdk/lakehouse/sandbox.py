"""Per-user sandbox for interactive writes, and :func:`promote` to production.

A notebook explored with ``%qsdk stage NAME`` runs under the stage's contract, but its
``write_table`` calls land in ``<lakehouse>/_sandbox/<user>/<layer>/<name>`` (a lakehouse of
its own), never in the production table. Production changes only through a flow run, or
explicitly through :func:`promote`, which copies a sandbox table into production with the
same contract checks as a stage's commit. The sandbox lives under a ``_``-prefixed folder,
which is not a valid layer name, so it never shows up as a production table.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qsdk import names as qnames
from qsdk import storage
from qsdk.errors import ConfigError, LakehouseError
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.stagecontext import StageContext
from qsdk.lakehouse.tables import Lakehouse, WriteMode

ENV_USER = "QSDK_USER"
SANDBOX_DIR = qnames.SANDBOX_DIR
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def user_name(user: str | None = None) -> str:
    """The sandbox owner: ``user``, else ``$QSDK_USER``, else the login name."""
    raw = user or os.environ.get(ENV_USER) or _login()
    name = _SAFE.sub("_", raw).strip("._")
    if not name:
        raise ConfigError(f"cannot derive a sandbox name from user {raw!r}: set {ENV_USER}=yourname")
    return name


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "user"


def sandbox_root(lakehouse_root: str | Path | storage.ObjectPath, user: str | None = None) -> storage.Location:
    """``<lakehouse>/_sandbox/<user>``: the lakehouse root of ``user``'s interactive writes."""
    return storage.location(lakehouse_root) / SANDBOX_DIR / user_name(user)


def promote(
    table: str,
    *,
    lakehouse_root: str | Path | storage.ObjectPath,
    specs: Mapping[str, TableSpec],
    mode: WriteMode = "append",
    predicate: str | None = None,
    version: int | None = None,
    user: str | None = None,
) -> int:
    """Copy sandbox ``table`` (its latest version, or ``version``) into the production table
    under ``lakehouse_root``, whose contracts are ``specs`` (``QuantSDK.promote`` passes the
    registry's; ``qsdk.promote`` is that method).

    The rows go through :meth:`Lakehouse.write` exactly like a stage's commit: the registry's
    contract (columns, types, primary key for ``append``/``merge``) is checked, and ``mode`` /
    ``predicate`` mean the same. Returns the production version written; the commit metadata
    records the sandbox it came from.
    """
    production = Lakehouse(lakehouse_root, specs)
    production.spec(table)  # an undeclared table is refused before anything is read
    sandbox = Lakehouse(sandbox_root(lakehouse_root, user), specs)
    if not sandbox.exists(table):
        raise LakehouseError(
            f"sandbox of {user_name(user)!r} has no table {table!r} (looked in {sandbox.path(table)}): "
            f"write it first with qsdk.write_table after `%qsdk stage NAME`",
            table=table,
        )
    source_version = sandbox.version(table) if version is None else version
    data = sandbox.read(table, version=source_version)
    meta: dict[str, Any] = {
        qnames.RUN_ID: f"promote-{user_name(user)}",
        qnames.STAGE: "<promote>",
        "qsdk.promoted_from": str(sandbox.path(table)),
        "qsdk.sandbox_version": source_version,
        "qsdk.user": user_name(user),
    }
    _enforce_checks(production, table, data, mode=mode, predicate=predicate, run_id=meta["qsdk.run_id"],
                    stage="<promote>", source="promote")
    return production.write(table, data, mode=mode, predicate=predicate, metadata=meta)


def _enforce_checks(lake: Lakehouse, table: str, data: Any, *, mode: WriteMode, predicate: str | None,
                    run_id: str, stage: str, source: str) -> Any:
    """The table's declared data checks, as a stage's commit runs them: results recorded in
    ``lake``'s ``qsdk.checks``; a failed ``error`` check raises CheckFailed (nothing written), a
    failed ``warn`` check is printed. Returns ``data`` conformed to the contract."""
    from qsdk.lakehouse import check_results, checks
    from qsdk.lakehouse.contract import conform

    spec = lake.spec(table)
    rows = conform(data, spec)
    results = checks.check_write(lake, table, rows, mode=mode, predicate=predicate)
    check_results.record(lake.root, results, run_id=run_id, stage=stage, partition=None, source=source)
    checks.raise_for(results)
    for result in results:
        if not result.passed:
            print(f"qsdk: warning: {checks.describe(result)}")
    return rows


def write_interactive(context: StageContext, table: str, data: Any, *, mode: WriteMode,
                      predicate: str | None) -> int:
    """``write_table`` in an interactive session (``context.extra["interactive"]``): commit to the
    user's sandbox; later reads of ``table`` in this session see the sandbox table."""
    root = storage.location(context.extra.get("sandbox") or sandbox_root(context.lakehouse_root, context.extra.get("user")))
    specs = {n: TableSpec.from_dict(s) for n, s in context.tables.items()}
    lake = Lakehouse(root, specs)
    data = _enforce_checks(lake, table, data, mode=mode, predicate=predicate, run_id=context.run_id,
                           stage=context.stage, source="sandbox")
    version = lake.write(
        table, data, mode=mode, predicate=predicate,
        metadata={qnames.STAGE: context.stage, qnames.RUN_ID: context.run_id, "qsdk.sandbox": "true"},
    )
    context.read_roots[table] = str(root)
    context.pinned_versions.pop(table, None)  # the next read sees what was just written
    return version
