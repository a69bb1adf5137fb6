"""Services are private by default: everything a run starts listens on loopback only.

While a stage's notebook is held mid-run (it waits at a rendezvous), the test lists the
listening sockets of every process this test started: the kernel (local executor), Ray's GCS,
raylet, agents, workers and their kernels (Ray executor: embedded, and the project's long-lived
head, which is also inspected after the run left it), and the MLflow UI started with
``make mlflow-ui``'s own command line. No socket may listen on 0.0.0.0, :: or a public address.
The tracking agent listens on no network socket at all, only on a Unix socket only its user reaches.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.reliability.conftest import NOTEBOOK_RENDEZVOUS, TableState, state

HOLD = 'import pandas as pd, qsdk\nport = int(port)\n' + NOTEBOOK_RENDEZVOUS + \
    '\nqsdk.write_table("bronze.x", pd.DataFrame({"k": [1, 2, 3]}))'


def listening(root: psutil.Process) -> dict[tuple[int, str], set[tuple[str, int]]]:
    """``{(pid, name): {(ip, port)}}`` of the server sockets of ``root`` and its descendants:
    listening, or bound and not connected (about to listen; or UDP)."""
    found: dict[tuple[int, str], set[tuple[str, int]]] = defaultdict(set)
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns, name = proc.net_connections(kind="inet"), proc.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for conn in conns:
            if conn.status in (psutil.CONN_LISTEN, psutil.CONN_NONE) and not conn.raddr:
                found[(proc.pid, name)].add((conn.laddr.ip, conn.laddr.port))
    return dict(found)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1
    return addr.is_loopback


def assert_private(sockets: dict[tuple[int, str], set[tuple[str, int]]]) -> None:
    public = {proc: addrs for proc, addrs in sockets.items() if not all(_loopback(ip) for ip, _ in addrs)}
    assert not public, f"listening beyond loopback: {public}"


def _wait_until_accepting(port: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # a readiness probe's interval


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _held_run(sdk, rendezvous, executor):
    """Start the flow in a thread; return (kernel pid, sockets while held, run result)."""
    results = []
    runner = threading.Thread(target=lambda: results.append(sdk.run_pipeline(
        "f", params={"port": str(rendezvous.port)}, executor=executor, track=False, cache=False)))
    runner.start()
    try:
        conn, kernel_pid = rendezvous.wait(timeout=300)
        sockets = listening(psutil.Process())
        rendezvous.release(conn)
    finally:
        runner.join(timeout=300)
    return kernel_pid, sockets, results[0]


@pytest.fixture
def sdk(project):
    return (project.table("bronze.x", {"k": "int64"})
            .stage("hold", 'port: str = "0"', HOLD, outputs=["bronze.x"]).flow("f", ["hold"]).sdk())


def test_kernels_of_a_local_run_listen_on_loopback_only(sdk, rendezvous):
    kernel_pid, sockets, result = _held_run(sdk, rendezvous, "local")
    assert result.status == "succeeded" and state(sdk.lakehouse, "bronze.x") == TableState(0, 3)
    (kernel,) = [addrs for (pid, _), addrs in sockets.items() if pid == kernel_pid]
    assert len(kernel) >= 5, sockets  # shell, iopub, stdin, control, heartbeat
    assert {ip for ip, _ in kernel} == {"127.0.0.1"}  # jupyter_client's default ip
    assert_private(sockets)


def test_ray_and_its_kernels_listen_on_loopback_only(sdk, rendezvous):
    ray = pytest.importorskip("ray")
    from qsdk.execution.executors.ray import RayExecutor

    if ray.is_initialized():
        pytest.fail("a Ray session is already running in this process: this test must start its own")
    kernel_pid, sockets, result = _held_run(sdk, rendezvous, RayExecutor(num_cpus=1))
    assert not ray.is_initialized()  # the executor shut down the Ray it started
    assert result.status == "succeeded" and state(sdk.lakehouse, "bronze.x") == TableState(0, 3)
    names = {name for _, name in sockets}
    assert kernel_pid in {pid for pid, _ in sockets}  # the kernel under the Ray worker was inspected
    assert {"gcs_server", "raylet", "ray::qsdk:hold"} <= names, names
    assert_private(sockets)


def test_a_long_lived_ray_head_and_its_kernels_listen_on_loopback_only(sdk, rendezvous, monkeypatch):
    """The project's Ray head (started by this run, left up after it) keeps every server on
    loopback too: its GCS, raylet, agents, the run's workers and their kernels."""
    pytest.importorskip("ray")
    from qsdk.execution.executors import rayhead

    monkeypatch.setenv("QSDK_RAY", "head")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    root = sdk.config.project_root
    assert rayhead.status(root) is None
    try:
        kernel_pid, sockets, result = _held_run(sdk, rendezvous, "ray")
        head = rayhead.status(root)
        assert head is not None  # the run started the head; it outlives the run
        after = listening(psutil.Process(head.pid))  # the head alone, once the run has left
    finally:
        rayhead.stop(root)  # the head of this test's project only
    assert result.status == "succeeded" and state(sdk.lakehouse, "bronze.x") == TableState(0, 3)
    names = {name for _, name in sockets}
    assert kernel_pid in {pid for pid, _ in sockets}  # the kernel under the head's worker was inspected
    assert {"gcs_server", "raylet", "ray::qsdk:hold"} <= names, names
    assert head.address.startswith("127.0.0.1:")
    assert_private(sockets)
    assert {"gcs_server", "raylet"} <= {name for _, name in after}, after
    assert_private(after)


