"""What the processes qsdk starts beside a run (the project's Ray head, Ray's workers, the tracking
agent and helper) share: the import path that makes them import this qsdk, a folder lock so two
commands start one long-lived process, an idle timeout read from the environment, and whether a
pid is still that process (a pid can be reused once it has died)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from qsdk.errors import ConfigError

SOURCE_ROOT = str(Path(__file__).resolve().parents[1])  # the folder holding this qsdk package


def pythonpath() -> str:
    """``$PYTHONPATH`` for a process qsdk starts: this qsdk, from this source tree, first."""
    current = os.environ.get("PYTHONPATH")
    return os.pathsep.join([SOURCE_ROOT, current] if current else [SOURCE_ROOT])


def seconds_from_env(variable: str, default: float) -> float:
    """``$variable`` as a positive number of seconds, else ``default``; a bad value is a ``ConfigError``."""
    raw = os.environ.get(variable)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"${variable}={raw!r} is not a number of seconds; set it to e.g. {default:g}",
                          variable=variable) from None
    if value <= 0:
        raise ConfigError(f"${variable}={raw!r} must be more than 0 seconds", variable=variable)
    return value


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/lock`` (an exclusive ``flock``) for the block."""
    with open(folder / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def runs(pid: int, module: str) -> bool:
    """Is ``pid`` alive and ``python -m module serve ...``?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return module.encode() in cmdline and b"serve" in cmdline


def wait_gone(pid: int, module: str, timeout: float) -> bool:
    """Wait until :func:`runs` is false; ``False`` if ``timeout`` seconds passed first."""
    deadline = time.monotonic() + timeout
    while runs(pid, module):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, module: str, *, timeout: float, group: bool = False) -> None:
    """SIGTERM ``pid``, then SIGKILL (its whole process group if ``group``) after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, module, timeout):
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        wait_gone(pid, module, 10)
