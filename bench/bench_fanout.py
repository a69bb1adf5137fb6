"""Fan-out scaling: the same partitioned work with one Ray worker versus all cores.

Two workloads, each in a temporary project, each partition a fresh papermill run:

* ``cpu`` (default): one stage partitioned by month whose notebook does a fixed amount of
  single-threaded numeric work (Monte-Carlo drawdowns of ``--paths`` random walks, about 2 s of
  CPU) and writes one row: the fan-out gain a CPU-bound partitioned stage gets;
* ``backfill``: ``ingest_prices -> clean_prices`` on synthetic data partitioned by month, where
  each task does about 0.3 s of work beside a fresh kernel's start (about 0.7 s of CPU).

Each configuration (1 CPU, then every CPU of this machine) gets its own embedded Ray. Ray's
start is timed on its own and printed beside the runs, not inside them: the runs measure the
work and its scheduling, which is what a second worker can speed up (issue "A fast everyday
loop" takes Ray's start off every command with a long-lived head). Run 0 of each configuration
starts the workers and their kernels and is not counted. Every run writes a fresh lakehouse.
Prints medians, the CPU seconds of the whole machine during the runs, and the median of the
per-round speed-ups (round i of 1 worker over round i of all workers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median  # noqa: E402
from _trivial import notebook  # noqa: E402

STAGES = ("ingest_prices", "clean_prices")
CPU_PARAMS = 'start: "date" = "2005-01-01"\nend: "date" = "2005-01-31"\npaths: int = 400000'
CPU_WORK = """import numpy as np, pandas as pd, qsdk
rng = np.random.default_rng(int(str(start).replace("-", "")))
drawdowns = []
for _ in range(20):  # single-threaded numpy: element-wise work, no BLAS
    curves = np.cumsum(rng.standard_normal((paths // 20, 252)) * 0.01, axis=1)
    drawdowns.append((np.maximum.accumulate(curves, axis=1) - curves).max(axis=1))
drawdown = np.concatenate(drawdowns)
frame = pd.DataFrame({"month": pd.to_datetime([str(start)]).date, "mean_drawdown": [drawdown.mean()],
                      "p99_drawdown": [float(np.quantile(drawdown, 0.99))]})
qsdk.write_table("gold.drawdowns", frame, mode="overwrite", predicate=qsdk.between("month", start, end))"""


def backfill_project(work: Path, by: str) -> Path:
    root = work / "project"
    for folder in ("pipelines", "notebooks"):
        shutil.copytree(REPO / folder, root / folder)
    path = root / "pipelines" / "backfill.yaml"
    doc = yaml.safe_load(path.read_text())
    for stage in STAGES:
        doc["stages"][stage]["partition"]["by"] = by
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def cpu_project(work: Path, by: str) -> Path:
    root = work / "project"
    notebook(root / "notebooks" / "crunch.ipynb", CPU_WORK, params=CPU_PARAMS)
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    doc = {"tables": {"gold.drawdowns": {"columns": {"month": "date", "mean_drawdown": "float64",
                                                     "p99_drawdown": "float64"}, "primary_key": ["month"]}},
           "stages": {"crunch": {"notebook": "notebooks/crunch.ipynb", "outputs": ["gold.drawdowns"],
                                 "partition": {"by": by, "start": "start", "end": "end"}}},
           "flows": {"crunch": {"stages": ["crunch"]}}}
    (root / "pipelines" / "crunch.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["cpu", "backfill"], default="cpu")
    parser.add_argument("--start", default="2005-01-01")
    parser.add_argument("--end", default="2005-12-31")
    parser.add_argument("--by", choices=["month", "year"], default="month")
    parser.add_argument("--n-symbols", type=int, default=50, help="backfill: synthetic symbols")
    parser.add_argument("--paths", type=int, default=400000, help="cpu: random walks per partition")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from qsdk.execution.executors.ray import RayExecutor
    from qsdk.sdk import QuantSDK

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="qsdk-fanout-"))
    # a Ray folder of its own (sessions, logs), removed with the run, not /tmp/ray shared with every Ray here
    os.environ.setdefault("RAY_TMPDIR", str(work))
    if args.workload == "cpu":
        root, flow, only = cpu_project(work, args.by), "crunch", ()
        params = {"start": args.start, "end": args.end, "paths": args.paths}
    else:
        root, flow, only = backfill_project(work, args.by), "backfill", STAGES
        params = {"start": args.start, "end": args.end, "source": "synthetic", "n_symbols": args.n_symbols}
    times: dict[int, list[float]] = {}
    cpu: dict[int, list[float]] = {}  # CPU seconds of the whole machine per run (others' work included)
    busy: dict[int, list[float]] = {}  # sum of task durations / wall time: tasks in flight
    start_s: dict[int, float] = {}
    tasks = 0
    try:
        for cpus in (1, cores):
            session, start_s[cpus] = _start_ray(cpus)  # one Ray per configuration; the runs find it and keep it
            try:
                times[cpus], cpu[cpus], busy[cpus] = [], [], []
                for i in range(args.repeat + 1):  # run 0 starts the workers and their kernels
                    sdk = QuantSDK(root, lakehouse_root=work / f"lake-{cpus}-{i}", runs_dir=work / "runs")
                    cpu_before, started = _machine_cpu_s(), time.perf_counter()
                    result = sdk.run_pipeline(flow, params=params, only=only, executor=RayExecutor(),
                                              track=False, cache=False)
                    wall = time.perf_counter() - started
                    if result.failures:
                        raise SystemExit(f"the {flow} flow failed: {[str(r.error) for r in result.failures]}")
                    if i:
                        times[cpus].append(wall)
                        cpu[cpus].append(_machine_cpu_s() - cpu_before)
                        busy[cpus].append(sum(r.duration for r in result.results) / wall)
                    tasks = len(result.results)
            finally:
                session.finalize()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speedups = [one / all_ for one, all_ in zip(times[1], times[cores], strict=True)]
    print(f"machine: {machine()}")
    what = f"Monte-Carlo drawdowns, {args.paths:,} paths per partition" if args.workload == "cpu" else \
        f"ingest_prices -> clean_prices, synthetic, {args.n_symbols} symbols"
    print(f"{args.workload} workload ({what}), {args.start}..{args.end} by {args.by}: {tasks} tasks")
    for cpus, label in ((1, "1 Ray worker:       "), (cores, f"{cores} Ray workers (all):")):
        print(f"{label} median {median(times[cpus]):.2f} s over {args.repeat} runs, "
              f"{median(busy[cpus]):.2f} tasks in flight on average, machine CPU {median(cpu[cpus]):.1f} s per run; "
              f"Ray's start (not in the runs) {start_s[cpus]:.1f} s")
    print(f"speed-up: {median(speedups):.2f}x on {cores} cores (median of per-round ratios: "
          f"{', '.join(f'{s:.2f}' for s in speedups)}; load average now: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; other work on the machine slows every task)")


def _start_ray(cpus: int) -> tuple[Any, float]:
    """An embedded Ray on ``cpus`` CPUs and the seconds its start took. On a loaded machine
    Ray's node can miss its fixed 30 s start-up deadline: then it is tried once more."""
    from qsdk.execution.executors.ray import RayExecutor

    for attempt in (1, 2):
        session = RayExecutor(num_cpus=cpus)
        started = time.perf_counter()
        try:
            session.init()
        except Exception as exc:  # ray raises a bare Exception for the start-up timeout
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            print(f"Ray's start timed out ({time.perf_counter() - started:.0f} s, load average "
                  f"{os.getloadavg()[0]:.1f}); trying once more", file=sys.stderr)
            session.finalize()
            continue
        return session, time.perf_counter() - started
    raise AssertionError("unreachable")


def _machine_cpu_s() -> float:
    """User + system CPU seconds of the whole machine so far (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:]
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / ticks


if __name__ == "__main__":
    main()
