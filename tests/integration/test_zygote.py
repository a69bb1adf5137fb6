"""Kernels forked from the pool's zygote (``start="fork"``): the same kernel as a new interpreter,
a fresh process per task, the pool's timeouts, interrupts and kills unchanged, and a fallback to
new interpreters when the zygote dies."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from qsdk.errors import ConfigError
from qsdk.execution.kernels import KernelPool
from qsdk.execution.zygote import kernel_start
from tests.conftest import write_notebook
from tests.integration.test_kernels import _printed, _task

# what a new interpreter and a forked kernel must agree on, printed by the notebook
SAME = """import json, os, sys
import numpy as np, pandas as pd
import matplotlib.pyplot as plt
frame = pd.DataFrame({"x": [1, 2, 3], "y": [value, value * 2, value * 3]})
display(frame)
plt.plot(frame["x"], frame["y"])
plt.show()
print(json.dumps({"value": value, "cwd": os.getcwd(), "path": sys.path, "argv0": os.path.basename(sys.argv[0]),
                  "env": sorted(k for k in os.environ if not k.startswith("JPY_")),
                  "context": os.environ.get("QSDK_CONTEXT", "").endswith("context.json"),
                  "started_by": os.environ.get("JPY_PARENT_PID"),
                  "main": type(sys.modules["__main__"]).__name__, "excepthook": sys.excepthook.__module__,
                  "stdout": type(sys.stdout).__name__, "sigint": str(__import__("signal").getsignal(2))}))"""


def _outputs(path: str) -> list[list[tuple[str, object]]]:
    """Each code cell's outputs: type and mime types, with the printed text parsed (pids, paths
    and connection files vary between any two kernels and are compared apart)."""
    nb = nbformat.read(path, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        seen: list[tuple[str, object]] = []
        for out in cell.outputs:
            if out.output_type == "stream":
                seen.append((out.name, json.loads(out.text.strip().splitlines()[-1])))
            else:
                seen.append((out.output_type, sorted(out.get("data", {}))))
        cells.append(seen)
    return cells


def test_a_forked_kernel_runs_a_task_like_a_new_interpreter(tmp_path):
    nb = write_notebook(tmp_path / "nbs" / "same.ipynb", "value: int = 0", SAME)
    outputs, parents = {}, {}
    for start in ("spawn", "fork"):
        with KernelPool(1, cwd=tmp_path, start=start, preload=["numpy", "pandas", "matplotlib.pyplot"]) as pool:
            pool.wait_ready()
            km = pool.acquire(cwd=nb.parent)
            parents[start] = (psutil.Process(km.kernel_pid).ppid(), pool.zygote_pid)
            pool.release(km)
            result = pool.run_task(_task(tmp_path, nb, f"same_{start}", value=7))
            assert result.status == "succeeded", result.error
            outputs[start] = _outputs(result.notebook)
    assert parents["spawn"] == (os.getpid(), None)  # a new interpreter, started by this process
    assert parents["fork"][0] == parents["fork"][1] is not None  # forked by the zygote
    assert outputs["fork"] == outputs["spawn"]  # same outputs, same sys.path, env, cwd, handlers
    printed = outputs["fork"][-1][-1][1]
    assert printed["value"] == 7 and printed["cwd"] == str(nb.parent) and printed["context"] is True
    assert printed["started_by"] == str(os.getpid())  # JPY_PARENT_PID: the pool's process, as for a spawned kernel
    assert ("display_data", ["image/png", "text/plain"]) in outputs["fork"][-1]  # the inline figure


LEAK = """import json, os, sys
import numpy as np
found = {"var": "qsdk_mark" in globals(), "module": hasattr(np, "qsdk_mark"), "sys": hasattr(sys, "qsdk_mark"),
         "env": "QSDK_TEST_MARK" in os.environ}
