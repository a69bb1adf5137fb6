"""Pre-warmed kernels: each run gets a fresh kernel started ahead of need, never a used one."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from qsdk.errors import KernelPoolError
from qsdk.execution.context import StageContext
from qsdk.execution.executors.local import LocalExecutor
from qsdk.execution.kernels import KernelPool
from qsdk.execution.task import Task, run_task
from tests.conftest import write_notebook

PROBE = """import json, os
leaked = "qsdk_probe" in globals()
qsdk_probe = value
print(json.dumps({"pid": os.getpid(), "leaked": leaked, "cwd": os.getcwd()}))"""


def _task(tmp: Path, notebook: Path, name: str, *, timeout: float | None = None, **params) -> Task:
    ctx = StageContext(run_id="r", stage=name, lakehouse_root=str(tmp / "lake"), inputs=[], outputs=[],
                       tables={}, staging_dir=str(tmp / "staging" / name))
    return Task(run_id="r", stage=name, partition=None, notebook=str(notebook),
                output_notebook=str(tmp / "out" / f"{name}.ipynb"), parameters=params, context=ctx,
                timeout=timeout)


def _printed(output_notebook: str) -> dict:
    nb = nbformat.read(output_notebook, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "nbs" / "probe.ipynb", "value: int = 0", PROBE)


def test_runs_on_pooled_kernels_share_no_state_and_each_gets_a_new_prestarted_kernel(tmp_path, probe):
    with KernelPool(1, cwd=tmp_path) as pool:
        seen = []
        for i in (1, 2):
            pool.wait_ready()
            asked = time.time()
            km = pool.acquire(cwd=probe.parent)
            started = psutil.Process(km.kernel_pid).create_time()
            assert started < asked  # handed out ready-made, not started on demand
            result = run_task(_task(tmp_path, probe, f"run{i}", value=i), km=km)
            pool.release(km)
            assert result.status == "succeeded", result.error
            out = _printed(result.notebook)
            assert out["pid"] == km.kernel_pid
            assert out["leaked"] is False  # the variable run 1 set is undefined in run 2
            assert out["cwd"] == str(probe.parent)  # papermill's convention: the notebook's folder
            seen.append(out["pid"])
        assert seen[0] != seen[1]
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in seen)  # used kernels are shut down, never returned to the pool


def test_a_spare_that_died_is_replaced(tmp_path, probe):
    with KernelPool(1, cwd=tmp_path) as pool:
        pool.wait_ready()
        victim = pool._spares[0].result().kernel_pid
        proc = psutil.Process(victim)
        proc.kill()
        proc.wait(timeout=10)
        result = pool.run_task(_task(tmp_path, probe, "after_kill", value=3))
        assert result.status == "succeeded", result.error
        assert _printed(result.notebook)["pid"] != victim
        assert _printed(result.notebook)["cwd"] == str(probe.parent)  # moved from the pool's cwd


def _stuck_starts(monkeypatch, how_many: int) -> threading.Event:
    """The pool's first ``how_many`` kernel starts block its event-loop thread (as a ZeroMQ send
    that never returns does, seen under heavy load) until the returned event is set."""
    release, real, calls = threading.Event(), KernelPool._start, []

    async def start(self, preload=()):
        calls.append(1)
        if len(calls) <= how_many:
            release.wait(120)  # synchronously: the loop's thread is stuck, not just this coroutine
        return await real(self, preload)

    monkeypatch.setattr(KernelPool, "_start", start)
    monkeypatch.setattr(KernelPool, "_stall_limit", lambda self: 3.0)
    return release


def test_a_start_stuck_on_the_pools_thread_is_abandoned_for_a_fresh_thread(tmp_path, probe, monkeypatch):
    release = _stuck_starts(monkeypatch, 1)
    try:
        with KernelPool(0, cwd=tmp_path) as pool:
            stuck = pool._thread
            result = pool.run_task(_task(tmp_path, probe, "after_stall", value=4))
            assert result.status == "succeeded", result.error
            assert pool._thread is not stuck and stuck.is_alive()  # a fresh thread ran it
            kernels = {p.pid for p in psutil.Process().children(recursive=True)}
            release.set()  # the stalled start now completes on the old thread, which shuts its kernel down
            stuck.join(timeout=0.1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and {p.pid for p in psutil.Process().children(recursive=True)
                                                   if p.status() != psutil.STATUS_ZOMBIE} - kernels:
                time.sleep(0.5)
            late = {p.pid for p in psutil.Process().children(recursive=True)
                    if p.status() != psutil.STATUS_ZOMBIE} - kernels
            assert not late  # no kernel left running by the abandoned start
    finally:
        release.set()


def test_a_pool_whose_starts_keep_stalling_fails_with_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    release = _stuck_starts(monkeypatch, 2)
    try:
        with KernelPool(0, cwd=tmp_path) as pool, pytest.raises(KernelPoolError) as err:
            pool.acquire()
        assert "no 'python3' kernel was ready within 3 s (tried 2 time(s))" in str(err.value)
        assert "raise startup_timeout" in str(err.value)
    finally:
        release.set()


WARM_PROBE = """import json, os, sys
names = ("qsdk_warm_mod", "qsdk_missing_mod", "qsdk_cwd_mod")
warm = {m: m in sys.modules for m in names}
bound = "qsdk_warm_mod" in globals() or "importlib" in globals() or "__qsdk_preload" in globals()
import qsdk_warm_mod
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "warm": warm, "bound": bound, "imported_by": qsdk_warm_mod.PID,
                  "path_kept": sys.path.count("") + sys.path.count(os.getcwd())}))"""


@pytest.fixture
def installed(tmp_path, monkeypatch) -> Path:
    """A folder on the kernels' import path (like site-packages) holding ``qsdk_warm_mod``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "qsdk_warm_mod.py").write_text("import os\nPID = os.getpid()\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return site


