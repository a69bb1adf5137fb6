"""IPython magics: explore under a stage's contract, query the lakehouse with SQL.

``%load_ext qsdk`` registers one magic, ``%qsdk`` (line) / ``%%qsdk`` (cell)::

    %qsdk stage NAME [-p key=value ...]   parameters into the namespace + the stage's contract
    %qsdk unstage                         leave the stage (reads are unrestricted again)
    %qsdk read TABLE [--version N] [--columns a,b]
    %qsdk tables | %qsdk flows           frames describing the lakehouse and the registry
    %qsdk promote TABLE [--mode append|overwrite|merge]
    %%qsdk sql [-o NAME]                  DuckDB over the lakehouse tables it names, returns a frame

A stage notebook may start with ``%load_ext qsdk`` and ``%qsdk stage NAME`` for exploration:
in a flow run those lines change nothing (the run's context and injected parameters stand).
``%qsdk stage`` validates the parameters with the same code as a run (``Stage.resolve``) and
activates a :class:`~qsdk.execution.context.StageContext` marked interactive: reads are limited to the
stage's declared tables (as in a run), and ``write_table`` commits at once, but to the user's
sandbox (:mod:`qsdk.lakehouse.sandbox`), never to production; ``qsdk.promote`` publishes a sandbox table.
In SQL, a table ``layer.name`` is visible as ``layer_name``, ``layer.name`` and
``"layer.name"``; ``$name`` is bound to the namespace variable ``name`` (e.g. a stage
parameter). Tables are read through :class:`~qsdk.DataLoader`, so the active stage's contract
applies to SQL too, and DuckDB's access to files and extensions is off (see ``QsdkMagics.sql``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class

from qsdk.errors import ParameterError, SqlAccessDenied
from qsdk.execution import context as runtime
from qsdk.lakehouse import sandbox

_USAGE = "%qsdk stage|unstage|read|tables|flows|promote ...  or  %%qsdk sql"


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as a :class:`UsageError` instead of exiting the kernel."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise UsageError(message or self.format_help())


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="%qsdk", description=__doc__, add_help=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    stage = sub.add_parser("stage", help="explore as stage NAME")
    stage.add_argument("name", nargs="?")
    stage.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("unstage", help="leave the active stage")
    read = sub.add_parser("read", help="a table as a pandas frame")
    read.add_argument("table")
    read.add_argument("--version", type=int)
    read.add_argument("--columns", help="comma-separated column names")
    sub.add_parser("tables", help="lakehouse tables: version, rows, sandbox version")
    sub.add_parser("flows", help="flows of the registry")
    promote = sub.add_parser("promote", help="copy a sandbox table into production")
    promote.add_argument("table")
    promote.add_argument("--mode", choices=["append", "overwrite", "merge"], default="append")
    sql = sub.add_parser("sql", help="(cell magic) SQL over lakehouse tables")
    sql.add_argument("-o", "--out", metavar="NAME", help="also store the frame in this variable")
    return parser


def _params(pairs: list[str]) -> dict[str, str]:
    from qsdk.model.params import parse_pairs

    try:
        return parse_pairs(pairs)
    except ParameterError as exc:
        raise UsageError(str(exc)) from None


def _sdk():
    from qsdk.sdk import QuantSDK

    return QuantSDK()


@magics_class
class QsdkMagics(Magics):
    @property
    def _shell(self) -> InteractiveShell:
        if self.shell is None:  # IPython sets it on registration; magics only run registered
            raise UsageError("qsdk magics are not registered with an IPython shell: run %load_ext qsdk")
        return self.shell

    @line_cell_magic
    def qsdk(self, line: str, cell: str | None = None) -> Any:
        args = _parser().parse_args(shlex.split(line))
        if cell is not None and args.command != "sql":
            raise UsageError(f"%%qsdk cell magic supports only `sql` (got {args.command!r}); usage: {_USAGE}")
        if args.command == "sql":
            if cell is None:
                raise UsageError("sql is a cell magic: put the query in a cell that starts with %%qsdk sql")
            frame = self.sql(cell)
            if args.out:
                self._shell.push({args.out: frame})
            return frame
        return getattr(self, f"_{args.command}")(args)

    # ------------------------------------------------------------ stage
    def _stage(self, args: argparse.Namespace) -> None:
        if args.name is None:
            ctx = runtime.current()
            print(f"qsdk: active stage: {ctx.stage!r}" if ctx else "qsdk: no active stage")
            return
        if _in_flow_run(f"%qsdk stage {args.name}"):
            return
        sdk = _sdk()
        stage = sdk.registry.stage(args.name)
        values = stage.resolve(_params(args.param))  # the same validation as a run
        user = sandbox.user_name()
        root = sandbox.sandbox_root(sdk.config.lakehouse_root, user)
        from qsdk.lakehouse.tables import Lakehouse

        mine = Lakehouse(root)
        context = runtime.new_context(
            sdk.registry,
            run_id=f"interactive-{user}",
            stage=stage.name,
            lakehouse_root=sdk.config.lakehouse_root,
            inputs=stage.inputs,
            outputs=stage.outputs,
            staging_dir=None,
            # outputs already in the sandbox are read from there: the session sees its own writes
            read_roots={t: str(root) for t in stage.outputs if mine.exists(t)},
            extra={"interactive": True, "sandbox": str(root), "user": user},
        )
        runtime.activate(context)
        self._shell.push(values)
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "(none)"
        print(f"qsdk: exploring stage {stage.name!r}: reads {', '.join(context.allowed_reads) or 'nothing'}; "
              f"writes {', '.join(stage.outputs) or 'nothing'} to the sandbox {root}\n"
              f"parameters: {shown}")

    def _unstage(self, args: argparse.Namespace) -> None:
        if _in_flow_run("%qsdk unstage"):
            return
        ctx = runtime.current()
        runtime.activate(None)
        print(f"qsdk: left stage {ctx.stage!r}" if ctx else "qsdk: no active stage")

    # ------------------------------------------------------------ reads
    def _read(self, args: argparse.Namespace):
        from qsdk.lakehouse.loader import DataLoader

        columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
        return DataLoader().read(args.table, columns=columns, version=args.version)

    def _tables(self, args: argparse.Namespace):
        import pandas as pd

        from qsdk.lakehouse.tables import Lakehouse

        sdk = _sdk()
        mine = Lakehouse(sandbox.sandbox_root(sdk.config.lakehouse_root), sdk.registry.tables)
        ctx = runtime.current()
        rows = []
        for info in sdk.tables():
            row = {**info.to_dict(), "sandbox_version": None if info.broken else mine.version(info.name)}
            if ctx is not None:
                row["access"] = ("write" if info.name in ctx.outputs
                                 else "read" if info.name in ctx.inputs else "-")
            rows.append(row)
        return pd.DataFrame(rows, columns=["name", "version", "rows", "sandbox_version",
                                           *(["access"] if ctx else []), "path", "broken"])

    def _flows(self, args: argparse.Namespace):
        import pandas as pd

        registry = _sdk().registry
        rows = [{"flow": flow.name, "stages": " -> ".join(flow.order()),
                 "parameters": ", ".join(p.name for p in flow.parameters()),
                 "description": flow.description}
                for flow in registry.flows.values()]
        return pd.DataFrame(rows, columns=["flow", "stages", "parameters", "description"])

    def _promote(self, args: argparse.Namespace) -> None:
        version = _sdk().promote(args.table, mode=args.mode)
        print(f"qsdk: promoted sandbox table {args.table!r} to production version {version}")

    # ------------------------------------------------------------ SQL
    def sql(self, query: str):
        """Run ``query`` with DuckDB over the lakehouse tables it names; a pandas frame.

        The tables are read through :class:`~qsdk.DataLoader` (the active stage's contract
        applies) and registered; then DuckDB's external access is switched off and its
        configuration locked, so the query sees exactly those tables: file functions
        (``read_parquet``, ``glob``, ...), ``COPY``, ``ATTACH``/``EXPORT`` to a path and
        ``INSTALL``/``LOAD`` are refused with :class:`~qsdk.errors.SqlAccessDenied`.
        """
        import duckdb

        from qsdk.lakehouse.loader import DataLoader

        loader = DataLoader()
        known = set(_sdk().registry.tables) | set(loader.lakehouse.list_tables())
        con = duckdb.connect()
        try:
            for table in sorted(t for t in known if _mentions(query, t)):
                data = loader.read_arrow(table)  # the active stage's contract applies here too
                layer, name = table.split(".", 1)
                flat = f"{layer}_{name}"
                con.register(flat, data)
                con.register(table, data)  # "layer.name"
                con.execute(f'CREATE SCHEMA IF NOT EXISTS "{layer}"')
                con.execute(f'CREATE OR REPLACE VIEW "{layer}"."{name}" AS SELECT * FROM "{flat}"')
            con.execute("SET enable_external_access = false")  # no files, extensions, Python scans
            con.execute("SET lock_configuration = true")  # ... and no SET to turn it back on
            names = set(re.findall(r"(?<![\w$])\$([A-Za-z_]\w*)", query))
            missing = sorted(n for n in names if n not in self._shell.user_ns)
            if missing:
                raise UsageError(f"SQL uses ${', $'.join(missing)} but no such variable is defined")
            bound = {n: self._shell.user_ns[n] for n in names}
            try:
                return (con.execute(query, bound) if bound else con.execute(query)).df()
            except (duckdb.PermissionException, duckdb.InvalidInputException) as exc:
                if isinstance(exc, duckdb.InvalidInputException) and "configuration has been locked" not in str(exc):
                    raise
                raise _access_denied(exc) from exc
        finally:
            con.close()


def _access_denied(exc: Exception) -> SqlAccessDenied:
    detail = _first_line(str(exc))
    return SqlAccessDenied(
        "%%qsdk sql sees only the lakehouse tables the query names (as layer_name, layer.name or "
        '"layer.name"): files, COPY, ATTACH/EXPORT to a path, INSTALL/LOAD and settings are off. '
        "Name the table instead of its files; to write, put the frame (-o NAME) through "
        f"qsdk.write_table. DuckDB said: {detail}",
        detail=detail,
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _in_flow_run(what: str) -> bool:
    """Inside a flow run (the executor set the context, papermill injected the parameters) the
    run's context and parameters stand: the stage magics change nothing, so a notebook that
    uses them interactively behaves in a run exactly like any stage notebook."""
    ctx = runtime.current()
    if ctx is None or ctx.extra.get("interactive") or not os.environ.get(runtime.ENV_CONTEXT):
        return False
    print(f"qsdk: running as stage {ctx.stage!r} of run {ctx.run_id}: {what} leaves the run's "
          "parameters and contract in place")
    return True


def _mentions(query: str, table: str) -> bool:
    layer, name = table.split(".", 1)
    pattern = rf'(?<![\w"]){layer}_{name}(?!\w)|(?<![\w"]){layer}\s*\.\s*{name}(?!\w)|"{layer}\.{name}"'
    return re.search(pattern, query, flags=re.IGNORECASE) is not None


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(QsdkMagics)


def unload_ipython_extension(ipython: Any) -> None:
    ctx = runtime.current()
    if ctx is not None and ctx.extra.get("interactive"):
        runtime.activate(None)
