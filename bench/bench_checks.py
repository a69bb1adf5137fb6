"""The cost of the shipped data checks (``checks:`` in ``pipelines/``) in the synthetic backfill
(default 500 symbols x 2000-2009, every stage, tracking off, on Ray).

Each task times its checks where they run, in the worker before the commit: reading the staged
rows, the replaced slice's row count, DuckDB's evaluation and the append to ``qsdk.checks``
(``TaskResult.extra["checks_s"]``). Reported: that time summed over tasks, as a fraction of the
tasks' summed durations (the share of the work) and of the flow's wall time (an upper bound of
what the checks add to it: tasks run in parallel). Then ``qsdk checks TABLE --run`` per checked
table, against the whole table at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-symbols", type=int, default=500)
    parser.add_argument("--start", default="2000-01-01")
    parser.add_argument("--end", default="2009-12-31")
    parser.add_argument("--executor", default="ray", choices=["ray", "local"])
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


if __name__ == "__main__":
    main()
