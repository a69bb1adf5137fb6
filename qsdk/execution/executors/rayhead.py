"""A long-lived local Ray head per project: started by the first Ray run, joined by later ones.

Starting an embedded Ray costs about 8 s and stopping it 1.5 s, on every command. Instead the
first run on Ray starts a *head*: a detached process (``python -m
qsdk.execution.executors.rayhead serve``) that starts a local Ray exactly as the embedded one
is started (sized to the machine, no dashboard, every server on 127.0.0.1:
:func:`qsdk.execution.executors.rayenv.embedded_environment`), writes its address, and stays up;
later runs attach to it (``ray.init(address=...)``) and detach when done. It stops itself after
``idle_timeout`` seconds without an attached run (default :data:`IDLE_TIMEOUT`,
``$QSDK_RAY_IDLE_TIMEOUT``), or on ``qsdk ray stop``; ``qsdk ray status`` shows it.

Per project: the head's state (``head.json``: address, pid, project; ``head.log``; Ray's own
session folder) lives in a folder keyed by the project's path under the system temp dir
(:func:`state_dir`; short, because Ray puts Unix sockets in it), so two checkouts never share
a head. A run attached to the head holds a *lease* (a file named by its pid) while it runs;
the head counts a lease whose process died as gone.

Only :func:`serve` imports Ray; :func:`ensure`, :func:`status` and :func:`stop` do not, so
``qsdk ray status`` is instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from qsdk import localservice
from qsdk.errors import ConfigError
from qsdk.execution.executors.rayenv import (
    LOCAL_SYSTEM_CONFIG,
    OBJECT_STORE_BYTES,
    embedded_environment,
    shutdown_ray,
)

IDLE_TIMEOUT = 900.0  # seconds without an attached run before the head stops itself
ENV_IDLE_TIMEOUT = "QSDK_RAY_IDLE_TIMEOUT"
START_TIMEOUT = 420.0  # how long a run waits for a new head to come up (a loaded machine is slow)
_POLL = 1.0  # how often the head looks at its leases
_MODULE = "qsdk.execution.executors.rayhead"
_SYSTEM_CONFIG = {**LOCAL_SYSTEM_CONFIG, "task_oom_retries": 1}  # as the embedded Ray
# On a loaded machine Ray's raylet may give up waiting for its agents ("Timed out waiting for
# file .../metrics_agent_port", after about 15 s) and the node fails to start: a head starts
# once for many runs, so it tries again.
_START_ATTEMPTS = 3


@dataclass(frozen=True)
class HeadInfo:
    """What ``head.json`` says about a running head."""

    address: str  # the GCS address runs join: 127.0.0.1:PORT
    pid: int  # the head process (its Ray processes die with it)
    project: str
    started: float  # time.time()
    idle_timeout: float
    num_cpus: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_dir(project_root: str | Path) -> Path:
    """The folder of ``project_root``'s head: ``$TMPDIR/qsdk-ray-<uid>/<hash of the path>``."""
    key = hashlib.sha256(str(Path(project_root).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"qsdk-ray-{os.getuid()}" / key


def idle_timeout_default() -> float:
    return localservice.seconds_from_env(ENV_IDLE_TIMEOUT, IDLE_TIMEOUT)


# ------------------------------------------------------------------ driver side (no Ray import)
Target = Literal["join", "head", "embedded"]
EMBEDDED = "embedded"  # --ray-address embedded, or $QSDK_RAY=embedded: a throw-away Ray per run
ENV_MODE = "QSDK_RAY"
ENV_ADDRESS = "RAY_ADDRESS"


def target(address: str | None, *, project_root: str | Path | None,
           env: Mapping[str, str]) -> tuple[Target, str | None]:
    """How a run reaches Ray: ``("join", ADDR)``, ``("head", None)`` or ``("embedded", None)``.

    First match wins: an explicit address (``--ray-address``; ``embedded`` asks for the
    throw-away Ray), ``$RAY_ADDRESS``, ``$QSDK_RAY`` (``embedded`` or ``head``), then the
    project's long-lived head; without a project to key a head on, an embedded Ray.
    """
    chosen = address or env.get(ENV_ADDRESS)
    if chosen:
        return ("embedded", None) if chosen == EMBEDDED else ("join", chosen)
    mode = env.get(ENV_MODE, "head") or "head"
    if mode not in ("head", EMBEDDED):
        raise ConfigError(f"${ENV_MODE}={mode!r}: use 'head' (a long-lived local Ray per project, the "
                          "default) or 'embedded' (a throw-away Ray per run)", variable=ENV_MODE)
    if mode == EMBEDDED or project_root is None:
        return "embedded", None
    return "head", None


def status(project_root: str | Path) -> HeadInfo | None:
    """The running head of ``project_root``, or ``None`` (a stale ``head.json`` is removed)."""
    folder = state_dir(project_root)
    try:
        info = HeadInfo(**json.loads((folder / "head.json").read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    if _is_head(info.pid):
        return info
    with contextlib.suppress(FileNotFoundError):
        (folder / "head.json").unlink()
    return None


def ensure(project_root: str | Path, *, num_cpus: int | None = None,
           idle_timeout: float | None = None) -> HeadInfo:
    """The head of ``project_root``, started (and waited for) if none runs."""
    folder = state_dir(project_root)
    folder.mkdir(parents=True, exist_ok=True)
    with localservice.locked(folder):  # two runs starting at once start one head
        info = status(project_root)
        if info is not None:
            return info
        return _start(folder, Path(project_root).resolve(), num_cpus=num_cpus or os.cpu_count() or 1,
                      idle_timeout=idle_timeout or idle_timeout_default())


def stop(project_root: str | Path, *, timeout: float = 60.0) -> HeadInfo | None:
    """Stop ``project_root``'s head (SIGTERM: Ray shuts down cleanly); ``None`` if none ran."""
    info = status(project_root)
    if info is None:
        return None
    # SIGTERM: Ray shuts down cleanly; else its own session: the head and what it started
    localservice.terminate(info.pid, _MODULE, timeout=timeout, group=True)
    with contextlib.suppress(FileNotFoundError):
        (state_dir(project_root) / "head.json").unlink()
    return info


@contextlib.contextmanager
def lease(project_root: str | Path) -> Iterator[None]:
    """Hold the head up while a run is attached (the lease is a file named by our pid)."""
    path = state_dir(project_root) / "leases" / str(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(time.time()))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _touch(state_dir(project_root) / "last_used")


def take_lease(project_root: str | Path) -> contextlib.ExitStack:
    """:func:`lease` held until the returned stack is closed (for ``init``/``finalize`` pairs)."""
    stack = contextlib.ExitStack()
    stack.enter_context(lease(project_root))
    return stack


def _start(folder: Path, project: Path, *, num_cpus: int, idle_timeout: float) -> HeadInfo:
    env = dict(os.environ)
    env["PYTHONPATH"] = localservice.pythonpath()
    env.pop("RAY_ADDRESS", None)
    _touch(folder / "last_used")
    with open(folder / "head.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qsdk.execution.executors.rayhead", "serve", "--state", str(folder),
             "--project", str(project), "--num-cpus", str(num_cpus), "--idle-timeout", str(idle_timeout)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(folder),
            start_new_session=True,  # not stopped by the Ctrl-C that stops the run that started it
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        info = status(project)
        if info is not None and info.pid == proc.pid:
            return info
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    else:
        proc.kill()
    tail = (folder / "head.log").read_text(errors="replace")[-2000:]
    raise ConfigError(
        f"the local Ray head for {project} did not start (exit code {proc.poll()}); its log "
        f"{folder / 'head.log'} ends with:\n{tail}\nrun with --ray-address embedded (or "
        "QSDK_RAY=embedded) to use a throw-away Ray instead", project=str(project))


def _is_head(pid: int) -> bool:
    return localservice.runs(pid, _MODULE)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


# ------------------------------------------------------------------ the head process
def _live_leases(folder: Path) -> int:
    live = 0
    for path in (folder / "leases").glob("*"):
        try:
            os.kill(int(path.name), 0)
            live += 1
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)  # its run died without letting go
        except PermissionError:
            live += 1
    return live


def serve(folder: Path, project: Path, *, num_cpus: int, idle_timeout: float) -> None:
    """Start Ray, publish its address, and keep it up until idle for ``idle_timeout`` seconds."""
    import logging

    import ray


    stopping = False

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            with embedded_environment():
                ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                         _temp_dir=str(folder / "ray"), _system_config=_SYSTEM_CONFIG,
                         log_to_driver=False, logging_level=logging.ERROR, namespace="qsdk")
            break
        except Exception as exc:  # Ray raises a bare Exception when its node does not come up in time
            shutdown_ray()
            if attempt == _START_ATTEMPTS:
                raise
            print(f"qsdk ray head: Ray did not start ({exc}); attempt {attempt + 1} of {_START_ATTEMPTS}",
                  flush=True)
    signal.signal(signal.SIGTERM, on_term)  # after ray.init, which installs handlers of its own
    signal.signal(signal.SIGINT, on_term)
    info = HeadInfo(ray.get_runtime_context().gcs_address, os.getpid(), str(project), time.time(), idle_timeout,
                    num_cpus)
    tmp = folder / f".head.json.{os.getpid()}"
    tmp.write_text(json.dumps(info.to_dict()))
    os.replace(tmp, folder / "head.json")
    print(f"qsdk ray head {info.address} up for {project} (idle timeout {idle_timeout:g} s)", flush=True)
    try:
        while not stopping:
            time.sleep(_POLL)
            if _live_leases(folder):
                _touch(folder / "last_used")
                continue
            try:
                idle = time.time() - (folder / "last_used").stat().st_mtime
            except FileNotFoundError:
                idle = 0.0
                _touch(folder / "last_used")
            if idle >= idle_timeout:
                print(f"qsdk ray head idle for {idle:.0f} s: stopping", flush=True)
                break
    finally:
        with contextlib.suppress(FileNotFoundError):
            if json.loads((folder / "head.json").read_text()).get("pid") == os.getpid():
                (folder / "head.json").unlink()
        shutdown_ray()
        print("qsdk ray head stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qsdk.execution.executors.rayhead")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--state", required=True)
    s.add_argument("--project", required=True)
    s.add_argument("--num-cpus", type=int, required=True)
    s.add_argument("--idle-timeout", type=float, required=True)
    args = parser.parse_args(argv)
    serve(Path(args.state), Path(args.project), num_cpus=args.num_cpus, idle_timeout=args.idle_timeout)


if __name__ == "__main__":
    main()
