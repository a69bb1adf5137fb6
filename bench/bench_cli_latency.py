"""What a researcher waits for: one trivial stage run from the command line.

A notebook builds 10 rows with pandas and writes one table. Timed as subprocesses, each round
running every configuration once (so machine noise hits all alike), cache off:

* baseline: the ``papermill`` CLI on the same notebook writing with ``write_deltalake`` itself;
* ``qsdk run trivial --executor local --no-track``;
* ``qsdk run trivial --executor local`` (tracking on, the default: through the long-lived
  tracking agent, started by the warm-up round);
* the same with ``QSDK_TRACKER=process`` (a tracking helper process per run, no agent);
* ``qsdk run trivial --ray-address embedded`` (Ray started and stopped by the command);
* ``qsdk run trivial`` on Ray as the CLI reaches it by default: the project's long-lived head,
  started by the warm-up round and joined by every timed run (a second run on a warm head).

Prints the median wall time and CPU seconds of each and the median of the per-round ratios to
the baseline. CPU seconds are the command's and its children's, plus what the tracking agent
(not the command's child) spent while the command ran; between commands the bench waits until
the tracking processes are done rendering, so no round runs beside the last one's renderings.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median  # noqa: E402
from _trivial import project  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qsdk-bench-cli-"))
    root = project(work / "project")
    env = {**os.environ, "QSDK_LAKEHOUSE": str(work / "lake"), "QSDK_RUNS": str(work / "runs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "QSDK_RAY": "head",
           "QSDK_RAY_IDLE_TIMEOUT": "600"}
    env.pop("RAY_ADDRESS", None)
    qsdk = [str(BIN / "qsdk"), "run", "trivial", "--no-cache"]
    configs = {
        "papermill CLI + write_deltalake": [str(BIN / "papermill"), "notebooks/plain.ipynb", str(work / "out.ipynb"),
                                            "-p", "out", str(work / "plain"), "--no-progress-bar"],
        "qsdk local, untracked": [*qsdk, "--executor", "local", "--no-track"],
        "qsdk local, tracked": [*qsdk, "--executor", "local"],
        "qsdk local, tracked, helper per run": [*qsdk, "--executor", "local"],
        "qsdk ray (embedded), tracked": [*qsdk, "--executor", "ray", "--ray-address", "embedded"],
        "qsdk ray (warm head), tracked": [*qsdk, "--executor", "ray"],
    }
    envs = {name: {**env, "QSDK_TRACKER": "process"} if "helper per run" in name else env for name in configs}
    wall: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    failed: dict[str, list[list[str]]] = {}
    try:
        for round_ in range(args.repeat + 1):  # round 0 warms file caches and the MLflow store
            for name, cmd in configs.items():
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                agent_before = _agent_cpu(envs[name])
                started = time.perf_counter()
                done = subprocess.run(cmd, cwd=root, env=envs[name], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                agent_spent = _agent_cpu(envs[name]) - agent_before
                _settle()
                if done.returncode:  # reported, not timed (e.g. Ray failing to start on a loaded machine)
                    failed.setdefault(name, []).append(done.stderr.strip().splitlines()[-1:] or ["?"])
                    print(f"round {round_}: {name} failed (exit {done.returncode}): {done.stderr[-600:]}",
                          file=sys.stderr)
                    if round_:
                        wall[name].append(float("nan"))
                        cpu[name].append(float("nan"))
                    continue
                if round_:
                    wall[name].append(time.perf_counter() - started)
                    cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                                     + max(0.0, agent_spent))
    finally:
        from qsdk.execution.executors import rayhead
        from qsdk.integrations import tracking_agent

        rayhead.stop(root)  # the head this bench started, and only it
        tracking_agent.stop(tracking_agent.key(env))  # and its tracking agent
        shutil.rmtree(work, ignore_errors=True)
    base = next(iter(configs))
    print(f"machine: {machine()}")
    for name in configs:
        pairs = [(w, b, c) for w, b, c in zip(wall[name], wall[base], cpu[name], strict=True) if w == w and b == b]
        note = f"  (failed in {len(failed[name])} round(s), warm-up included)" if name in failed else ""
        if not pairs:
            print(f"{name:32s} no successful timed round{note}")
            continue
        ratios = [w / b for w, b, _ in pairs]
        print(f"{name:32s} {median([w for w, _, _ in pairs]):6.2f} s wall  {median([c for _, _, c in pairs]):6.2f} s CPU  "
              f"{median(ratios):5.2f}x (median of per-round ratios, n={len(pairs)}){note}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min)")


def _agent_cpu(env: dict[str, str]) -> float:
    """CPU seconds the tracking agent serving ``env`` has used so far (0 if none runs)."""
    import psutil

    from qsdk.integrations import tracking_agent

    info = tracking_agent.status(tracking_agent.key(env))
    if info is None:
        return 0.0
    try:
        times = psutil.Process(info.pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _settle(timeout: float = 30.0) -> None:
    """Wait until no tracking process is still rendering the last run's notebooks (helpers per
    run have exited, agents stopped using CPU) and the machine is quiet again."""
    import psutil

    deadline = time.monotonic() + timeout
    last: dict[int, float] = {}
    while time.monotonic() < deadline:
        now: dict[int, float] = {}
        for proc in psutil.process_iter(["cmdline", "cpu_times"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "qsdk.integrations.tracking_agent" in cmd and proc.info["cpu_times"] is not None:
                now[proc.pid] = proc.info["cpu_times"].user + proc.info["cpu_times"].system
        helpers = [pid for pid in now if pid not in last or now[pid] != last[pid]]
        if last and not helpers:
            break
        last = now
        time.sleep(0.25)
    # and what else the last command left running (an embedded Ray shutting down) has ended:
    # the machine is below one busy core
    while time.monotonic() < deadline and psutil.cpu_percent(interval=0.5) > 50:
        pass


if __name__ == "__main__":
    main()