@pytest.mark.parametrize("start", ["spawn", "fork"])
def test_kernels_are_warmed_with_the_preload_modules_before_they_are_handed_out(tmp_path, installed, start):
    nb = write_notebook(tmp_path / "nbs" / "warm.ipynb", "value: int = 0", WARM_PROBE)
    pool_cwd = tmp_path / "elsewhere"
    pool_cwd.mkdir()
    (pool_cwd / "qsdk_cwd_mod.py").write_text("X = 1\n")  # beside another notebook: never preloaded
    with KernelPool(1, cwd=pool_cwd, preload=["qsdk_warm_mod", "qsdk_missing_mod", "qsdk_cwd_mod"],
                    start=start) as pool:
        pool.wait_ready()
        result = pool.run_task(_task(tmp_path, nb, "warm"))
        assert result.status == "succeeded", result.error  # a module that fails to import is skipped
        out = _printed(result.notebook)
        assert out["warm"] == {"qsdk_warm_mod": True, "qsdk_missing_mod": False, "qsdk_cwd_mod": False}
        # imported ahead of the notebook: by the kernel itself (spawn), or once by the zygote it was forked from
        assert out["imported_by"] == (out["pid"] if start == "spawn" else pool.zygote_pid)
        assert start == "spawn" or out["ppid"] == pool.zygote_pid
        assert out["bound"] is False  # only sys.modules is warm: the namespace is the notebook's own
        assert out["path_kept"] >= 1  # the working folder is back on sys.path for the notebook


def test_the_pool_learns_preload_modules_from_the_tasks_it_runs(tmp_path, installed):
    nb = write_notebook(tmp_path / "nbs" / "warm.ipynb", "value: int = 0", WARM_PROBE)
    with KernelPool(1, cwd=nb.parent) as pool:
        pool.wait_ready()
        task = dataclasses.replace(_task(tmp_path, nb, "first"), preload=("qsdk_warm_mod",))
        first = _printed(pool.run_task(task).notebook)
        second = _printed(pool.run_task(dataclasses.replace(task, stage="second")).notebook)
    assert first["warm"]["qsdk_warm_mod"] is False  # started before the pool knew of the module
    assert second["warm"]["qsdk_warm_mod"] is True  # its replacement, started after, was warmed
    assert pool.preload == ("qsdk_warm_mod",)


