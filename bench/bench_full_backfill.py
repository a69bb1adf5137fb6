"""The full backfill on synthetic data (default 500 symbols x 10 years of daily bars): the
notebook flow versus the same computations as one plain Python script.

Both run as child processes, one after the other, and are measured the same way:

* wall time;
* CPU seconds (user + system) of every process of the run;
* the peak of the run's summed resident sets, sampled every 0.5 s with psutil: what the machine
  needed at once (RSS at every sample; PSS, which reads every process's smaps, at the samples
  whose RSS is within 15% of its peak so far). A run's processes are the child, its
  descendants, and every process that carries the run's marker in its environment
  (``QSDK_BENCH_RUN``, inherited by whatever the run starts): Ray's raylet, GCS and workers are
  not the driver's descendants once Ray daemonises, and other Ray instances on a shared machine
  do not carry this run's marker. With ``ray-head``, also every process carrying the warm
  head's marker (``QSDK_BENCH_HEAD``): the head's services, counted from the run's start, and
  the workers it starts for the run;
* the largest resident set of any one process the child reaped (``os.wait4``), for reference:
  it misses Ray's workers; for a run that is one process (the script) it is the exact peak, and
  replaces the sampled one (scaled for PSS).

The script calls the same ``qsdk.quant`` functions as the notebooks, on the whole range at
once, in memory (no Delta, no kernels, no partitions); the flow runs every stage in its
registry partitions (5-year blocks), tracking off, with each executor asked for: ``local``
(sequential, one pre-warmed kernel), ``ray`` (an embedded Ray on this machine's cores, started
and stopped inside the timed run, one pre-warmed kernel per worker) and ``ray-head`` (the same
on a long-lived head, as ``qsdk run`` leaves one up after its first run, for a copy of the
project: started before each of its runs and stopped after, outside the timer; each run still
gets new workers, zygotes and kernels: Ray ends a job's workers with its driver). Ratios are
medians of the per-round ratios (each round runs the script and the flows back to back).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median  # noqa: E402

# the notebooks' feature specs and composite weights (notebooks/research/features.ipynb, alpha.ipynb)
MOMENTUM = [
    {"name": "mom_21", "kind": "momentum", "window": 21},
    {"name": "mom_63", "kind": "momentum", "window": 63},
    {"name": "mom_126", "kind": "momentum", "window": 126},
    {"name": "mom_12_1", "kind": "momentum", "window": 252, "skip": 21},
    {"name": "rev_5", "kind": "reversal", "window": 5},
    {"name": "high_252", "kind": "distance_to_high", "window": 252},
]
RISK = [
    {"name": "vol_21", "kind": "realized_volatility", "window": 21},
    {"name": "vol_63", "kind": "realized_volatility", "window": 63},
    {"name": "volume_z_21", "kind": "volume_zscore", "window": 21},
    {"name": "amihud_21", "kind": "amihud_illiquidity", "window": 21},
]
COMPOSITE = {"mom_12_1": 1.0, "rev_5": 1.0, "vol_63": -1.0}


def run_script(p: dict) -> dict:
    """ingest -> clean -> features -> labels -> alpha -> evaluate, in memory."""
    import pandas as pd

    from qsdk.quant import adjust, alpha, metrics, sources, synthetic
    from qsdk.quant import calendar as cal
    from qsdk.quant import features as F
    from qsdk.quant.pit import point_in_time_join

    args = {"n_symbols": p["n_symbols"], "seed": p["seed"], "signal_strength": p["signal_strength"]}
    bars = sources.load("synthetic", start=p["start"], end=p["end"], **args)
    signals = sources.load_signals("synthetic", start=p["start"], end=p["end"], **args)
    signals = synthetic.vendor_delivery(signals, seed=p["seed"])  # as ingest_signals: late and restated values
    report = cal.validate_dates(bars["date"])
    clean = bars[~bars["date"].isin(report.non_sessions)]
    adjust.corporate_actions(clean)
    prices = adjust.adjusted_prices(clean).reset_index(drop=True)

    momentum = F.at_session_close(F.compute_features(prices, spec=MOMENTUM))
    risk = F.at_session_close(F.compute_features(prices, spec=RISK))
    vendor = signals.rename(columns={"value": "vendor_signal", "published_at": "known_time"})
    vendor["event_time"] = cal.session_closes(vendor["date"])
    labels = F.label_frame(prices, lag=1, horizon=1)
    labels["known_time"] = cal.session_closes(labels["exit_date"])

    panel = prices[["date", "symbol"]].assign(timestamp=cal.session_closes(prices["date"]))
    for view in (momentum, risk, vendor):
        names = [c for c in view.columns if c not in ("date", "symbol", "event_time", "known_time")]
        panel = point_in_time_join(panel, view.drop(columns="date"), ttl=pd.Timedelta(days=10), features=names)
    features = [c for c in panel.columns if c not in ("date", "symbol", "timestamp")]
    z = alpha.cross_sectional_zscore(panel, features)
    ics = alpha.feature_ics(panel[["date", "symbol"]].join(z).merge(labels, on=["date", "symbol"]), features)
    decisions = panel.drop_duplicates("date").set_index("date")["timestamp"].sort_index()
    weights = alpha.point_in_time_ic_weights(ics, labels.groupby("date")["known_time"].max(), decisions,
                                             window=252, min_periods=20)
    scores = {"composite": alpha.combine(z, COMPOSITE),
              "ic_weighted": alpha.combine(z, weights.reindex(panel["date"]).set_axis(panel.index))}

    factors = {name: panel[["date", "symbol"]].assign(factor=s) for name, s in scores.items()}
    factors |= {f: panel[["date", "symbol", f]].rename(columns={f: "factor"}) for f in features}
    out = {}
    for name, frame in factors.items():
        ev = metrics.evaluate_factor(metrics.merge_factor_returns(frame, labels, factor_column="factor"),
                                     quantiles=5, cost_bps=5.0)
        out[name] = ev.summary["rank_ic_mean"]
    return out


def run_flow(p: dict, work: Path, executor: str) -> dict:
    from deltalake import DeltaTable

    from qsdk.execution.executors import get_executor
    from qsdk.execution.executors.ray import RayExecutor
    from qsdk.sdk import QuantSDK

    if executor == HEAD:  # the project's long-lived head, as `qsdk run` joins it (already up)
        project = Path(os.environ[ENV_PROJECT_COPY])
        ex: Any = RayExecutor(project_root=project, prewarm=1)
    else:
        project, ex = REPO, get_executor(executor, prewarm=1)
    sdk = QuantSDK(project, lakehouse_root=work / "lake", runs_dir=work / "runs")
    params = {"source": "synthetic", **{k: p[k] for k in ("start", "end", "n_symbols", "seed", "signal_strength")}}
    sdk.run_pipeline("backfill", params=params, track=False, executor=ex)
    evaluation = DeltaTable(str(work / "lake" / "gold" / "alpha_evaluation")).to_pandas()
    return dict(zip(evaluation["factor"], evaluation["rank_ic_mean"], strict=True))


MARKER = "QSDK_BENCH_RUN"
HEAD = "ray-head"  # --executors ray-head: the flow joins a long-lived head the bench started before the rounds
HEAD_MARKER = "QSDK_BENCH_HEAD"  # carried by that head's processes, and so by the workers it starts for a run
ENV_PROJECT_COPY = "QSDK_BENCH_PROJECT"  # the copy of the project the head is keyed on


@contextlib.contextmanager
def warm_head() -> Iterator[tuple[Path, str]]:
    """A long-lived Ray head, as the CLI leaves one up after its first run, for a copy of this
    project (a head is keyed on its project's path: this one is never the checkout's own), and
    the marker its processes carry. Stopped, with the copy, at the end."""
    from qsdk.execution.executors import rayhead

    project = Path(tempfile.mkdtemp(prefix="qsdk-bench-project-"))
    marker = uuid.uuid4().hex
    for folder in ("pipelines", "notebooks"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    before = os.environ.get(HEAD_MARKER)
    os.environ[HEAD_MARKER] = marker  # the head inherits this process's environment
    try:
        rayhead.ensure(project, num_cpus=os.cpu_count())
        yield project, marker
    finally:
        if before is None:
            os.environ.pop(HEAD_MARKER, None)
        else:
            os.environ[HEAD_MARKER] = before
        rayhead.stop(project)
        shutil.rmtree(project, ignore_errors=True)


@dataclass
class Usage:
    """What one run used: its processes' summed peak resident set and their CPU seconds."""

    tree_peak_mib: float = 0.0
    tree_peak_pss_mib: float = 0.0  # proportional set sizes: pages a forked kernel shares with its zygote count once
    cpu: dict[tuple[int, float], float] = field(default_factory=dict)  # (pid, start time) -> user + system s
    kind: dict[tuple[int, float], str] = field(default_factory=dict)  # (pid, start time) -> _kind()
    reaped_cpu_s: float = 0.0  # the child's and its reaped descendants' (os.wait4)
    peak_pss_by_kind: dict[str, float] = field(default_factory=dict)  # MiB per _kind() at the PSS peak
    sampler_cpu_s: float = 0.0  # what measuring the run cost (this process), not counted in cpu_s

    @property
    def cpu_s(self) -> float:
        return max(sum(self.cpu.values()), self.reaped_cpu_s)


