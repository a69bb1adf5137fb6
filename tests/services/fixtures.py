"""Fixtures for the loopback services (imported by tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
BUCKET = "qsdk-tests"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    process: subprocess.Popen[str]

    @property
    def env(self) -> dict[str, str]:
        """The variables a qsdk process (and every worker) needs to reach this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "qsdk-test",
                "AWS_SECRET_ACCESS_KEY": "qsdk-test-secret", "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true"}

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


def start_s3_server() -> S3Server:
    """Start ``tests.services.s3server`` on a free loopback port; wait until it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.services.s3server", "--port", "0",
                             "--bucket", BUCKET], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the test S3 server did not start (said {line!r}, exit {proc.poll()})")
    return S3Server(line.split()[-1], BUCKET, proc)


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop the process this fixture started (by its own pid), never anything else."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = start_s3_server()
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The store's variables set in this test's environment (inherited by its subprocesses)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_root(s3_env: S3Server) -> str:
    """A fresh, empty ``s3://`` lakehouse root for one test."""
    return s3_env.url("lake-" + uuid.uuid4().hex[:12])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])





@dataclass(frozen=True)
class MlflowServer:
    uri: str
    folder: Path  # its store and the artifacts it serves
    process: subprocess.Popen[str]


def start_mlflow_server(folder: Path, *, timeout: float = 180) -> MlflowServer:
    """Run ``make mlflow-server``'s own command on a free loopback port; wait until it answers."""
    import os
    import time
    import urllib.request

    port = free_port()
    recipe = subprocess.run(  # `make -n`: the target's commands, not run (-o: never reinstall)
        ["make", "-s", "-n", "-o", ".venv/.installed", "mlflow-server", f"MLFLOW_PORT={port}",
         f"MLFLOW_SERVER_DIR={folder}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    proc = subprocess.Popen(["bash", "-c", recipe.replace("\\\n", " ")], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return MlflowServer(uri, folder, proc)
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, 9) if proc.poll() is None else None
            raise RuntimeError(f"mlflow server did not answer on {uri} (exit {proc.poll()})")
        time.sleep(0.2)


def processes_naming(text: str) -> list[psutil.Process]:
    """Every other process whose command line contains ``text`` (a test's private temp folder)."""
    return [proc for proc in psutil.process_iter(["cmdline"])
            if proc.pid != os.getpid() and text in " ".join(proc.info["cmdline"] or [])]


def stop_processes(procs: list[psutil.Process]) -> None:
    """Terminate these processes and their children; kill what is left after 10 s."""
    every = set(procs)
    for proc in procs:
        try:
            every |= set(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for proc in every:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(every), timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def stop_group(proc: subprocess.Popen[str]) -> None:
    """Stop the process group this fixture started (the server and its workers), nothing else."""
    import os
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture
def mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    """A tracking server serving its artifacts; MLFLOW_TRACKING_URI points at it for the test."""
    server = start_mlflow_server(tmp_path / "mlflow-server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    try:
        yield server
    finally:
        stop_group(server.process)
