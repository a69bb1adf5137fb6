"""``qsdk`` command line: parse arguments, call one public function, print the answer.

Exit codes: 0 success; 1 a flow ran and failed; 2 bad input (unknown flow, bad parameter,
invalid registry) detected before anything ran. Errors print one line, no traceback unless
``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from qsdk.errors import FlowFailed, QsdkError


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise QsdkError(f"parameter {pair!r} is not KEY=VALUE (for example -p start=2010-01-01)")
        out[key.strip()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsdk", description="Jupyter-first pipelines for quant research")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--project", help="project root (default: the folder with pipelines/ at or above here)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a flow")
    run.add_argument("flow")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a parameter for every stage that declares KEY, or STAGE.KEY=VALUE for one")
    run.add_argument("--executor", default="local", help="local (default) or ray")
    run.add_argument("--only", action="append", default=[], metavar="STAGE", help="run only this stage")
    run.add_argument("--from", dest="from_", action="append", default=[], metavar="STAGE",
                     help="run this stage and everything downstream of it")
    run.add_argument("--json", action="store_true", help="print one JSON object with the run's result")

    sub.add_parser("list", help="list flows and their stages").add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="show a flow's stages, tables and parameters")
    show.add_argument("flow")
    show.add_argument("--json", action="store_true")
    tables = sub.add_parser("tables", help="list lakehouse tables with version and row count")
    tables.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except FlowFailed as exc:
        print(f"qsdk: {exc}", file=sys.stderr)
        return 1
    except QsdkError as exc:
        if args.debug:
            raise
        print(f"qsdk: error: {exc}", file=sys.stderr)
        return 2


def _sdk(args: argparse.Namespace):
    from qsdk.sdk import QuantSDK

    return QuantSDK(args.project)


def _dispatch(args: argparse.Namespace) -> int:
    handler = {"run": _run, "list": _list, "show": _show, "tables": _tables}[args.command]
    return handler(args)


def _run(args: argparse.Namespace) -> int:
    from qsdk.progress import ConsoleProgress

    sdk = _sdk(args)
    hooks = [] if args.json else [ConsoleProgress()]
    result = sdk.run_pipeline(args.flow, params=_parse_params(args.param), executor=args.executor,
                              only=args.only, from_=args.from_, hooks=hooks, raise_on_failure=False)
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
    if result.status != "succeeded":
        first = result.failures[0].error if result.failures else "see the run manifest"
        print(f"qsdk: flow {args.flow!r} failed: {first}", file=sys.stderr)
        return 1
    return 0


def _list(args: argparse.Namespace) -> int:
    reg = _sdk(args).registry
    rows = [{"flow": f.name, "stages": list(f.order()), "description": f.description} for f in reg.flows.values()]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['flow']:<16} {' -> '.join(row['stages'])}")
    return 0


def _show(args: argparse.Namespace) -> int:
    reg = _sdk(args).registry
    flow = reg.flow(args.flow)
    deps = flow.dependencies()
    info: dict[str, Any] = {
        "flow": flow.name,
        "description": flow.description,
        "order": flow.order(),
        "stages": {s.name: {**s.describe(), "after": sorted(deps[s.name])} for s in flow.stages},
    }
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"flow {flow.name}: {flow.description}")
    for name in info["order"]:
        stage = info["stages"][name]
        part = f" (partitioned by {stage['partition']})" if stage["partition"] else ""
        print(f"  {name}{part}")
        print(f"    after:   {', '.join(stage['after']) or '-'}")
        print(f"    reads:   {', '.join(stage['inputs']) or '-'}")
        print(f"    writes:  {', '.join(stage['outputs']) or '-'}")
        params = ", ".join(
            f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']!r}")
            for p in stage["parameters"].values()
        )
        print(f"    params:  {params or '-'}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    infos = _sdk(args).tables()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos]))
        return 0
    for i in infos:
        version = "-" if i.version is None else i.version
        rows = "-" if i.rows is None else i.rows
        print(f"{i.name:<28} version {version!s:<6} rows {rows}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
