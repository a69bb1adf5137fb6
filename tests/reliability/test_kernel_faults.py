"""A stage's kernel dies or hangs while the stage is writing: nothing half-written is committed.

A stage's ``write_table`` calls are staged and committed only after the whole notebook
succeeded (:mod:`qsdk.lakehouse.staging`). These tests kill the kernel after it staged a
write (from inside, ``os.kill(os.getpid(), 9)``, and from outside, while a cell runs) and
let a cell overrun the stage ``timeout:``; each time the table keeps its version and rows,
the flow fails with its own reason, and a re-run writes exactly the expected rows.
(``sys.exit(0)`` before writing: tests/integration/test_stage_contract.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from tests.reliability.conftest import NOTEBOOK_RENDEZVOUS, TableState, state

COLS = {"date": "date", "v": "int64"}
PARAMS = ('start: "date" = "2020-01-01"\nend: "date" = "2021-12-31"\nvalue: int = 1\n'
          "die: bool = False\nport: int = 0")
WRITE = """import pandas as pd, qsdk
df = pd.DataFrame({"date": pd.date_range(start, end, freq="D").date, "v": value})
qsdk.write_table("silver.t", df, mode="overwrite", predicate=qsdk.between("date", start, end))"""
DAYS = 366 + 365  # 2020 is a leap year


def _project(project, *cells: str, **spec):
    return (project.table("silver.t", COLS, primary_key=["date"])
            .stage("w", PARAMS, WRITE, *cells, outputs=["silver.t"], **spec)
            .flow("f", ["w"]).sdk())


def _run(sdk, **params):
    return sdk.run_pipeline("f", params=params, executor="local", raise_on_failure=False,
                            track=False, cache=False)


def _values(sdk) -> set[int]:
    return set(sdk.lakehouse.read("silver.t", columns=["v"]).column("v").to_pylist())


def _seed(sdk) -> None:
    assert _run(sdk, value=1).status == "succeeded"
    assert state(sdk.lakehouse, "silver.t") == TableState(0, DAYS)


def _error(result):
    assert result.status == "failed"
    (failed,) = result.failures
    return failed.error


def test_kernel_killing_itself_after_staging_a_write_commits_nothing(project):
    sdk = _project(project, "import os\nif die:\n    os.kill(os.getpid(), 9)")
    _seed(sdk)

    result = _run(sdk, value=2, die=True)
    err = _error(result)
    assert err.reason == "kernel_died" and err.ename == "DeadKernelError"
    assert "the kernel died" in str(err) and err.stage == "w"
    manifest = json.loads((Path(result.run_dir) / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["stages"]["w"]["errors"][0]["reason"] == "kernel_died"
    assert state(sdk.lakehouse, "silver.t") == TableState(0, DAYS)  # the staged write was dropped
    assert _values(sdk) == {1}

    assert _run(sdk, value=2).status == "succeeded"  # the re-run completes, exactly once
    assert state(sdk.lakehouse, "silver.t") == TableState(1, DAYS) and _values(sdk) == {2}


def test_kernel_killed_from_outside_while_a_cell_runs_commits_nothing(project, rendezvous):
    sdk = _project(project, "if die:\n" + "\n".join("    " + line for line in NOTEBOOK_RENDEZVOUS.splitlines()))
    _seed(sdk)

    results = []
    runner = threading.Thread(target=lambda: results.append(_run(sdk, value=2, die=True, port=rendezvous.port)))
    runner.start()
    try:
        _, pid = rendezvous.wait()  # the kernel staged its write and now blocks in a cell
        kernel = psutil.Process(pid)
        assert kernel.pid in {p.pid for p in psutil.Process().children(recursive=True)}  # our kernel
        os.kill(pid, signal.SIGKILL)
    finally:
        runner.join(timeout=180)
    err = _error(results[0])
    assert err.reason == "kernel_died" and "the kernel died" in str(err)
    assert state(sdk.lakehouse, "silver.t") == TableState(0, DAYS) and _values(sdk) == {1}

    assert _run(sdk, value=3).status == "succeeded"
    assert state(sdk.lakehouse, "silver.t") == TableState(1, DAYS) and _values(sdk) == {3}


def test_cell_running_past_the_stage_timeout_is_a_failed_stage(project):
    sdk = _project(project, "import time\nif die:\n    time.sleep(300)", timeout=10)
    _seed(sdk)

    err = _error(_run(sdk, value=2, die=True))
    assert err.reason == "timeout" and err.ename == "CellTimeoutError"
    assert "cell 2 (`import time`) ran longer than the stage timeout of 10.0 s" in str(err)
    assert err.cell_index == 2  # in the stage's own notebook: parameters, write, then the sleeping cell
    assert state(sdk.lakehouse, "silver.t") == TableState(0, DAYS) and _values(sdk) == {1}


OWNER = """import json, sys, time
from qsdk.execution.kernels import KernelPool
pool = KernelPool(2, cwd=sys.argv[1], start="fork")
pool.wait_ready()
pool.acquire()  # one kernel handed out (as to a running task), two spares started behind it
pool.wait_ready()
print(json.dumps({"zygote": pool.zygote_pid}), flush=True)
time.sleep(600)
"""


def _kernels_of(zygote: int) -> list[psutil.Process]:
    kernels = psutil.Process(zygote).children()
    assert psutil.Process(zygote).name() == "qsdk-zygote"
    assert kernels and all(k.name() == "qsdk-kernel" for k in kernels)  # forked kernels, named so
    return kernels


def _gone(procs: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


@pytest.mark.parametrize("also_the_zygote", [False, True], ids=["owner", "owner_and_zygote"])
def test_forked_kernels_die_with_the_process_that_owns_their_pool(tmp_path, also_the_zygote):
    """A SIGKILL of the process owning the pool (a Ray worker, a `qsdk run` driver) leaves no kernel
    behind: not a spare, not the one handed out, also when the zygote is killed with it."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        zygote = psutil.Process(json.loads(owner.stdout.readline())["zygote"])
        kernels = _kernels_of(zygote.pid)
        assert len(kernels) == 3
        if also_the_zygote:
            zygote.kill()
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
        assert _gone([*kernels, zygote]) == []
    finally:
        owner.kill()
        owner.wait()