def _ours(proc: Any, marker: str, known: dict[tuple[int, float], bool], head: str | None = None) -> bool:
    """Whether ``proc`` belongs to the run: it carries the run's marker, or (``head``) the warm
    head's, which the head's own processes and the workers it starts for the run carry."""
    import psutil

    key = (proc.pid, proc.create_time())
    if key not in known:
        try:
            env = proc.environ()
            known[key] = env.get(MARKER) == marker or (head is not None and env.get(HEAD_MARKER) == head)
        except (psutil.AccessDenied, psutil.ZombieProcess):
            known[key] = False
    return known[key]


def _cpu_of(head: str) -> dict[tuple[int, float], float]:
    """CPU seconds so far of the warm head's processes: what the run's count starts from."""
    import psutil

    out: dict[tuple[int, float], float] = {}
    known: dict[tuple[int, float], bool] = {}
    for proc in psutil.process_iter():
        try:
            if _ours(proc, "", known, head):
                times = proc.cpu_times()
                out[(proc.pid, proc.create_time())] = times.user + times.system
        except psutil.Error:
            continue
    return out


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # started by the raylet, named like workers


def _kind(proc: Any) -> str:
    """What a process of the run is, for the CPU breakdown: kernel, zygote, Ray worker (the
    processes that run tasks), Ray's own processes (GCS, raylet, monitors, and its agents, which
    Ray also names ``ray::...``), the driver (the run's child) and the rest."""
    name, cmd = proc.name(), " ".join(proc.cmdline())
    if name == "qsdk-kernel" or "ipykernel_launcher" in cmd:
        return "kernels"
    if name == "qsdk-zygote" or "qsdk.execution.zygote" in cmd:
        return "zygotes"
    if "--child" in cmd:  # first: the driver's own command line names its executor ("flow:ray")
        return "driver"
    if any(agent in cmd or agent in name for agent in RAY_AGENTS):
        return "ray services"
    if "default_worker.py" in cmd or "ray::" in cmd or name.startswith("ray::"):
        return "ray workers"
    if "ray" in cmd:
        return "ray services"
    return "other"


