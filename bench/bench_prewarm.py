"""Per-stage overhead with a pre-warmed kernel versus plain ``papermill.execute_notebook``.

Both run ``tests/notebooks/noop.ipynb`` in this process. papermill starts a kernel for the
notebook and shuts it down after; ``run_task`` on a kernel from a :class:`qsdk.execution.kernels.KernelPool`
finds one already started (the pool starts the next while a stage runs; here we wait for it
before each timed run, the steady state of a backfill whose stages take longer than a kernel
start). The pre-warmed path still does all of qsdk's work: stage context, the papermill call
through the qsdk engine, and the commit step. Target: at most 0.3x of papermill's time.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import papermill as pm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NOOP, machine, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from qsdk.execution.context import StageContext
    from qsdk.execution.kernels import KernelPool
    from qsdk.execution.task import Task

    logging.getLogger("papermill").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="qsdk-bench-"))

    def task(i: int) -> Task:
        ctx = StageContext(run_id="bench", stage="noop", lakehouse_root=str(work / "lake"), inputs=[],
                           outputs=[], tables={}, staging_dir=str(work / "staging" / str(i)))
        return Task(run_id="bench", stage="noop", partition=None, notebook=str(NOOP),
                    output_notebook=str(work / f"qsdk-{i}.ipynb"), parameters={"x": 2}, context=ctx)

    def papermill_alone(i: int) -> None:
        pm.execute_notebook(str(NOOP), str(work / f"pm-{i}.ipynb"), parameters={"x": 2},
                            kernel_name="python3", progress_bar=False)

    pm_times: list[float] = []
    warm_times: list[float] = []
    try:
        with KernelPool(1, cwd=NOOP.parent) as pool:
            for i in range(args.repeat + 1):  # run 0 warms up imports on both paths
                started = time.perf_counter()
                papermill_alone(i)
                pm_times.append(time.perf_counter() - started)

                pool.wait_ready()
                started = time.perf_counter()
                result = pool.run_task(task(i))
                warm_times.append(time.perf_counter() - started)
                if result.status != "succeeded":
                    raise SystemExit(f"pre-warmed run failed: {result.error}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pm_med, warm_med = median(pm_times[1:]), median(warm_times[1:])
    print(f"machine: {machine()}")
    print(f"papermill.execute_notebook (no-op, a new kernel per run): median {pm_med:.3f} s over {args.repeat} runs")
    print(f"qsdk run_task on a pre-warmed kernel (no-op):             median {warm_med:.3f} s over {args.repeat} runs")
    print(f"ratio pre-warmed / papermill: {warm_med / pm_med:.2f}x (target <= 0.3x; "
          f"{1000 * (pm_med - warm_med):.0f} ms saved per stage)")


if __name__ == "__main__":
    main()
