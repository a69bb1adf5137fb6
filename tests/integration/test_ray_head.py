"""The long-lived local Ray head (qsdk.execution.executors.rayhead) on a real Ray.

The first run on Ray starts the project's head, the next one joins it; the head stops itself
after its idle timeout, or on ``qsdk ray stop``. A run on the head still gives every task a
fresh kernel and still retries a killed worker. Every test stops the head of its own
temporary project (and only that one) whatever happens.
"""

from __future__ import annotations

import time

import pandas as pd
import psutil
import pytest

from qsdk import cli
from qsdk.errors import ConfigError
from qsdk.execution.executors import rayhead

pytest.importorskip("ray")

COLS = {"date": "date", "v": "int64", "kernel": "int64"}
YEARS = 'start: "date" = "2020-01-01"\nend: "date" = "2021-12-31"\nmarkers: str = ""'
KILL = """import os, pathlib, signal, time
marker = pathlib.Path(markers) / f"{start}.killed"
if markers and start.startswith("2021") and not marker.exists():  # first attempt only
    worker = int(os.environ["JPY_PARENT_PID"])  # the Ray worker running this task: it started the kernel
    marker.write_text(str(worker))  # (the kernel's parent, or its zygote's when the kernel was forked)
    os.kill(worker, signal.SIGKILL)
    time.sleep(60)"""
WRITE = """import os, pandas as pd, qsdk
df = pd.DataFrame({"date": pd.date_range(start, end, freq="MS"), "v": 1, "kernel": os.getpid()})
qsdk.write_table("bronze.k", df, mode="overwrite", predicate=qsdk.between("date", start, end))"""


def test_how_ray_is_reached_explicit_address_first_then_ray_address_then_qsdk_ray_then_the_head(tmp_path):
    root = tmp_path
    assert rayhead.target(None, project_root=root, env={}) == ("head", None)
    assert rayhead.target(None, project_root=None, env={}) == ("embedded", None)  # no project: no head
    assert rayhead.target(None, project_root=root, env={"QSDK_RAY": "embedded"}) == ("embedded", None)
    assert rayhead.target(None, project_root=root, env={"RAY_ADDRESS": "10.0.0.9:6379", "QSDK_RAY": "embedded"}) \
        == ("join", "10.0.0.9:6379")
    assert rayhead.target("10.0.0.1:6379", project_root=root, env={"RAY_ADDRESS": "10.0.0.9:6379"}) \
        == ("join", "10.0.0.1:6379")
    assert rayhead.target("embedded", project_root=root, env={"RAY_ADDRESS": "10.0.0.9:6379"}) == ("embedded", None)
    with pytest.raises(ConfigError, match="QSDK_RAY"):
        rayhead.target(None, project_root=root, env={"QSDK_RAY": "cluster"})
    # two checkouts never share a head
    assert rayhead.state_dir(tmp_path / "a") != rayhead.state_dir(tmp_path / "b")


@pytest.fixture
def head_project(project, monkeypatch):
    """A project whose runs on Ray use its long-lived head; the head is stopped at the end."""
    monkeypatch.setenv("QSDK_RAY", "head")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield project
    rayhead.stop(project.root)


def _tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def test_second_run_joins_the_head_fresh_kernels_retried_worker_and_idle_stop(head_project, tmp_path, monkeypatch):
    idle = 20.0
    monkeypatch.setenv(rayhead.ENV_IDLE_TIMEOUT, str(idle))
    sdk = (head_project.table("bronze.k", COLS, primary_key=["date"])
           .stage("k", YEARS, KILL, WRITE, outputs=["bronze.k"], partition={"by": "year"}, retries=1)
           .flow("f", ["k"]).sdk())
    assert rayhead.status(head_project.root) is None

    first = sdk.run_pipeline("f", params={"markers": str(tmp_path)}, executor="ray", track=False, cache=False)
    head = rayhead.status(head_project.root)
    assert head is not None and head.idle_timeout == idle
    assert head.address.startswith("127.0.0.1:")
    killed = int((tmp_path / "2021-01-01.killed").read_text())  # the first attempt killed its worker
    retried = next(r for r in first.results if r.partition.startswith("2021"))
    assert retried.status == "succeeded" and retried.extra["worker_pid"] != killed
    kernels_first = set(sdk.lakehouse.read("bronze.k").to_pandas()["kernel"])
    names = {p.name() for p in _tree(head.pid)}
    assert {"gcs_server", "raylet"} <= names, names  # Ray's processes belong to the head

    second = sdk.run_pipeline("f", executor="ray", track=False, cache=False)
    assert second.status == "succeeded"
    again = rayhead.status(head_project.root)
    assert again == head  # joined, not restarted
    rows = sdk.lakehouse.read("bronze.k").to_pandas()
    assert len(rows) == 24 and pd.Series(rows["date"]).is_unique
    kernels_second = set(rows["kernel"])
    # every task of both runs had its own kernel: none served two tasks
    assert len(kernels_first) == 2 and len(kernels_second) == 2 and not kernels_first & kernels_second
    assert {r.extra["node_id"] for r in second.results} == {r.extra["node_id"] for r in first.results}

    # idle: the head stops itself, with every Ray process it started
    ray_procs = _tree(head.pid)
    deadline = time.monotonic() + idle + 120
    while rayhead.status(head_project.root) is not None and time.monotonic() < deadline:
        time.sleep(1)
    assert rayhead.status(head_project.root) is None, "the head outlived its idle timeout"
    _, alive = psutil.wait_procs(ray_procs, timeout=60)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


def test_qsdk_ray_status_and_stop(head_project, capsys):
    root = str(head_project.save().root)
    assert cli.main(["--project", root, "ray", "status"]) == 1
    assert "no Ray head runs" in capsys.readouterr().out
    head = rayhead.ensure(root, idle_timeout=600)
    assert cli.main(["--project", root, "ray", "status"]) == 0
    out = capsys.readouterr().out
    assert head.address in out and f"pid {head.pid}" in out and "600 s" in out
    procs = _tree(head.pid)
    assert cli.main(["--project", root, "ray", "stop"]) == 0
    assert f"stopped the Ray head at {head.address}" in capsys.readouterr().out
    _, alive = psutil.wait_procs(procs, timeout=60)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    assert rayhead.status(root) is None
    assert cli.main(["--project", root, "ray", "stop"]) == 0
    assert "no Ray head runs" in capsys.readouterr().out
