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

from qsdk.config import DEFAULT_EXECUTOR
from qsdk.errors import FlowFailed, ParameterError, QsdkError


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    from qsdk.model.params import parse_pairs

    return parse_pairs(list(pairs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsdk", description="Jupyter-first pipelines for quant research")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--project", help="project root (default: the folder with pipelines/ at or above here)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a flow")
    run.add_argument("flow")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a parameter for every stage that declares KEY, or STAGE.KEY=VALUE for one")
    run.add_argument("--executor", default=DEFAULT_EXECUTOR,
                     help=f"local (sequential, in this process) or ray (partitions in parallel); "
                          f"default: {DEFAULT_EXECUTOR}")
    run.add_argument("--ray-address", metavar="ADDR",
                     help="join this Ray cluster (default: $RAY_ADDRESS, else this project's long-lived "
                          "local Ray head, started on first use); 'embedded': a throw-away Ray for this run")
    run.add_argument("--only", action="append", default=[], metavar="STAGE", help="run only this stage")
    run.add_argument("--from", dest="from_", action="append", default=[], metavar="STAGE",
                     help="run this stage and everything downstream of it")
    run.add_argument("--json", action="store_true", help="print one JSON object with the run's result")
    run.add_argument("--force", nargs="?", const="*", action="append", default=[], metavar="STAGE",
                     help="re-run even when cached: every stage, or only STAGE (repeatable)")
    run.add_argument("--no-cache", dest="cache", action="store_false",
                     help="neither skip cached tasks nor record new ones")
    run.add_argument("--no-track", dest="track", action="store_false",
                     help="do not record the run in MLflow (default: MLFLOW_TRACKING_URI or ./mlflow.db)")

    sub.add_parser("list", help="list flows and their stages").add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="show a flow's stages, tables and parameters, or draw it")
    show.add_argument("flow")
    show.add_argument("--json", action="store_true")
    _add_picture_options(show)
    _add_check(sub)
    _add_runs(sub)
    _add_import_script(sub)
    _add_checks(sub)
    status = sub.add_parser("status", help="per stage and partition: cached, stale (and why), or never run")
    status.add_argument("flow")
    status.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    status.add_argument("--json", action="store_true")
    tables = sub.add_parser("tables", help="list lakehouse tables with version and row count")
    tables.add_argument("--json", action="store_true")
    restore = sub.add_parser("restore", help="make a table hold what it held at an earlier version "
                             "(a new Delta version; e.g. to undo a commit a notebook made around qsdk)")
    restore.add_argument("table")
    restore.add_argument("--version", type=int, required=True, help="the version to go back to")
    restore.add_argument("--reason", help="why (recorded in the commit metadata)")
    features = sub.add_parser("features", help="list feature views: table, times, ttl, features")
    features.add_argument("--json", action="store_true")
    lineage = sub.add_parser("lineage", help="which run and stage wrote a table version, from which inputs")
    lineage.add_argument("table")
    lineage.add_argument("--version", type=int, help="table version (default: the latest)")
    lineage.add_argument("--json", action="store_true")
    repro = sub.add_parser("reproduce", help="re-run a tracked run on its recorded input versions and compare")
    repro.add_argument("run_id", metavar="RUN_ID",
                       help="a qsdk run id (as `qsdk run` prints it; `qsdk runs` lists them), RUN_ID:STAGE, "
                            "RUN_ID:STAGE:PARTITION, or the MLflow run id of a flow, stage or partition run")
    repro.add_argument("--check", action="store_true", help="exit 1 when an output differs")
    repro.add_argument("--executor", default=DEFAULT_EXECUTOR, help=f"local or ray; default: {DEFAULT_EXECUTOR}")
    repro.add_argument("--json", action="store_true")
    _add_versioning(sub)
    _add_ray(sub)
    _add_tracker(sub)
    return parser


def _add_ray(sub: Any) -> None:
    ray = sub.add_parser("ray", help="this project's long-lived local Ray head (started by the first run on "
                                     "Ray, stopped after $QSDK_RAY_IDLE_TIMEOUT seconds idle)")
    ray_sub = ray.add_subparsers(dest="ray_command", required=True)
    ray_sub.add_parser("status", help="is the head up: address, pid, idle timeout").add_argument(
        "--json", action="store_true")
    ray_sub.add_parser("stop", help="stop the head and its Ray processes")


