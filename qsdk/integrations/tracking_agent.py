"""The process that does the tracking: one run's helper, or a long-lived agent that serves many runs.

:class:`~qsdk.integrations.tracker.BackgroundTracking` sends a hook's calls, pickled, to a
process that runs them (:func:`serve_session`): MLflow's import (about 1.2 s) and the opening
of its store (about 0.8 s, mostly importing SQLAlchemy and alembic) happen there, beside the run.
On a trivial run that still outlasts the notebook: the commit waits for the run id the
tracker creates. So by default the process outlives the run:

* ``agent`` (default, ``$QSDK_TRACKER=agent``): the first tracked run starts an agent (``python
  -m qsdk.integrations.tracking_agent serve``, its own session, like the project's Ray head),
  which listens on a Unix socket in a folder only this user can enter
  (``$TMPDIR/qsdk-tracker-<uid>/<key>``), imports MLflow, SQLAlchemy and nbconvert once, keeps
  each store open, and serves every later run, one thread per run (the hooks' calls one at a
  time). It stops after ``$QSDK_TRACKER_IDLE_TIMEOUT`` seconds (default 900) without a run, or
  on ``qsdk tracker stop``.
* ``process`` (``$QSDK_TRACKER=process``): a helper per run, on the run's stdin/stdout pipes, as
  before the agent existed; also the fallback when no agent can be reached.

An agent serves only runs that would have started it the same way: the folder's ``key`` hashes
the Python executable, qsdk's source files (their paths, sizes and modification times) and the
part of the environment tracking reads (:data:`_SHARED`, :data:`_SHARED_PREFIXES`: MLflow's
settings, object stores' credentials, proxies, certificates, ``HOME``, ``PATH``). A run from
another environment, or after qsdk's code changed, starts its own agent; the old one stops when
idle. An agent that ends leaves no folder behind unless its log reports an error.

After a run's last call (its ``after_flow``) the session replies ``done`` (the run returns), then
renders and logs the executed notebooks' HTML, replies ``rendered`` and ends.

Only :func:`serve` imports MLflow; :func:`connect`, :func:`status` and :func:`stop` do not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

from qsdk import localservice
from qsdk.errors import ConfigError
from qsdk.execution import tracking_ref

Mode = Literal["agent", "process"]
ENV_MODE = "QSDK_TRACKER"
ENV_IDLE_TIMEOUT = "QSDK_TRACKER_IDLE_TIMEOUT"
IDLE_TIMEOUT = 900.0  # seconds without a run before an agent stops itself
START_TIMEOUT = 60.0  # how long a run waits for a new agent's socket (it listens before importing)
_MODULE = "qsdk.integrations.tracking_agent"
_SOURCE_ROOT = Path(localservice.SOURCE_ROOT)  # its qsdk/ files are part of an agent's key
# The environment an agent shares with the runs it serves: what MLflow, its artifact stores and
# their clients read (settings, credentials, proxies, certificates, files under $HOME), and what
# the agent runs (PATH for git, PYTHONPATH). Not the rest: a variable set per command (dvc
# repro's DVC_STAGE, make's MAKEFLAGS) would start an agent per command. Each run names its
# store, so MLFLOW_TRACKING_URI is left out.
_SHARED_PREFIXES = ("MLFLOW_", "AWS_", "AZURE_", "GOOGLE_", "GCS_", "GCE_", "DATABRICKS_", "HADOOP_",
                    "KRB5", "HF_", "SSL_", "REQUESTS_", "CURL_", "GIT_")
_SHARED = frozenset({"HOME", "USER", "PATH", "PYTHONPATH", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
                     "http_proxy", "https_proxy", "no_proxy", "all_proxy", "TZ", "LANG", "LC_ALL"})
_PER_RUN = frozenset({"MLFLOW_TRACKING_URI"})


# ------------------------------------------------------------------ driver side (no MLflow import)
def mode(env: dict[str, str] | None = None) -> Mode:
    """How tracked runs reach their tracking process: ``$QSDK_TRACKER``, default ``agent``."""
    raw = (os.environ if env is None else env).get(ENV_MODE, "agent") or "agent"
    if raw not in ("agent", "process"):
        raise ConfigError(f"${ENV_MODE}={raw!r}: use 'agent' (a long-lived tracking process shared by runs, "
                          "the default) or 'process' (a helper process per run)", variable=ENV_MODE)
    return raw  # type: ignore[return-value]


def idle_timeout_default() -> float:
    return localservice.seconds_from_env(ENV_IDLE_TIMEOUT, IDLE_TIMEOUT)


def key(env: dict[str, str] | None = None) -> str:
    """What an agent must share with a run to serve it (see the module docstring)."""
    env = dict(os.environ if env is None else env)
    digest = hashlib.sha256(sys.executable.encode())
    for name in sorted(env):
        if (name in _SHARED or name.startswith(_SHARED_PREFIXES)) and name not in _PER_RUN:
            digest.update(f"\0{name}={env[name]}".encode())
    package = _SOURCE_ROOT / "qsdk"
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        digest.update(f"\0{path.relative_to(package)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def root_dir() -> Path:
    """Where this user's agents keep their folders (short: a Unix socket path has 107 bytes)."""
    return Path(tempfile.gettempdir()) / f"qsdk-tracker-{os.getuid()}"