def _by_kind(usage: Usage) -> str:
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for key, cpu in usage.cpu.items():
        kind = usage.kind.get(key, "other")
        totals[kind] = totals.get(kind, 0.0) + cpu
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{k} {v:.1f} s ({counts[k]} processes)" for k, v in sorted(totals.items(), key=lambda kv: -kv[1]))


SAMPLE_S = 0.5  # reading every process's smaps for PSS costs CPU the run competes for: not too often
PSS_NEAR_PEAK = 0.85  # PSS (smaps, costly) is read only when the summed RSS (statm, cheap) is this near its peak


def _lowest_priority() -> None:
    """This thread only runs when nothing of the run wants the CPU. Ray runs its workers, and so
    the flow's kernels, at nice 15: against those a nice-19 sampler still got about 30% of a core
    whenever it ran (weights 36 to 15), against the nice-0 script about 1.5%; SCHED_IDLE puts it
    below both."""
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _sample_tree(pid: int, marker: str, usage: Usage, stop: threading.Event, head: str | None = None,
                 cpu_before: dict[tuple[int, float], float] | None = None) -> None:
    """Sample the run's processes, taking as little CPU from the run as it can (its own CPU is
    printed beside each run): at the lowest priority, and reading PSS (every process's smaps)
    only when the summed RSS is near its highest so far, where the PSS peak is."""
    import psutil

    _lowest_priority()
    known: dict[tuple[int, float], bool] = {}  # the environment never changes: read it once per process
    me = os.getuid()
    while True:
        procs, total = [], 0
        for proc in psutil.process_iter(["uids"]):
            try:
                if proc.info["uids"] is None or proc.info["uids"].real != me:
                    continue
                if proc.pid != pid and not _ours(proc, marker, known, head):
                    continue
                with proc.oneshot():
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    usage.cpu[key] = times.user + times.system - (cpu_before or {}).get(key, 0.0)
                    if key not in usage.kind:
                        usage.kind[key] = _kind(proc)
                procs.append((proc, usage.kind[key]))
            except psutil.Error:  # gone meanwhile
                continue
        usage.tree_peak_mib = max(usage.tree_peak_mib, total / 2**20)
        if total / 2**20 >= PSS_NEAR_PEAK * usage.tree_peak_mib:
            pss, by_kind = 0.0, {}
            for proc, kind in procs:
                try:
                    mib = proc.memory_full_info().pss / 2**20
                except psutil.Error:
                    continue
                pss += mib
                by_kind[kind] = by_kind.get(kind, 0.0) + mib
            if pss > usage.tree_peak_pss_mib:
                usage.tree_peak_pss_mib, usage.peak_pss_by_kind = pss, by_kind
        if stop.wait(SAMPLE_S):
            return