def _ray(args: argparse.Namespace) -> int:
    """``qsdk ray status|stop``: exit 0; ``status`` exits 1 when no head runs."""
    import time

    from qsdk.config import Config
    from qsdk.execution.executors import rayhead

    root = Config.load(args.project).project_root
    if args.ray_command == "stop":
        stopped = rayhead.stop(root)
        print(f"stopped the Ray head at {stopped.address} (pid {stopped.pid})" if stopped
              else f"no Ray head runs for {root}")
        return 0
    info = rayhead.status(root)
    if args.json:
        print(json.dumps(info.to_dict() if info else None))
    elif info is None:
        print(f"no Ray head runs for {root}; the next `qsdk run` on Ray starts one")
    else:
        print(f"Ray head {info.address} (pid {info.pid}, {info.num_cpus} CPUs), up {time.time() - info.started:.0f} s, "
              f"stops after {info.idle_timeout:g} s without a run; state in {rayhead.state_dir(root)}")
    return 0 if info else 1


def _add_tracker(sub: Any) -> None:
    tracker = sub.add_parser("tracker", help="the long-lived tracking agent (started by the first tracked run, "
                                             "stopped after $QSDK_TRACKER_IDLE_TIMEOUT seconds idle)")
    tracker_sub = tracker.add_subparsers(dest="tracker_command", required=True)
    tracker_sub.add_parser("status", help="which agents run: pid, idle timeout, socket").add_argument(
        "--json", action="store_true")
    tracker_sub.add_parser("stop", help="stop the agent that serves this environment").add_argument(
        "--all", action="store_true", help="every tracking agent of this user, whatever its environment")


def _tracker(args: argparse.Namespace) -> int:
    """``qsdk tracker status|stop``: exit 0; ``status`` exits 1 when no agent serves this environment."""
    import time

    from qsdk.integrations import tracking_agent

    agents = tracking_agent.running()
    mine = tracking_agent.key()
    if args.tracker_command == "stop":
        agents = agents if args.all else [info for info in agents if info.key == mine]
        for info in agents:
            tracking_agent.stop(info.key)
            print(f"stopped the tracking agent {info.key} (pid {info.pid})")
        if not agents:
            print("no tracking agent runs" + ("" if args.all else " for this environment"))
        return 0
    if args.json:
        print(json.dumps([{**info.to_dict(), "this_environment": info.key == mine} for info in agents]))
    elif all(info.key != mine for info in agents):
        print(f"no tracking agent serves this environment; the next tracked run starts one "
              f"(${tracking_agent.ENV_MODE}=process: a helper per run instead)")
    for info in [] if args.json else agents:
        print(f"tracking agent {info.key} (pid {info.pid}){' serves this environment' if info.key == mine else ''}, "
              f"up {time.time() - info.started:.0f} s, stops after {info.idle_timeout:g} s without a run; "
              f"socket {info.socket}")
    return 0 if any(info.key == mine for info in agents) else 1


def _add_picture_options(show: Any) -> None:
    show.add_argument("--format", choices=("text", "mermaid", "svg", "png"), default="text",
                      help="text (default), or draw the DAG of stages and tables: mermaid or svg "
                           "(to stdout, or -o FILE), png (-o FILE, default FLOW.png)")
    show.add_argument("-o", "--output", metavar="FILE", help="write the picture to FILE")
    show.add_argument("--run", metavar="RUN_ID", help="colour stages by how this run went "
                                                      "(default: by `qsdk status`)")
    show.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                      help="parameters for the status the stages are coloured by")


def _add_check(sub: Any) -> None:
    check = sub.add_parser("check", help="validate the registry and every stage notebook; print every problem "
                                         "(exit 1 if any)")
    check.add_argument("--json", action="store_true")