qsdk_mark = 1
np.qsdk_mark = 1
sys.qsdk_mark = 1
os.environ["QSDK_TEST_MARK"] = "1"
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "found": found, "draw": float(np.random.rand())}))"""


def test_consecutive_forked_kernels_share_no_state(tmp_path):
    nb = write_notebook(tmp_path / "nbs" / "leak.ipynb", "value: int = 0", LEAK)
    with KernelPool(1, cwd=tmp_path, start="fork", preload=["numpy"]) as pool:
        runs = [_printed(pool.run_task(_task(tmp_path, nb, f"leak{i}")).notebook) for i in (1, 2, 3)]
        zygote = pool.zygote_pid
    assert len({r["pid"] for r in runs}) == 3  # a new process per task
    assert {r["ppid"] for r in runs} == {zygote}  # each forked by the one zygote
    for run in runs:  # a variable, a module attribute, sys, the environment: nothing set by a task leaks
        assert run["found"] == {"var": False, "module": False, "sys": False, "env": False}
    assert len({r["draw"] for r in runs}) == 3  # numpy's global random state is reseeded per kernel


ENV_PROBE = """import json, os
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "mark": os.environ.get("QSDK_ZYGOTE_TEST"),
                  "cwd": os.getcwd(), "context": os.environ.get("QSDK_CONTEXT")}))"""


def test_forked_kernels_take_each_tasks_environment_and_folder(tmp_path, monkeypatch):
    nb = write_notebook(tmp_path / "nbs" / "env.ipynb", "value: int = 0", ENV_PROBE)
    monkeypatch.setenv("QSDK_ZYGOTE_TEST", "one")
    with KernelPool(0, cwd=tmp_path, start="fork") as pool:
        first = _printed(pool.run_task(_task(tmp_path, nb, "env1")).notebook)
        monkeypatch.setenv("QSDK_ZYGOTE_TEST", "two")  # the pool's environment changed: a new zygote
        second = _printed(pool.run_task(_task(tmp_path, nb, "env2")).notebook)
        assert pool.start == "fork"
    assert (first["mark"], second["mark"]) == ("one", "two")
    assert first["ppid"] != second["ppid"]  # the zygote was restarted with the new environment
    for out, name in ((first, "env1"), (second, "env2")):
        assert out["cwd"] == str(nb.parent)
        assert out["context"] == str(tmp_path / "staging" / name / "context.json")


def test_a_forked_kernel_killed_mid_task_is_a_kernel_died_failure_and_the_next_task_runs(tmp_path):
    nb = write_notebook(tmp_path / "nbs" / "die.ipynb", "die: bool = False",
                        "import os\nif die:\n    os.kill(os.getpid(), 9)", ENV_PROBE)
    with KernelPool(1, cwd=tmp_path, start="fork") as pool:
        killed = pool.run_task(_task(tmp_path, nb, "die", die=True))
        after = pool.run_task(_task(tmp_path, nb, "after", die=False))
        zygote = pool.zygote_pid
    assert killed.status == "failed"
    assert (killed.error.reason, killed.error.ename) == ("kernel_died", "DeadKernelError")
    assert after.status == "succeeded", after.error
    assert _printed(after.notebook)["ppid"] == zygote


def test_a_forked_kernel_is_interrupted_and_killed_on_timeouts(tmp_path):
    slow = write_notebook(tmp_path / "nbs" / "slow.ipynb", "n: int = 5", "import time; time.sleep(60)")
    cells = write_notebook(tmp_path / "nbs" / "cells.ipynb", "n: int = 5",
                           *["import time; time.sleep(1.0); print('ran')"] * 5)
    with KernelPool(0, cwd=tmp_path, start="fork") as pool:
        km = pool.acquire()
        kc = km.client()
        kc.start_channels()
        try:
            msg_id = kc.execute("import time; time.sleep(60)")
            time.sleep(1.0)
            pool._run(km.interrupt_kernel())  # SIGINT to the kernel's process group, by the provisioner
            reply = pool._run(_reply(kc, msg_id))
        finally:
            pool.release(km)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        cell = pool.run_task(_task(tmp_path, slow, "slow", timeout=2.0))
        wall = pool.run_task(_task(tmp_path, cells, "cells", timeout=2.0), grace=0.3)
        assert pool.start == "fork"
    assert (cell.error.reason, cell.error.ename) == ("timeout", "CellTimeoutError")
    assert (wall.error.reason, wall.error.ename) == ("timeout", "WallClockTimeout")


async def _reply(kc, msg_id: str) -> dict:
    while True:
        reply = await kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


WAIT = """import json, os, time
from pathlib import Path
Path(flag).write_text(str(os.getpid()))
while not Path(flag + ".go").exists():
    time.sleep(0.05)
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid()}))"""


def test_the_zygote_dying_mid_run_loses_no_task_and_later_kernels_are_spawned(tmp_path, caplog):
    nb = write_notebook(tmp_path / "nbs" / "wait.ipynb", 'flag: str = ""', WAIT)
    flag = str(tmp_path / "running")
    results = []
    caplog.set_level(logging.WARNING, logger="qsdk.execution.kernels")
    with KernelPool(0, cwd=tmp_path, start="fork") as pool:
        runner = threading.Thread(target=lambda: results.append(pool.run_task(_task(tmp_path, nb, "w1", flag=flag))))
        runner.start()
        try:
            deadline = time.monotonic() + 120
            while not Path(flag).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            zygote = pool.zygote_pid
            assert zygote is not None and int(Path(flag).read_text()) in {
                p.pid for p in psutil.Process(zygote).children()}
            os.kill(zygote, signal.SIGKILL)  # mid-task
            psutil.Process(zygote).wait(timeout=10)
        finally:
            Path(flag + ".go").write_text("")
            runner.join(timeout=120)
        (tmp_path / "second.go").write_text("")  # the next task need not wait
        after = pool.run_task(_task(tmp_path, nb, "w2", flag=str(tmp_path / "second")))
        assert pool.start == "spawn" and pool.zygote_pid is None
    assert results[0].status == "succeeded", results[0].error  # the running task survived its zygote
    assert after.status == "succeeded", after.error
    assert _printed(after.notebook)["ppid"] == os.getpid()  # a new interpreter, started by the pool
    said = [r.getMessage() for r in caplog.records if "new interpreters" in r.getMessage()]
    assert len(said) == 1 and "zygote" in said[0]  # why, said once


def test_the_kernel_start_mode_is_checked(monkeypatch):
    monkeypatch.setenv("QSDK_KERNEL_START", "clone")
    with pytest.raises(ConfigError) as err:
        kernel_start()
    assert "QSDK_KERNEL_START='clone' is not a kernel start mode; use one of fork, spawn" in str(err.value)
    assert kernel_start("spawn") == "spawn"
    monkeypatch.delenv("QSDK_KERNEL_START")
    assert kernel_start() == "fork"