def test_wall_clock_limit_stops_a_notebook_whose_cells_each_stay_under_the_timeout(tmp_path):
    cell = "import time; time.sleep(1.0); print('ran')"
    nb = write_notebook(tmp_path / "nbs" / "slow.ipynb", "n: int = 5", *[cell] * 5)
    with KernelPool(0, cwd=tmp_path) as pool:
        result = pool.run_task(_task(tmp_path, nb, "slow", timeout=2.0), grace=0.3)
    assert result.status == "failed"
    err = result.error
    assert (err.stage, err.reason, err.ename) == ("slow", "timeout", "WallClockTimeout")
    assert "stage timeout of 2.0 s" in str(err)
    executed = nbformat.read(result.notebook, as_version=4)
    ran = sum("ran" in o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert ran <= 2  # stopped at 2.3 s of notebook time, not after all five cells


def test_local_executor_with_prewarmed_kernels_runs_a_partitioned_flow(project):
    cols = {"date": "date", "v": "int64"}
    write = ("import pandas as pd, qsdk\n"
             "df = pd.DataFrame({'date': pd.date_range(start, end, freq='MS'), 'v': 1})\n"
             "qsdk.write_table('bronze.t', df, mode='overwrite', predicate=qsdk.between('date', start, end))")
    sdk = (project.table("bronze.t", cols, primary_key=["date"])
           .stage("w", 'start: "date" = "2020-01-01"\nend: "date" = "2020-12-31"', write,
                  outputs=["bronze.t"], partition={"by": "month"})
           .flow("f", ["w"]).sdk())
    result = sdk.run_pipeline("f", params={"start": "2020-01-01", "end": "2020-03-31"},
                              executor=LocalExecutor(prewarm=1), track=False, cache=False)
    assert [r.status for r in result.results] == ["succeeded"] * 3
    df = sdk.lakehouse.read("bronze.t").to_pandas()
    assert sorted(df["date"].astype(str)) == ["2020-01-01", "2020-02-01", "2020-03-01"]


@pytest.mark.parametrize("start", ["spawn", "fork"])
def test_a_kernel_that_dies_while_starting_is_replaced_by_a_new_start(tmp_path, monkeypatch, start):
    """jupyter_client picks a kernel's ports in the pool's process and the kernel binds them later:
    a port another process took in between kills the kernel at start (seen under Ray: `ZMQError:
    Address already in use`; the forked kernel then hung in ZeroMQ's exit handlers until the
    60 s start timeout failed the task). The pool starts another with new ports and the task runs;
    a forked kernel exits at once (the hang, 15 times the normal start, is what the time bound
    catches), a spawned one still hangs in ipykernel's own exit and is replaced at the timeout."""
    import socket

    from qsdk.execution import kernels

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    made: list[object] = []
    real_init = kernels._PooledKernelManager.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)
        if len(made) == 1:
            self.cache_ports = False  # use the ports set here (else the provisioner picks them)
            self.iopub_port = taken.getsockname()[1]  # the first start's port is already taken

    monkeypatch.setattr(kernels._PooledKernelManager, "__init__", init)
    nb = write_notebook(tmp_path / "nbs" / "ok.ipynb", "value: int = 0", "print('ran', value)")
    started = time.monotonic()
    try:
        with KernelPool(0, cwd=tmp_path, start=start, startup_timeout=60 if start == "fork" else 20) as pool:
            result = pool.run_task(_task(tmp_path, nb, "ok"))
    finally:
        taken.close()
    assert result.status == "succeeded", result.error
    assert len(made) == 2  # the dead start, and the one that ran the notebook
    if start == "fork":
        assert time.monotonic() - started < 45, "the dead kernel was only noticed at the start timeout"
