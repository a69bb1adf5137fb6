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
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class

from qsdk.errors import ParameterError
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
        exploration = _sdk().explore(args.name, _params(args.param))
        self._shell.push(exploration.parameters)
        print(f"qsdk: {exploration.describe()}")

    def _unstage(self, args: argparse.Namespace) -> None:
        if _in_flow_run("%qsdk unstage"):
            return
        from qsdk.sdk import QuantSDK

        left = QuantSDK.unexplore()
        print(f"qsdk: left stage {left!r}" if left else "qsdk: no active stage")

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
        """:meth:`QuantSDK.sql <qsdk.sdk.QuantSDK.sql>` with ``$name`` bound from the namespace."""
        try:
            return _sdk().sql(query, self._shell.user_ns)
        except ParameterError as exc:  # a $name the namespace lacks
            raise UsageError(str(exc)) from None


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


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(QsdkMagics)


def unload_ipython_extension(ipython: Any) -> None:
    ctx = runtime.current()
    if ctx is not None and ctx.extra.get("interactive"):
        runtime.activate(None)
