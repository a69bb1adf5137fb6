"""Per-stage overhead: qsdk running a no-op notebook as a one-stage flow versus
``papermill.execute_notebook`` on the same notebook, in the same process.

qsdk adds parameter validation, the stage context, the run manifest and the commit step on top
of papermill; this prints how much that costs, as medians and a ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import papermill as pm
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NOOP, machine, median, timed  # noqa: E402

from qsdk.execution.executors.local import LocalExecutor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from qsdk.sdk import QuantSDK

    work = Path(tempfile.mkdtemp(prefix="qsdk-bench-"))
    try:
        (work / "pipelines").mkdir()
        shutil.copy(NOOP, work / "noop.ipynb")
        doc = {"stages": {"noop": {"notebook": "noop.ipynb"}}, "flows": {"noop": {"stages": ["noop"]}}}
        (work / "pipelines" / "bench.yaml").write_text(yaml.safe_dump(doc))
        sdk = QuantSDK(work, lakehouse_root=work / "lake", runs_dir=work / "runs")

        def papermill_alone() -> None:
            pm.execute_notebook(str(NOOP), str(work / "pm-out.ipynb"), parameters={"x": 2},
                                kernel_name="python3", progress_bar=False)

        def qsdk_stage() -> None:
            # cache off: every repeat really runs; tracking off: the MLflow store is not the subject
            sdk.run_pipeline("noop", params={"x": 2}, executor=LocalExecutor(prewarm=0), cache=False, track=False)

        pm_times = timed(papermill_alone, repeat=args.repeat)
        q_times = timed(qsdk_stage, repeat=args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pm_med, q_med = median(pm_times), median(q_times)
    print(f"machine: {machine()}")
    print(f"papermill.execute_notebook (no-op): median {pm_med:.3f} s over {args.repeat} runs")
    print(f"qsdk one-stage flow, local executor: median {q_med:.3f} s over {args.repeat} runs")
    print(f"ratio qsdk / papermill: {q_med / pm_med:.2f}x  (overhead {1000 * (q_med - pm_med):+.0f} ms per stage)")


if __name__ == "__main__":
    main()
