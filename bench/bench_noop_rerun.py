"""A no-op re-run of the backfill: qsdk's cache versus the cold run, and versus `dvc repro`.

In a temporary git + DVC repository holding a copy of the project (with `dvc.yaml` rendered by
`qsdk dvc sync`), this times, each on its own lakehouse:

* the cold `qsdk run backfill` over the range, once;
* the same command again, when nothing changed (median of --repeat runs): every task is
  decided cached in the driver, with no Ray, no kernel and no MLflow run;
* `dvc repro` when nothing changed, after a first `dvc repro` (median of --repeat runs).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", default="2005-01-01")
    parser.add_argument("--end", default="2006-12-31")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="qsdk-bench-noop-"))
    root = tmp / "repo"
    for folder in ("pipelines", "notebooks"):
        shutil.copytree(REPO / folder, root / folder)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "QSDK_RUNS": str(tmp / "runs"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "QSDK_DVC_REMOTE": str(tmp / "remote")}
    env.pop("QSDK_PROJECT", None)

    cpu: dict[float, float] = {}  # wall time of a command -> its CPU seconds (user + system)

    def sh(*cmd: str, lake: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(cmd, cwd=root, env={**env, "QSDK_LAKEHOUSE": str(tmp / lake)}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[wall] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall

    try:
        for cmd in (("git", "init", "-q"), ("dvc", "init", "-q"), ("dvc", "config", "core.analytics", "false"),
                    ("qsdk", "dvc", "sync")):
            sh(*cmd, lake="unused")
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["backfill"].update(start=args.start, end=args.end)
        (root / "params.yaml").write_text(yaml.safe_dump(params))

        run = ("qsdk", "run", "backfill", "-p", f"start={args.start}", "-p", f"end={args.end}")
        cold = sh(*run, lake="lake-qsdk")
        dvc_cold = sh("dvc", "repro", lake="lake-dvc")
        noop, dvc_noop = [], []
        for _ in range(args.repeat):  # interleaved, so each round's pair shares the machine's load
            noop.append(sh(*run, lake="lake-qsdk"))
            dvc_noop.append(sh("dvc", "repro", lake="lake-dvc"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"machine: {machine()}")
    print(f"backfill {args.start}..{args.end}, every stage of the flow")
    print(f"qsdk run, cold:                 {cold:7.2f} s")
    print(f"qsdk run, nothing changed:      {median(noop):7.2f} s (median of {args.repeat}); "
          f"CPU {median([cpu[w] for w in noop]):.2f} s")
    print(f"dvc repro, cold:                {dvc_cold:7.2f} s")
    print(f"dvc repro, nothing changed:     {median(dvc_noop):7.2f} s (median of {args.repeat}); "
          f"CPU {median([cpu[w] for w in dvc_noop]):.2f} s")
    print(f"no-op / cold (qsdk):            {median(noop) / cold:7.3f}x")
    ratios = [q / d for q, d in zip(noop, dvc_noop, strict=True)]  # interleaved below: same load
    print(f"no-op qsdk / no-op dvc repro:   {median(ratios):7.2f}x (median of per-round ratios)")


if __name__ == "__main__":
    main()
