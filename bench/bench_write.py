"""What a big write costs: 2,000,000 rows (two columns) through ``qsdk.write_table`` in a flow,
against ``write_deltalake`` in papermill.

Each side's cost of the write is its big run minus its trivial (10-row) run, timed in this
process, alternating, cache and tracking off, local executor without pre-warming:

* qsdk: a one-stage flow whose notebook writes with ``qsdk.write_table`` (the contract check,
  primary key included, and the Arrow staging file in the kernel; the commit after the
  notebook, which maps the staging file back and hands it to ``write_deltalake``);
* baseline: ``papermill.execute_notebook`` of the same notebook writing with ``write_deltalake``.

Prints the medians and the median of the per-round ratios of the write costs. ``--rows
20000000`` measures the 20-million-row write (about 320 MB of Arrow; keep ``--repeat`` small).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median  # noqa: E402
from _trivial import project  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the big write (also: 20000000)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import logging

    import papermill as pm

    from qsdk.execution.executors.local import LocalExecutor
    from qsdk.sdk import QuantSDK

    logging.getLogger("papermill").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="qsdk-bench-write-"))
    root = project(work / "project")

    def qsdk_run(rows: int, i: int) -> tuple[float, float]:
        sdk = QuantSDK(root, lakehouse_root=work / f"lake-{rows}-{i}", runs_dir=work / "runs")
        started = time.perf_counter()
        result = sdk.run_pipeline("trivial", params={"rows": rows}, executor=LocalExecutor(prewarm=0), track=False,
                                  cache=False)
        wall = time.perf_counter() - started
        task = result.results[0]
        return wall, _last_cell_s(task.notebook) + task.extra["commit_s"]

    def papermill_run(rows: int, i: int) -> tuple[float, float]:
        started = time.perf_counter()
        pm.execute_notebook(str(root / "notebooks" / "plain.ipynb"), str(work / "out.ipynb"), progress_bar=False,
                            parameters={"rows": rows, "out": str(work / f"plain-{rows}-{i}")})
        return time.perf_counter() - started, _last_cell_s(work / "out.ipynb")

    costs: dict[str, list[float]] = {"qsdk": [], "papermill": []}
    inside: dict[str, list[float]] = {"qsdk": [], "papermill": []}  # the write itself, timed in the run
    try:
        for i in range(args.repeat + 1):  # round 0 warms up
            q_small, q_big = qsdk_run(10, i), qsdk_run(args.rows, i)
            p_small, p_big = papermill_run(10, i), papermill_run(args.rows, i)
            if i:
                costs["qsdk"].append(q_big[0] - q_small[0])
                costs["papermill"].append(p_big[0] - p_small[0])
                inside["qsdk"].append(q_big[1])
                inside["papermill"].append(p_big[1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [q / p for q, p in zip(costs["qsdk"], costs["papermill"], strict=True)]
    print(f"machine: {machine()}")
    print(f"write of {args.rows:,} rows: qsdk.write_table in a flow {median(costs['qsdk']):.2f} s, "
          f"write_deltalake in papermill {median(costs['papermill']):.2f} s over their 10-row runs: "
          f"{median(ratios):.2f}x (median of per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"load average now {os.getloadavg()[0]:.1f})")
    inner = [q / p for q, p in zip(inside["qsdk"], inside["papermill"], strict=True)]
    print(f"the write itself, timed in the runs (the write cell, plus qsdk's commit after the notebook): "
          f"qsdk {median(inside['qsdk']):.2f} s, write_deltalake {median(inside['papermill']):.2f} s: "
          f"{median(inner):.2f}x (median of per-round ratios {', '.join(f'{r:.2f}' for r in inner)}); "
          "this misses work outside the cell and the commit, the line above does not")
    if min(costs["qsdk"] + costs["papermill"]) <= 0.05:
        print("warning: in some round a big run cost no more than its 10-row run: the machine's noise "
              "exceeds the write's cost, so the ratio means nothing; re-run with more rows or rounds, "
              "or on a quiet machine")

def _last_cell_s(notebook: str | Path) -> float:
    """How long papermill says the notebook's last cell (the write) ran."""
    import nbformat

    return float(nbformat.read(str(notebook), as_version=4).cells[-1].metadata["papermill"]["duration"])


if __name__ == "__main__":
    main()