def _add_import_script(sub: Any) -> None:
    imp = sub.add_parser("import-script", help="turn a legacy Python script into a stage: notebook, parameters, "
                                               "registry entry and tables (reads the script, never runs it)")
    imp.add_argument("path", help="the script")
    imp.add_argument("--stage", required=True, help="name of the new stage")
    imp.add_argument("--flow", help="add the stage to this flow (created when missing)")
    imp.add_argument("--registry", metavar="FILE", help="registry file for the entry (default: the flow's file, "
                                                        "else pipelines/<flow or stage>.yaml)")
    imp.add_argument("--layer", default="silver", help="layer of the tables proposed for files the script writes")
    imp.add_argument("--script-cwd", metavar="DIR", help="folder the script's relative paths start from "
                                                         "(default: the project root)")
    imp.add_argument("--pair", action="store_true", help="also write a percent-format .py paired with the "
                                                         "notebook (jupytext), for reviews")
    imp.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _add_checks(sub: Any) -> None:
    checks = sub.add_parser("checks", help="latest data check results, or evaluate a table's checks now")
    checks.add_argument("table", nargs="?", help="layer.name (default: every table)")
    checks.add_argument("--run", action="store_true",
                        help="evaluate TABLE's declared checks against the table as it is now")
    checks.add_argument("--json", action="store_true")


def _checks(args: argparse.Namespace) -> int:
    """``qsdk checks [TABLE] [--run]``: exit 1 when a shown ``error`` check failed."""
    sdk = _sdk(args)
    if args.run:
        if not args.table:
            raise ParameterError("qsdk checks --run needs a TABLE (layer.name)")
        rows = [r.to_dict() for r in sdk.run_checks(args.table)]
    else:
        rows = sdk.check_results(args.table)
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        if not rows:
            print("no check results yet: run a flow, or qsdk checks TABLE --run")
        for r in rows:
            state = "pass" if r["passed"] else ("FAIL" if r["severity"] == "error" else "warn")
            print(f"{state:<5} {r['table']:<28} {r['check']:<40} {_check_detail(r)}")
    return 1 if any(not r["passed"] and r["severity"] == "error" for r in rows) else 0


def _check_detail(r: dict[str, Any]) -> str:
    """A result of ``latest`` (summed over partitions) or of ``--run`` (one evaluation)."""
    if "partitions" not in r:
        return r["message"]
    where = f"{r['rows']} row(s) in {r['partitions']} partition(s)"
    detail = where if r["passed"] else f"{r['failing_rows']} failing, {where}; latest failure: {r['message']}"
    return f"{detail}  [{r['run_id']} {r['checked_at']:%Y-%m-%d %H:%M}]"


def _add_runs(sub: Any) -> None:
    runs = sub.add_parser("runs", help="recent runs: id, flow, status, start, duration, MLflow run id")
    runs.add_argument("flow", nargs="?", help="only this flow's runs")
    runs.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20, newest first)")
    runs.add_argument("--json", action="store_true")


def _add_versioning(sub: Any) -> None:
    dvc = sub.add_parser("dvc", help="dvc.yaml in step with the registry").add_subparsers(
        dest="dvc_command", required=True)
    sync = dvc.add_parser("sync", help="write dvc.yaml (and seed params.yaml) from pipelines/")
    sync.add_argument("--check", action="store_true", help="write nothing; exit 1 when out of step")
    dvc_run = dvc.add_parser("run", help="run one stage of a flow and write its DVC marker (dvc.yaml's cmd)")
    dvc_run.add_argument("flow")
    dvc_run.add_argument("stage")
    dvc_run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    dvc_run.add_argument("--no-track", dest="track", action="store_false", help="do not record in MLflow")
    snap = sub.add_parser("snapshot", help="golden snapshots of tables, tracked by DVC").add_subparsers(
        dest="snapshot_command", required=True)
    create = snap.add_parser("create", help="freeze tables (default: all that exist) into snapshots/NAME")
    create.add_argument("name")
    create.add_argument("tables", nargs="*", metavar="TABLE")
    create.add_argument("--no-push", dest="push", action="store_false", help="do not dvc push")
    create.add_argument("--json", action="store_true")
    snap.add_parser("list", help="snapshots with their tables, versions and DVC hash").add_argument(
        "--json", action="store_true")
    restore = snap.add_parser("restore", help="write a snapshot's rows back (as new Delta versions)")
    restore.add_argument("name")
    restore.add_argument("tables", nargs="*", metavar="TABLE")
    restore.add_argument("--force", action="store_true", help="also overwrite tables changed since the snapshot")
    restore.add_argument("--json", action="store_true")
    diff = snap.add_parser("diff", help="row counts and schema per table between two snapshots")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, so that a closed pipe surfaces below and not at exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except FlowFailed as exc:
        print(f"qsdk: {exc}", file=sys.stderr)
        return 1
    except QsdkError as exc:
        if args.debug:
            raise
        print(f"qsdk: error: {exc}", file=sys.stderr)
        return 2


