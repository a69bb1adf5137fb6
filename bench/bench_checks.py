"""The cost of the shipped data checks (``checks:`` in ``pipelines/``) in the synthetic backfill
(default 500 symbols x 2000-2009, every stage, tracking off, on Ray).

Each task times its checks where they run, in the worker before the commit: reading the staged
rows, the replaced slice's row count, DuckDB's evaluation and the append to ``qsdk.checks``
(``TaskResult.extra["checks_s"]``). Reported: that time summed over tasks, as a fraction of the
tasks' summed durations (the share of the work) and of the flow's wall time (an upper bound of
what the checks add to it: tasks run in parallel). Then ``qsdk checks TABLE --run`` per checked
table, against the whole table at once.

``--compare N`` (default 1) then measures what the checks add to the wall time directly: N rounds,
each running the same flow on a fresh lakehouse twice, once as shipped and once from a copy of
the project whose ``pipelines/*.yaml`` declare no checks (in alternating order), and prints the
median of the per-round ratios. It is the figure the issue asks for; on a shared machine its
noise is of the order of the effect, which is why the in-task share above is printed too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-symbols", type=int, default=500)
    parser.add_argument("--start", default="2000-01-01")
    parser.add_argument("--end", default="2009-12-31")
    parser.add_argument("--executor", default="ray", choices=["ray", "local"])
    parser.add_argument("--compare", type=int, default=1, help="rounds of with/without checks")
    args = parser.parse_args()

    from qsdk.execution.executors import get_executor
    from qsdk.sdk import QuantSDK

    print(machine())
    with tempfile.TemporaryDirectory(prefix="qsdk-bench-checks-") as work:
        sdk = QuantSDK(REPO, lakehouse_root=Path(work) / "lake", runs_dir=Path(work) / "runs")
        params = {"source": "synthetic", "start": args.start, "end": args.end, "n_symbols": args.n_symbols,
                  "signal_strength": 0.05}
        started = time.perf_counter()
        result = sdk.run_pipeline("backfill", params=params, track=False,
                                  executor=get_executor(args.executor, prewarm=1))
        wall = time.perf_counter() - started
        ran = [r for r in result.results if r.status == "succeeded"]
        checks_s = sum(r.extra.get("checks_s", 0.0) for r in ran)
        work_s = sum(r.duration for r in ran)
        n_checks = sum(len(r.extra.get("checks", [])) for r in ran)
        print(f"backfill {args.n_symbols} symbols {args.start}..{args.end}, {args.executor}: {len(ran)} tasks, "
              f"wall {wall:.1f} s, task time {work_s:.1f} s")
        print(f"checks: {n_checks} evaluations, {checks_s:.2f} s = {checks_s / work_s:.1%} of task time, "
              f"{checks_s / wall:.1%} of wall time")
        for stage in dict.fromkeys(r.stage for r in ran):
            mine = [r for r in ran if r.stage == stage]
            cost = sum(r.extra.get("checks_s", 0.0) for r in mine)
            print(f"  {stage:<16} {cost:6.2f} s of {sum(r.duration for r in mine):6.1f} s")
        for table, spec in sorted(sdk.registry.tables.items()):
            if spec.checks and sdk.lakehouse.exists(table):
                t0 = time.perf_counter()
                failed = [r.check for r in sdk.run_checks(table) if not r.passed]
                print(f"  qsdk checks {table} --run: {time.perf_counter() - t0:.2f} s"
                      f" ({sdk.lakehouse.info(table).rows} rows){' FAILED ' + str(failed) if failed else ''}")
        if args.compare:
            _compare(Path(work), params, args)


def _without_checks(work: Path) -> Path:
    """A copy of the project whose table contracts declare no checks."""
    import shutil

    import yaml

    root = work / "no-checks"
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    (root / "pipelines").mkdir(parents=True)
    for path in (REPO / "pipelines").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text()) or {}
        for spec in (doc.get("tables") or {}).values():
            spec.pop("checks", None)
        (root / "pipelines" / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def _compare(work: Path, params: dict[str, object], args: argparse.Namespace) -> None:
    from qsdk.execution.executors import get_executor
    from qsdk.sdk import QuantSDK

    projects = {"with": REPO, "without": _without_checks(work)}
    ratios = []
    for i in range(args.compare):
        walls = {}
        for label in (("with", "without") if i % 2 == 0 else ("without", "with")):
            sdk = QuantSDK(projects[label], lakehouse_root=work / f"lake-{label}-{i}", runs_dir=work / "runs")
            started = time.perf_counter()
            result = sdk.run_pipeline("backfill", params=params, track=False,
                                      executor=get_executor(args.executor, prewarm=1))
            walls[label] = time.perf_counter() - started
            assert result.status == "succeeded", [f.error for f in result.failures]
        ratios.append(walls["with"] / walls["without"])
        print(f"  round {i + 1}: with checks {walls['with']:.1f} s, without {walls['without']:.1f} s, "
              f"ratio {ratios[-1]:.3f}")
    print(f"wall time with checks / without: {median(ratios):.3f}x (median of {len(ratios)} per-round ratios)")


if __name__ == "__main__":
    main()
