"""Fixtures for the loopback services (imported by tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    proc = subprocess.Popen([sys.executable, "-m", "tests.services.s3server", "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the test S3 server did not start (said {line!r}, exit {proc.poll()})")
    server = S3Server(line.split()[-1], BUCKET, proc)
    _create_bucket(server)
    return server


def _create_bucket(server: S3Server) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id="qsdk-test", aws_secret_access_key="qsdk-test-secret")
    for attempt in range(50):
        try:
            client.create_bucket(Bucket=server.bucket)
            return
        except Exception:  # noqa: BLE001 (the server is still starting: retried, then raised)
            if attempt == 49:
                raise
            time.sleep(0.1)


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