def _closed_pipe() -> int:
    """The reader went away (``qsdk tables --json | head``): stop quietly, as ``cat`` does.

    stdout is pointed at /dev/null so the interpreter's final flush cannot raise again; the
    exit code is what a process killed by SIGPIPE reports (128 + 13).
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _sdk(args: argparse.Namespace):
    from qsdk.sdk import QuantSDK

    return QuantSDK(args.project)


def _dispatch(args: argparse.Namespace) -> int:
    handler = {"run": _run, "list": _list, "show": _show, "tables": _tables, "lineage": _lineage,
               "reproduce": _reproduce, "status": _status, "dvc": _dvc, "snapshot": _snapshot,
               "features": _features, "restore": _restore, "check": _check,
               "runs": _runs, "import-script": _import_script, "checks": _checks, "ray": _ray,
               "tracker": _tracker}[args.command]
    return handler(args)


def _run(args: argparse.Namespace) -> int:
    from qsdk.integrations.progress import ConsoleProgress

    sdk = _sdk(args)
    hooks = [] if args.json else [ConsoleProgress()]
    params = _parse_params(args.param)
    snapshot = params.pop("snapshot", "").strip() or None  # -p snapshot=NAME: a run option, not a stage's
    result = sdk.run_pipeline(args.flow, params=params, executor=args.executor, snapshot=snapshot,
                              ray_address=args.ray_address, only=args.only, from_=args.from_, hooks=hooks,
                              raise_on_failure=False,
                              cache=args.cache, force=True if "*" in args.force else args.force,
                              track=args.track)
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
    if result.status != "succeeded":
        first = result.failures[0].error if result.failures else "see the run manifest"
        print(f"qsdk: flow {args.flow!r} failed: {first}", file=sys.stderr)
        return 1
    return 0


def _list(args: argparse.Namespace) -> int:
    reg = _sdk(args).registry
    rows: list[dict[str, Any]] = [{"flow": f.name, "stages": list(f.order()), "description": f.description}
                                  for f in reg.flows.values()]
    rows += [{"flow": p.name, "stages": list(p.stages), "description": "", "broken": p.message}
             for p in reg.problems if p.kind == "flow"]
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        if "broken" in row:
            print(f"{row['flow']:<16} BROKEN: {row['broken']}")
        else:
            print(f"{row['flow']:<16} {' -> '.join(row['stages'])}")
    _problems_hint(reg)
    return 0


def _problems_hint(reg: Any) -> None:
    if reg.problems:
        print(f"qsdk: {len(reg.problems)} problem(s) in the registry; `qsdk check` lists them", file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    problems = _sdk(args).check()
    if args.json:
        print(json.dumps([p.to_dict() for p in problems]))
    elif problems:
        for p in problems:
            print(f"{p.kind} {p.name}: {p.message}")
        print(f"{len(problems)} problem(s)", file=sys.stderr)
    else:
        print("registry OK: every table, stage, flow and feature view loads; no stage notebook reads or "
              "writes files directly, imports a script or changes sys.path")
    return 1 if problems else 0


def _import_script(args: argparse.Namespace) -> int:
    report = _sdk(args).import_script(args.path, stage=args.stage, flow=args.flow, registry_file=args.registry,
                                      layer=args.layer, script_cwd=args.script_cwd, pair=args.pair)
    print(json.dumps(report.to_dict(), default=str) if args.json else report.summary())
    return 0


def _runs(args: argparse.Namespace) -> int:
    runs = _sdk(args).runs(flow=args.flow, limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs]))
        return 0
    print(f"{'run id':<24} {'flow':<12} {'status':<10} {'started (UTC)':<20} {'duration':>9}  mlflow run id")
    for r in runs:
        took = "-" if r.duration_s is None else f"{r.duration_s:.1f}s"
        print(f"{r.run_id:<24} {r.flow:<12} {r.status:<10} {r.started[:19].replace('T', ' '):<20} {took:>9}  "
              f"{r.mlflow_run_id or '-'}")
    if not runs:
        print("(no runs yet: `qsdk run FLOW` starts one)")
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.format != "text":
        return _picture(args)
    reg = _sdk(args).registry
    broken = reg.problem("flow", args.flow)
    if broken is not None:
        return _show_broken(reg, broken, as_json=args.json)
    flow = reg.flow(args.flow)
    deps = flow.dependencies()
    info: dict[str, Any] = {
        "flow": flow.name,
        "description": flow.description,
        "order": flow.order(),
        "parameters": [p.to_dict() for p in flow.parameters()],
        "stages": {s.name: {**s.describe(), "after": sorted(deps[s.name])} for s in flow.stages},
    }
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"flow {flow.name}: {flow.description}")
    print("  takes: " + (", ".join(_flow_param(p) for p in info["parameters"]) or "-"))
    for name in info["order"]:
        _print_stage(info["stages"][name])
    return 0


def _picture(args: argparse.Namespace) -> int:
    from qsdk import graph as G
    from qsdk.errors import ParameterError

    sdk = _sdk(args)
    try:
        graph = sdk.graph(args.flow, params=_parse_params(args.param), run_id=args.run)
    except ParameterError as exc:  # e.g. daily without -p date=...: draw it, uncoloured
        print(f"qsdk: stages not coloured: {exc}", file=sys.stderr)
        graph = sdk.graph(args.flow, states=False)
    if args.format == "png":
        out = G.to_png(graph, args.output or f"{args.flow}.png")
        print(f"wrote {out}")
        return 0
    text = G.to_mermaid(graph) if args.format == "mermaid" else G.to_svg(graph)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _flow_param(p: dict[str, Any]) -> str:
    """``-p`` NAME: TYPE [= default] for ``qsdk show``."""
    return f"{p['name']}: {p['type']}" + ("" if p["required"] or p["default"] is None else f" = {p['default']!r}")


def _print_stage(stage: dict[str, Any]) -> None:
    part = f" (partitioned by {stage['partition']})" if stage["partition"] else ""
    print(f"  {stage['name']}{part}")
    print(f"    after:   {', '.join(stage['after']) or '-'}")
    print(f"    reads:   {', '.join(stage['inputs']) or '-'}")
    print(f"    writes:  {', '.join(stage['outputs']) or '-'}")
    params = ", ".join(
        f"{p['name']}: {p['type']}" + (f" = <computed: {p['computed']}>" if p.get("computed") else
                                      "" if p["required"] else f" = {p['default']!r}")
        for p in stage["parameters"].values()
    )
    print(f"    params:  {params or '-'}")


def _show_broken(reg: Any, broken: Any, *, as_json: bool) -> int:
    """A broken flow: its error, then each declared stage, the broken ones with theirs."""
    stages: dict[str, Any] = {}
    for name in broken.stages:
        problem = reg.problem("stage", name)
        stages[name] = ({"name": name, "broken": problem.message} if problem is not None else
                        {**reg.stages[name].describe(), "after": []} if name in reg.stages else
                        {"name": name, "broken": "not declared"})
    if as_json:
        print(json.dumps({"flow": broken.name, "broken": broken.message, "stages": stages}, default=str))
        return 0
    print(f"flow {broken.name}: BROKEN: {broken.message}")
    for stage in stages.values():
        if "broken" in stage:
            print(f"  {stage['name']}  BROKEN: {stage['broken']}")
        else:
            _print_stage(stage)
    return 0


def _tables(args: argparse.Namespace) -> int:
    infos = _sdk(args).tables()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos]))
        return 0
    for i in infos:
        if i.broken:
            print(f"{i.name:<28} BROKEN: {i.broken}")
            continue
        version = "-" if i.version is None else i.version
        rows = "-" if i.rows is None else i.rows
        print(f"{i.name:<28} version {version!s:<6} rows {rows}")
    broken = [i.name for i in infos if i.broken]
    if broken:
        print(f"qsdk: {len(broken)} broken table folder(s): {', '.join(broken)}", file=sys.stderr)
    return 0


def _restore(args: argparse.Namespace) -> int:
    sdk = _sdk(args)
    before = sdk.lakehouse.version(args.table)
    new = sdk.restore(args.table, version=args.version, reason=args.reason)
    if new == before:
        print(f"{args.table} is already at version {args.version}: nothing to restore")
    else:
        print(f"restored {args.table} to version {args.version} (as new version {new}; "
              f"`qsdk restore {args.table} --version {before}` undoes this)")
    return 0


def _features(args: argparse.Namespace) -> int:
    from qsdk.model.featurestore import describe

    rows = describe(_sdk(args).registry.features)
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        ttl = f", ttl {row['ttl']}" if row["ttl"] else ""
        print(f"{row['name']:<16} {row['table']:<28} {row['entity']} @ {row['event_time']}, "
              f"known {row['known_time']}{ttl}")
        print(f"{'':<16} {', '.join(row['features'])}")
    return 0


def _status(args: argparse.Namespace) -> int:
    rows = _sdk(args).status(args.flow, params=_parse_params(args.param))
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
        return 0
    for r in rows:
        where = r.stage if r.partition is None else f"{r.stage}[{r.partition}]"
        why = f"  ({'; '.join(r.reasons)})" if r.state == "stale" else ""
        print(f"{r.state:<7} {where}{why}")
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from qsdk.lakehouse.lineage import table_lineage

    lineage = table_lineage(_sdk(args).lakehouse, args.table, version=args.version)
    print(json.dumps(lineage.to_dict()) if args.json else lineage.describe())
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from qsdk.reproduce import reproduce

    sdk = _sdk(args)
    report = reproduce(args.run_id, config=sdk.config, registry=sdk.registry, executor=args.executor)
    print(json.dumps(report.to_dict(), default=str) if args.json else report.describe())
    if report.result.status != "succeeded":
        print(f"qsdk: the reproduction of {args.run_id} failed (run {report.result.run_id})", file=sys.stderr)
        return 1
    if not report.identical:
        print(f"qsdk: the reproduction of {args.run_id} differs from the original", file=sys.stderr)
        return 1 if args.check else 0
    return 0


def _dvc(args: argparse.Namespace) -> int:
    from qsdk.integrations import dvc as versioning

    sdk = _sdk(args)
    if args.dvc_command == "sync" and sdk.registry.problems:  # would silently leave the broken stages out
        from qsdk.errors import RegistryError

        raise RegistryError(f"dvc.yaml is not synced while the registry has {len(sdk.registry.problems)} "
                            f"problem(s): {sdk.registry.problems[0].message} (`qsdk check` lists them)")
    if args.dvc_command == "sync":
        report = versioning.sync(sdk.registry, check=args.check)
        if args.check and not report.in_step:
            print(f"qsdk: {report.describe()}", file=sys.stderr)
            return 1
        print(report.describe() if args.check else f"wrote {', '.join(report.changed) or 'nothing (in step)'}")
        return 0
    from qsdk.integrations.progress import ConsoleProgress

    result = versioning.run_stage(sdk, args.flow, args.stage, params=_parse_params(args.param),
                                  track=args.track, hooks=(ConsoleProgress(),))
    if result.status != "succeeded":
        print(f"qsdk: stage {args.stage!r} of flow {args.flow!r} failed (run {result.run_id})", file=sys.stderr)
        return 1
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from qsdk.errors import SnapshotCorrupted
    from qsdk.integrations.dvc import SnapshotStore

    sdk = _sdk(args)
    store = SnapshotStore(sdk.config, sdk.registry)
    cmd = args.snapshot_command
    if cmd == "list":
        infos = store.list()
        if args.json:
            print(json.dumps([i.to_dict() for i in infos]))
        for i in infos if not args.json else ():
            versions = ", ".join(f"{t}@{v}" for t, v in i.versions.items())
            print(f"{i.name:<20} {i.created:<26} {i.md5:<38} {'local' if i.local else 'remote'}  {versions}")
        return 0
    if cmd == "create":
        info = store.create(args.name, args.tables, push=args.push)
        print(json.dumps(info.to_dict()) if args.json else
              f"snapshot {info.name} ({info.md5}): " + ", ".join(f"{t}@{v}" for t, v in info.versions.items())
              + f"; commit {info.dvc_file.relative_to(sdk.config.project_root)} (and snapshots/.gitignore)")
        return 0
    if cmd == "diff":
        diff = store.diff(args.a, args.b)
        print(json.dumps(diff.to_dict()) if args.json else diff.describe())
        return 0
    try:
        report = store.restore(args.name, args.tables, force=args.force)
    except SnapshotCorrupted as exc:  # not bad input: the stored data is damaged
        print(f"qsdk: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict()) if args.json else report.describe())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
