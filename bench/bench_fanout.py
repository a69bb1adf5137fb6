"""Fan-out scaling: the backfill over many date partitions with one Ray worker versus all cores.

Runs ``ingest_prices -> clean_prices`` on synthetic data (``source=synthetic``) in a temporary
copy of the project whose two stages are partitioned by month, so the range fans out into one
papermill run per month and stage. Each configuration gets its own embedded Ray (1 CPU, then
every CPU of this machine), started once; every repeat writes a fresh lakehouse. Prints the
medians and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median  # noqa: E402

STAGES = ("ingest_prices", "clean_prices")


def project_copy(work: Path, by: str) -> Path:
    root = work / "project"
    for folder in ("pipelines", "notebooks"):
        shutil.copytree(REPO / folder, root / folder)
    path = root / "pipelines" / "backfill.yaml"
    doc = yaml.safe_load(path.read_text())
    for stage in STAGES:
        doc["stages"][stage]["partition"]["by"] = by
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", default="2005-01-01")
    parser.add_argument("--end", default="2005-12-31")
    parser.add_argument("--by", choices=["month", "year"], default="month")
    parser.add_argument("--n-symbols", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from qsdk.execution.executors.ray import RayExecutor
    from qsdk.sdk import QuantSDK

    cores = os.cpu_count() or 1
    params = {"start": args.start, "end": args.end, "source": "synthetic", "n_symbols": args.n_symbols}
    work = Path(tempfile.mkdtemp(prefix="qsdk-fanout-"))
    times: dict[int, list[float]] = {}
    busy: dict[int, list[float]] = {}  # sum of task durations / wall time: tasks in flight
    tasks = 0
    try:
        root = project_copy(work, args.by)
        for cpus in (1, cores):
            session = RayExecutor(num_cpus=cpus)
            session.init()  # one Ray per configuration; the runs below find it and keep it
            try:
                times[cpus], busy[cpus] = [], []
                for i in range(args.repeat + 1):  # run 0 starts the workers and their kernels
                    sdk = QuantSDK(root, lakehouse_root=work / f"lake-{cpus}-{i}", runs_dir=work / "runs")
                    started = time.perf_counter()
                    result = sdk.run_pipeline("backfill", params=params, only=STAGES, executor=RayExecutor(),
                                              track=False, cache=False)
                    wall = time.perf_counter() - started
                    if i:
                        times[cpus].append(wall)
                        busy[cpus].append(sum(r.duration for r in result.results) / wall)
                    tasks = len(result.results)
            finally:
                session.finalize()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, all_ = median(times[1]), median(times[cores])
    print(f"machine: {machine()}")
    print(f"backfill {args.start}..{args.end} by {args.by}, synthetic, {args.n_symbols} symbols: "
          f"{tasks} tasks ({', '.join(STAGES)})")
    for cpus, label in ((1, "1 Ray worker:       "), (cores, f"{cores} Ray workers (all):")):
        print(f"{label} median {median(times[cpus]):.2f} s over {args.repeat} runs, "
              f"{median(busy[cpus]):.2f} tasks in flight on average")
    print(f"speed-up: {one / all_:.2f}x on {cores} cores (load average now: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; other work on the machine slows every task)")


if __name__ == "__main__":
    main()