def _exact_peak_of_one_process(usage: Usage, maxrss_mib: float) -> None:
    """A run that was one process (the script) has an exact peak: its ``ru_maxrss``. Sampling
    misses a short peak (the script's was 30 to 60 MiB above its samples), which would understate
    the denominator of every memory ratio. Its PSS is scaled from the sampled PSS/RSS ratio."""
    if len(usage.cpu) != 1 or maxrss_mib <= usage.tree_peak_mib or usage.tree_peak_mib <= 0:
        return
    usage.tree_peak_pss_mib *= maxrss_mib / usage.tree_peak_mib
    usage.tree_peak_mib = maxrss_mib


class ChildFailed(Exception):
    pass


def _measured(mode: str, p: dict) -> tuple[float, float, Usage, dict]:
    """:func:`_child`; for ``ray-head``, on a head started before it and stopped after it, outside
    the timed run (up only then, so its idle services never run beside another mode's run)."""
    if mode.split("@")[0] != f"flow:{HEAD}":  # flow:ray-head@spawn too
        return _child(mode, p)
    with warm_head() as head:
        return _child(mode, p, head)


def _child(mode: str, p: dict, head: tuple[Path, str] | None = None) -> tuple[float, float, Usage, dict]:
    """Run ``script`` or ``flow:EXECUTOR`` in a child process; return (wall seconds, peak RSS
    of one process in MiB, what the run's processes used, its result)."""
    work = Path(tempfile.mkdtemp(prefix="qsdk-bench-"))
    marker = uuid.uuid4().hex
    try:
        cmd = [sys.executable, __file__, "--child", mode, "--work", str(work), "--params", json.dumps(p)]
        started = time.perf_counter()
        errors = open(work / "stderr.log", "w+")  # noqa: SIM115 (read back below, closed with the folder)
        # the marker finds the run's processes; its own Ray folder (sessions, logs) goes with the run
        env = {**os.environ, MARKER: marker, "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", str(work))}
        if "@" in mode:  # flow:EXECUTOR@START: how its kernels start (qsdk.execution.zygote)
            mode, env["QSDK_KERNEL_START"] = mode.split("@")
            cmd[cmd.index("--child") + 1] = mode
        head_marker = cpu_before = None
        if head is not None:
            env[ENV_PROJECT_COPY], head_marker = str(head[0]), head[1]
            cpu_before = _cpu_of(head_marker)  # the head's services ran before: count what they spend from now
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        usage, stop = Usage(), threading.Event()
        sampling_before = time.process_time()  # this process: the sampler's CPU (the rest is idle)
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, marker, usage, stop, head_marker, cpu_before),
                                   daemon=True)
        sampler.start()
        output = proc.stdout.read() if proc.stdout else ""
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        usage.sampler_cpu_s = time.process_time() - sampling_before
        # two lower bounds of the CPU time: the samples miss each process's last 0.2 s, the
        # rusage misses what the child did not reap itself (Ray's processes); keep the larger
        usage.reaped_cpu_s = rusage.ru_utime + rusage.ru_stime
        _exact_peak_of_one_process(usage, rusage.ru_maxrss / 1024)
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise ChildFailed(f"{mode} failed (exit {os.waitstatus_to_exitcode(status)}):\n{errors.read()[-3000:]}")
        return wall, rusage.ru_maxrss / 1024, usage, json.loads(output.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-symbols", type=int, default=500)
    parser.add_argument("--start", default="2000-01-01")
    parser.add_argument("--end", default="2009-12-31")
    parser.add_argument("--signal-strength", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--executors", default=f"local,ray,{HEAD}",
                        help="comma-separated executors for the flow: local, ray (an embedded Ray started and "
                             f"stopped inside the timed run), {HEAD} (the project's long-lived head, started "
                             "before the rounds as the CLI's first run leaves it, its processes counted)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians are reported (the machine is noisy)")
    parser.add_argument("--kernel-starts", default="",
                        help="comma-separated kernel start modes (fork, spawn) to run each flow with, "
                             "as $QSDK_KERNEL_START; default: the default mode only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        p = json.loads(args.params)
        mode, _, executor = args.child.partition(":")
        result = run_flow(p, Path(args.work), executor) if mode == "flow" else run_script(p)
        print(json.dumps(result))
        return
    p = {"n_symbols": args.n_symbols, "start": args.start, "end": args.end, "seed": args.seed,
         "signal_strength": args.signal_strength}
    print(f"machine: {machine()}")
    print(f"synthetic backfill: {p['n_symbols']} symbols, {p['start']} .. {p['end']}, "
          f"signal_strength {p['signal_strength']}; {args.repeat} round(s), script and flows alternating")
    starts = [f"@{k}" for k in args.kernel_starts.split(",") if k] or [""]
    modes = ["script", *(f"flow:{e}{k}" for e in args.executors.split(",") for k in starts)]
    runs: dict[str, list[tuple[float, float, Usage]]] = {m: [] for m in modes}
    outputs: dict[str, dict] = {}
    _rounds(args.repeat, modes, p, runs, outputs)
    _report(modes, runs, outputs)


def _rounds(repeat: int, modes: list[str], p: dict, runs: dict[str, list[tuple[float, float, Usage]]],
            outputs: dict[str, dict]) -> None:
    for round_ in range(1, repeat + 1):
        for mode in modes:
            try:
                wall, mem, usage, outputs[mode] = _measured(mode, p)
            except ChildFailed as exc:  # on a loaded machine Ray's node can miss its 30 s start-up deadline
                if "timed out during startup" not in str(exc):
                    raise SystemExit(str(exc)) from None
                print(f"  round {round_}: {mode}: Ray's start timed out; running it once more", file=sys.stderr)
                wall, mem, usage, outputs[mode] = _measured(mode, p)
            runs[mode].append((wall, mem, usage))
            print(f"  round {round_}: {mode:<11} {wall:7.1f} s wall {usage.cpu_s:7.1f} s CPU   tree peak "
                  f"{usage.tree_peak_mib:6.0f} MiB RSS {usage.tree_peak_pss_mib:6.0f} MiB PSS "
                  f"(largest reaped process {mem:6.0f} MiB)  load average "
                  f"{os.getloadavg()[0]:.1f}")
            print(f"    CPU by process: {_by_kind(usage)}; the bench's own sampling: {usage.sampler_cpu_s:.1f} s")
            print("    PSS at the peak: " + ", ".join(
                f"{k} {v:.0f} MiB" for k, v in sorted(usage.peak_pss_by_kind.items(), key=lambda kv: -kv[1])))


def _report(modes: list[str], runs: dict[str, list[tuple[float, float, Usage]]], outputs: dict[str, dict]) -> None:
    script = runs["script"]
    print(f"plain script:          median {median([r[0] for r in script]):7.1f} s wall "
          f"{median([r[2].cpu_s for r in script]):7.1f} s CPU   tree peak "
          f"{median([r[2].tree_peak_mib for r in script]):6.0f} MiB")
    for mode in modes[1:]:
        flow = runs[mode]
        walls = [f[0] / s[0] for f, s in zip(flow, script, strict=True)]
        cpus = [f[2].cpu_s / s[2].cpu_s for f, s in zip(flow, script, strict=True)]
        trees = [f[2].tree_peak_mib / s[2].tree_peak_mib for f, s in zip(flow, script, strict=True)]
        psss = [f[2].tree_peak_pss_mib / s[2].tree_peak_pss_mib for f, s in zip(flow, script, strict=True)]
        print(f"notebook flow, {mode[5:]:<6} median {median([r[0] for r in flow]):7.1f} s wall "
              f"{median([r[2].cpu_s for r in flow]):7.1f} s CPU   tree peak "
              f"{median([r[2].tree_peak_mib for r in flow]):6.0f} MiB")
        print(f"  ratios to the script (medians of per-round ratios): wall {median(walls):.2f}x "
              f"({', '.join(f'{r:.2f}' for r in walls)}), CPU {median(cpus):.2f}x, "
              f"tree memory {median(trees):.2f}x ({', '.join(f'{r:.2f}' for r in trees)}) RSS, "
              f"{median(psss):.2f}x PSS")
    print("tree: every process of the run at once (the child, its descendants, and every process carrying "
          f"the run's {MARKER} marker: Ray's raylet, GCS and workers), sampled every {SAMPLE_S} s; RSS counts a page "
          "shared by several processes (a forked kernel and its zygote, shared libraries) in each, PSS "
          "divides it among them; CPU: user + system of those processes")
    print("target: the flow on Ray within 1.0x of the script's wall time, its tree within 2x of the script's memory")
    for name in ("ic_weighted", "vendor_signal", "composite"):
        values = "  ".join(f"{mode} {out.get(name, float('nan')):+.5f}" for mode, out in outputs.items())
        print(f"  mean rank IC of {name:<14} {values}")


if __name__ == "__main__":
    main()