def test_the_tracking_agent_listens_on_no_network_socket_and_only_its_user_reaches_it(
        sdk, rendezvous, store, own_agents):
    """The agent takes pickles: its Unix socket sits in a folder (and a parent) only its user can
    enter, and it opens no TCP or UDP server socket, during a run or after it."""
    from qsdk.integrations import tracking_agent

    results = []
    runner = threading.Thread(target=lambda: results.append(sdk.run_pipeline(
        "f", params={"port": str(rendezvous.port)}, executor="local", cache=False)))
    runner.start()
    try:
        conn, _ = rendezvous.wait(timeout=300)
        agent = tracking_agent.status()
        assert agent is not None  # the run reached (started) an agent
        during = listening(psutil.Process(agent.pid))
        rendezvous.release(conn)
    finally:
        runner.join(timeout=300)
    try:
        assert results[0].status == "succeeded" and results[0].extra.get("mlflow_run_id")
        after = listening(psutil.Process(agent.pid))
        folder = Path(agent.socket).parent
        unix = {c.laddr for c in psutil.Process(agent.pid).net_connections(kind="unix")}
        modes = {path: (path.stat().st_mode & 0o777, path.stat().st_uid) for path in (folder, folder.parent)}
    finally:
        tracking_agent.stop(agent.key)  # (an agent that ends removes its folder)
    assert during == {} and after == {}, (during, after)
    assert agent.socket in unix
    assert modes == {folder: (0o700, os.getuid()), folder.parent: (0o700, os.getuid())}, modes


def test_mlflow_ui_of_make_mlflow_ui_listens_on_loopback_only(tmp_path):
    port = free_port()
    # `make -n` prints the target's command line without running it (-o: never reinstall)
    recipe = subprocess.run(
        ["make", "-s", "-n", "-o", ".venv/.installed", "mlflow-ui", f"MLFLOW_PORT={port}", f"CURDIR={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--host 127.0.0.1" in recipe, recipe
    ui = subprocess.Popen(["bash", "-c", "exec " + recipe.replace("\\\n", " ").strip()], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in ui.stdout:  # uvicorn's announcement: its socket is bound (its workers listen next)
            if "running on" in line.lower():
                break
        else:
            pytest.fail(f"mlflow ui exited ({ui.wait()}) without listening")
        _wait_until_accepting(port, timeout=120)  # no event tells when a worker called listen()
        sockets = listening(psutil.Process(ui.pid))
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)
    assert port in {p for addrs in sockets.values() for _, p in addrs}, sockets
    assert_private(sockets)