def state_dir(agent_key: str | None = None) -> Path:
    return root_dir() / (agent_key or key())


@dataclass(frozen=True)
class AgentInfo:
    """What ``agent.json`` says about a running agent."""

    pid: int
    key: str
    started: float  # time.time()
    idle_timeout: float
    socket: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def connect(*, idle_timeout: float | None = None) -> socket.socket:
    """A connection to this environment's agent, started (and waited for) if none runs.

    Raises ``OSError`` if none can be reached: the caller falls back to a helper per run.
    """
    folder = state_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder.parent, 0o700)  # the sockets take pickles: nobody else may reach them
    path = folder / "agent.sock"
    with contextlib.suppress(OSError):
        return _dial(path)
    with localservice.locked(folder):  # two runs starting at once start one agent
        with contextlib.suppress(OSError):
            return _dial(path)
        proc = _start(folder, idle_timeout=idle_timeout or idle_timeout_default())
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                return _dial(path)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise OSError(f"the tracking agent did not start (see {folder / 'agent.log'})") from None
                time.sleep(0.01)


def status(agent_key: str | None = None) -> AgentInfo | None:
    """The running agent of this environment (or of ``agent_key``), or ``None``."""
    try:
        info = AgentInfo(**json.loads((state_dir(agent_key) / "agent.json").read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return info if _is_agent(info.pid) else None


def running() -> list[AgentInfo]:
    """Every running agent of this user, whatever its environment."""
    found = (status(folder.name) for folder in sorted(root_dir().glob("*")) if folder.is_dir())
    return [info for info in found if info is not None]


def stop(agent_key: str | None = None, *, timeout: float = 30.0) -> AgentInfo | None:
    """Stop this environment's agent (or ``agent_key``'s); renderings it had not logged are lost."""
    info = status(agent_key)
    if info is None:
        return None
    localservice.terminate(info.pid, _MODULE, timeout=timeout)
    return info


def _dial(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def _start(folder: Path, *, idle_timeout: float) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = localservice.pythonpath()
    with open(folder / "agent.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", _MODULE, "serve", "--state", str(folder),
             "--idle-timeout", str(idle_timeout)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(folder),
            start_new_session=True,  # not stopped by the Ctrl-C that stops the run that started it
        )


def _is_agent(pid: int) -> bool:
    return localservice.runs(pid, _MODULE)


# ------------------------------------------------------------------ the tracking process
def serve_session(inbox: IO[bytes], outbox: IO[bytes], *, calls_lock: Any = None,
                  before_render: Any = None) -> None:
    """One run: the calls from ``inbox`` on the hook sent first (``warm`` it while nothing waits);
    ``done`` after ``after_flow``; at the end of ``inbox``, render the deferred HTML and reply
    ``rendered``. ``calls_lock`` serialises the hook calls of an agent's concurrent runs
    (``warnings.catch_warnings`` is process-wide); ``before_render`` runs before rendering."""
    hook, run_dir = _serve(inbox, outbox, calls_lock or contextlib.nullcontext())
    if hook is not None and run_dir is not None and hasattr(hook, "render_deferred"):
        if before_render is not None:
            before_render()
        try:
            hook.render_deferred()
        except Exception:  # the run has returned: say it in the run's folder
            import traceback

            with open(run_dir / "tracking.log", "a", encoding="utf-8") as log:
                log.write("qsdk: logging the executed notebooks' HTML failed:\n" + traceback.format_exc())
    _reply(outbox, ("rendered", None))


def _serve(inbox: IO[bytes], outbox: IO[bytes], lock: Any) -> tuple[Any, Path | None]:
    calls: queue.Queue[tuple[str, dict[str, Any], str | None] | None] = queue.Queue()

    def read() -> None:
        while True:
            try:
                calls.put(pickle.load(inbox))
            except (EOFError, OSError, pickle.UnpicklingError):
                calls.put(None)
                return

    threading.Thread(target=read, name="qsdk-tracker-read", daemon=True).start()
    hook: Any = None
    run_dir: Path | None = None
    warmed = False
    while True:
        try:
            item = calls.get_nowait()
        except queue.Empty:
            if hook is not None and not warmed and hasattr(hook, "warm"):
                warmed = True
                with lock:
                    _call(hook.warm, {}, outbox)
                continue
            item = calls.get()
        if item is None:
            return hook, run_dir
        method, kwargs, reply_to = item
        if method == "init":
            hook = kwargs["hook"]
            if hasattr(hook, "defer_html"):
                hook.defer_html()
            continue
        with lock:
            value = _call(getattr(hook, method), kwargs, outbox)
        if reply_to is not None:
            tracking_ref.publish(reply_to, value)
        if method == "after_flow":
            _reply(outbox, ("extra", dict(kwargs["result"].extra)))
            _reply(outbox, ("done", None))
            run_dir = Path(kwargs["run"].run_dir)


def _call(fn: Any, kwargs: dict[str, Any], outbox: IO[bytes]) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn(**kwargs)
        except Exception as exc:  # a hook must not take the run down: say it, go on
            value = None
            caught.append(warnings.WarningMessage(f"qsdk: tracking failed in {fn.__name__}: {exc!r}",
                                                  RuntimeWarning, __file__, 0))
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and str(w.message).startswith("qsdk:"):
            _reply(outbox, ("warning", str(w.message)))
    return value


def _reply(outbox: IO[bytes], message: tuple[str, Any]) -> None:
    """Send ``message``; a run that has gone (its process ended) no longer listens: fine."""
    with contextlib.suppress(OSError, ValueError):
        pickle.dump(message, outbox)
        outbox.flush()


def serve_stdio() -> None:
    """``python -m qsdk.integrations.tracking_agent`` (mode ``process``): one run on stdin/stdout."""
    outbox = os.fdopen(os.dup(1), "wb")  # stdout carries the replies: what a library prints goes to stderr
    os.dup2(2, 1)
    serve_session(sys.stdin.buffer, outbox, before_render=_detach)


def _detach() -> None:
    """Let go of the command's terminal and pipes: a caller that captures the command's output
    would otherwise wait for the renderings."""
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)


class _Agent:
    """The long-lived agent: accept runs on ``folder/agent.sock`` until idle for ``idle_timeout``."""

    def __init__(self, folder: Path, idle_timeout: float) -> None:
        self.folder, self.idle_timeout = folder, idle_timeout
        self.calls_lock = threading.Lock()
        self.active = 0
        self.last = time.monotonic()
        self.guard = threading.Lock()

    def serve(self) -> None:
        path = self.folder / "agent.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead agent's (connect() holds the folder's lock while we start)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(64)
        server.settimeout(1.0)
        identity = path.stat().st_ino
        info = AgentInfo(pid=os.getpid(), key=self.folder.name, started=time.time(),
                         idle_timeout=self.idle_timeout, socket=str(path))
        tmp = self.folder / f".agent.json.{os.getpid()}"
        tmp.write_text(json.dumps(info.to_dict()))
        os.replace(tmp, self.folder / "agent.json")
        threading.Thread(target=_preload, name="qsdk-tracker-preload", daemon=True).start()
        try:
            while not self._idle() and _still_ours(path, identity):
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with self.guard:
                    self.active += 1
                threading.Thread(target=self._session, args=(conn,), name="qsdk-tracker-run", daemon=True).start()
        finally:  # idle, or stopped (SIGTERM)
            server.close()
            if _still_ours(path, identity):
                _remove(self.folder)

    def _idle(self) -> bool:
        with self.guard:
            return self.active == 0 and time.monotonic() - self.last > self.idle_timeout

    def _session(self, conn: socket.socket) -> None:
        inbox, outbox = conn.makefile("rb"), conn.makefile("wb")
        try:
            serve_session(inbox, outbox, calls_lock=self.calls_lock)
        finally:
            for stream in (inbox, outbox):
                with contextlib.suppress(OSError):
                    stream.close()
            conn.close()
            with self.guard:
                self.active -= 1
                self.last = time.monotonic()


def _remove(folder: Path) -> None:
    """An ending agent's folder, unless its log reports an error (kept for the user; MLflow's
    INFO lines, such as creating a store's tables, are not worth a folder)."""
    try:
        text = (folder / "agent.log").read_text(errors="replace")
    except OSError:
        text = ""
    keep = "Traceback" in text or "ERROR" in text
    for name in ("agent.sock", "agent.json", *(() if keep else ("agent.log", "lock"))):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    if not keep:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _still_ours(path: Path, identity: int) -> bool:
    """Is ``path`` still the socket this agent bound (not removed, not another agent's)?"""
    try:
        return path.stat().st_ino == identity
    except OSError:
        return False


def _preload() -> None:
    """What every run's tracking needs, imported before the first run asks for it."""
    with contextlib.suppress(Exception):
        import mlflow  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        from nbconvert import HTMLExporter  # noqa: F401


def serve(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qsdk.integrations.tracking_agent")
    sub = parser.add_subparsers(dest="command")
    agent = sub.add_parser("serve")
    agent.add_argument("--state", required=True)
    agent.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT)
    args = parser.parse_args(argv)
    if args.command != "serve":
        serve_stdio()
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _Agent(Path(args.state), args.idle_timeout).serve()


if __name__ == "__main__":
    serve(sys.argv[1:])
