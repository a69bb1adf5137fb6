"""Kernels forked from a pre-imported process (a "zygote"), not started as new interpreters.

A kernel started the usual way is a new Python process that imports ipykernel (about 0.5 s of
CPU) and then, warmed by :class:`~qsdk.execution.kernels.KernelPool`, pandas, pyarrow,
deltalake and qsdk (1 to 1.5 s more). With one fresh kernel per task, that is most of the CPU a
short partition costs. A :class:`Zygote` is one process per pool, started once, that imports
ipykernel and the pool's preload modules and then only forks: each child becomes a brand-new
kernel (``IPKernelApp`` with the connection file the kernel manager wrote), so every task still
gets a process of its own that no other task ran in, at the price of a ``fork``.

:class:`ForkProvisioner` plugs this into jupyter_client as a kernel provisioner: the pool's
kernel manager writes the connection file and builds the command as for any kernel, and the
provisioner hands the command, environment and folder to the zygote instead of ``Popen``.
jupyter_client then polls, signals, interrupts and kills the kernel through a Popen-like
handle holding a pidfd, so the pool's timeouts, stall recovery and kills work unchanged.

What a child does before it becomes a kernel (what a new interpreter would have had):

- its own session and process group (as jupyter_client's ``start_new_session``), stdin from
  ``/dev/null``, the kernel's environment (exactly the one asked for), folder and ``sys.argv``;
- default signal handlers, numpy's global random state reseeded (Python's ``random`` reseeds
  itself after a fork); no ZeroMQ context, event loop or Python thread exists in the zygote, so
  the kernel creates its own; deltalake's runtime is never started in the zygote (a check
  refuses to fork if a tokio thread exists). Native threads of numpy's OpenBLAS and of jemalloc
  (pyarrow, deltalake) are stopped or reset by those libraries' own at-fork handlers;
- a thread that kills the kernel's process group when the pool's process dies (a pidfd of the
  owner, polled): kernels never outlive their worker, also if the zygote died first. Kernels do
  not die with the zygote: a zygote that crashes mid-run leaves running tasks alone, and the
  pool starts later kernels the usual way (:class:`ForkProvisioner`, logged once).

Not the same as a new interpreter: the hash seed (``PYTHONHASHSEED``) and the address-space
layout are the zygote's, shared by its kernels; ``sys.orig_argv`` is the zygote's. A module
imported in the zygote ran before the kernel existed (no IPython shell, the real stdout): leave
a module that looks for IPython at import out of a stage's ``preload:``.

The environment a module sees at import is the zygote's; a kernel asked for with a different
environment (other than ``JPY_PARENT_PID``, which the child sets) restarts the zygote with it.

Protocol: JSON requests over a Unix ``SOCK_SEQPACKET`` socket pair, one reply each; a fork's
reply carries the child's pidfd (``SCM_RIGHTS``), opened by the zygote before it could reap
the child, so a signal through it can never reach a recycled pid.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from qsdk.errors import ConfigError, KernelPoolError

ENV_KERNEL_START = "QSDK_KERNEL_START"
KernelStart = Literal["fork", "spawn"]
KERNEL_STARTS: tuple[KernelStart, ...] = ("fork", "spawn")
DEFAULT_KERNEL_START: KernelStart = "fork"
# variables the kernel manager sets per kernel; the child sets them, the zygote need not match
PER_KERNEL_ENV = frozenset({"JPY_PARENT_PID"})
_MAX_MESSAGE = 1 << 20
_log = logging.getLogger(__name__)


def kernel_start(value: str | None = None) -> KernelStart:
    """The kernel start mode: ``value``, else ``$QSDK_KERNEL_START``, else ``fork``."""
    value = value or os.environ.get(ENV_KERNEL_START) or DEFAULT_KERNEL_START
    if value not in KERNEL_STARTS:
        raise ConfigError(f"{ENV_KERNEL_START}={value!r} is not a kernel start mode; use one of "
                          f"{', '.join(KERNEL_STARTS)} (fork: from a pre-imported zygote process; "
                          "spawn: a new interpreter per kernel)", variable=ENV_KERNEL_START)
    return value


def fork_unavailable() -> str | None:
    """Why kernels cannot be forked here, or None."""
    if not hasattr(os, "fork") or not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds"):
        return "this platform has no fork/pidfd_open (Linux 5.3+ is needed)"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as exc:
        return f"pidfd_open failed ({exc})"
    return None


# ------------------------------------------------------------------ the pool's side
class ForkedKernel:
    """A Popen-like handle on a kernel the zygote forked (what LocalProvisioner expects of
    ``process``); its pidfd keeps signals from reaching another process that got its pid."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, pidfd: int, zygote: Zygote) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = pidfd
        self._zygote = zygote
        self._lock = threading.Lock()  # the pool's loop and the task's thread both poll

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None and self._pidfd is not None:
                ready, _, _ = select.select([self._pidfd], [], [], 0)
                if ready:
                    self.returncode = self._zygote.exit_status(self.pid)
                    self._close()
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:  # short sleeps: the pidfd may be closed by another poll
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout or 0.0)
            time.sleep(0.05)
        return code

    def send_signal(self, signum: int) -> None:
        with self._lock:
            if self.returncode is None and self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def __del__(self) -> None:
        self._close()


class Zygote:
    """One zygote process for one pool: started with the environment of the first kernel asked
    for, told which modules to import (:meth:`preload`), asked to fork kernels (:meth:`fork`).

    Thread-safe: one request at a time. :meth:`fork` raises :class:`KernelPoolError` when the
    zygote cannot fork (dead, refused); the caller starts the kernel the usual way instead.
    """

    def __init__(self, *, cwd: str, preload: Sequence[str] = (), timeout: float = 120.0) -> None:
        self.cwd = cwd
        self.timeout = timeout  # for one request (a fork, or the imports before it): then it is dead to us
        self._preload: dict[str, None] = dict.fromkeys(preload)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._env: dict[str, str] | None = None
        self._imported: set[str] = set()
        self.pid: int | None = None

    # ---------------------------------------------------------------- public
    def preload(self, modules: Sequence[str]) -> None:
        """Import ``modules`` in the zygote too, before its next fork (never on the caller's
        thread: a task learning its modules must not wait for them)."""
        with self._lock:
            self._preload.update(dict.fromkeys(modules))

    def fork(self, cmd: Sequence[str], *, env: Mapping[str, str], cwd: str | None) -> ForkedKernel:
        """A new kernel process running ``cmd`` (an ``ipykernel_launcher`` command line)."""
        if len(cmd) < 3 or list(cmd[1:3]) != ["-m", "ipykernel_launcher"] \
                or os.path.realpath(cmd[0]) != os.path.realpath(sys.executable):
            raise KernelPoolError(f"only `{sys.executable} -m ipykernel_launcher` kernels can be forked, "
                                  f"not {list(cmd[:3])}")
        wanted = {k: v for k, v in env.items() if k not in PER_KERNEL_ENV}
        with self._lock:
            if self._sock is not None and wanted != self._env:
                _log.info("the kernel environment changed; restarting the kernel zygote")
                self._stop_locked()
            try:
                if self._sock is None:
                    self._start_locked(wanted)
                if len(self._imported) < len(self._preload):
                    self._import_locked()
                reply, fds = self._request({"op": "fork", "argv": list(cmd), "env": dict(env),
                                            "cwd": cwd or self.cwd}, fds=1)
            except KernelPoolError:
                self._stop_locked()
                raise
        return ForkedKernel(int(reply["pid"]), fds[0], self)

    def exit_status(self, pid: int) -> int:
        """A forked kernel's exit code as Popen reports it (-N: killed by signal N); -9 when the
        zygote is gone and cannot say."""
        with self._lock:
            if self._sock is None:
                return -signal.SIGKILL
            try:
                reply, _ = self._request({"op": "status", "pid": pid})
            except KernelPoolError:
                self._stop_locked()
                return -signal.SIGKILL
        code = reply.get("code")
        return -signal.SIGKILL if code is None else int(code)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        with self._lock:
            self._stop_locked()

    # ---------------------------------------------------------------- internals
    def _start_locked(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            code = f"from qsdk.execution.zygote import serve; serve({theirs.fileno()}, {os.getpid()})"
            self._proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=self.cwd,
                                          stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()])
        finally:
            theirs.close()
        ours.settimeout(self.timeout)
        self._sock, self._env, self.pid = ours, env, self._proc.pid
        self._imported = set()

    def _import_locked(self) -> None:
        todo = [m for m in self._preload if m not in self._imported]
        self._request({"op": "import", "modules": todo})
        self._imported.update(todo)  # failures too: the kernel's preload skips them, its cell reports them

    def _stop_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the zygote exits at end of file
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._env = None

    def _request(self, message: dict[str, Any], *, fds: int = 0) -> tuple[dict[str, Any], list[int]]:
        assert self._sock is not None
        try:
            self._sock.send(json.dumps(message).encode())
            data, got, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, max(fds, 1))
        except OSError as exc:
            raise KernelPoolError(f"the kernel zygote is gone ({exc})") from exc
        if not data:
            raise KernelPoolError(f"the kernel zygote exited (exit code {self._proc and self._proc.poll()})")
        reply = json.loads(data)
        if "error" in reply:
            for fd in got:
                os.close(fd)
            raise KernelPoolError(f"the kernel zygote refused: {reply['error']}")
        if len(got) != fds:
            raise KernelPoolError(f"the kernel zygote sent {len(got)} descriptor(s), not {fds}")
        return reply, got


class ForkProvisioner(LocalProvisioner):
    """LocalProvisioner whose kernels are forked by a :class:`Zygote`; the usual launch when
    that fails (the zygote died or refused), said once per pool in the log."""

    zygote: Zygote | None = None
    on_fallback: Any = None  # called with the reason when a kernel was started the usual way

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        if self.zygote is not None:
            import asyncio

            # as jupyter_client's launch_kernel: the kernel knows which process started it
            env = {**(kwargs.get("env") or os.environ), "JPY_PARENT_PID": str(os.getpid())}
            try:
                handle = await asyncio.to_thread(self.zygote.fork, cmd, env=env, cwd=kwargs.get("cwd"))
            except KernelPoolError as exc:
                if self.on_fallback is not None:
                    self.on_fallback(str(exc))
            else:
                self.process = handle  # type: ignore[assignment]  # Popen-like, see ForkedKernel
                self.pid = self.pgid = handle.pid  # the child leads its own session
                self.cwd = kwargs.get("cwd", Path.cwd())
                return self.connection_info
        return await super().launch_kernel(cmd, **kwargs)


# ------------------------------------------------------------------ the zygote process
def serve(fd: int, owner: int) -> None:
    """The zygote's main loop (run as ``python -c``): answer requests on socket ``fd`` until it
    closes or process ``owner`` (the pool's) dies; reap the kernels it forked."""
    sock = socket.socket(fileno=fd)
    try:
        owner_fd = os.pidfd_open(owner)
    except ProcessLookupError:
        return
    # as ipykernel_launcher: the folder is not on the import path while modules load
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as IPKernelApp does
    import ipykernel.kernelapp  # noqa: F401  (what every kernel imports first)

    _set_name("qsdk-zygote")

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is for kernels, not for us
    children: dict[int, int | None] = {}  # pid -> exit code once reaped
    private = [fd, owner_fd, wake_r, wake_w]
    while True:
        ready, _, _ = select.select([sock.fileno(), owner_fd, wake_r], [], [])
        _reap(children)
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        if owner_fd in ready:  # the pool's process died: its kernels go with it
            for pid, code in children.items():
                if code is None:
                    _kill_group(pid)
            return
        if fd in ready:
            data = sock.recv(_MAX_MESSAGE)
            if not data:
                return
            reply, fds = _handle(json.loads(data), children, owner_fd, private)
            socket.send_fds(sock, [json.dumps(reply).encode()], fds) if fds else sock.send(json.dumps(reply).encode())
            for child_fd in fds:
                os.close(child_fd)


def _handle(request: dict[str, Any], children: dict[int, int | None], owner_fd: int,
            private: list[int]) -> tuple[dict[str, Any], list[int]]:
    op = request.get("op")
    if op == "import":
        return {"imported": _import(request["modules"])}, []
    if op == "status":
        return {"code": children.get(int(request["pid"]))}, []
    if op == "fork":
        unsafe = _fork_hazard()
        if unsafe:
            return {"error": unsafe}, []
        # what the zygote imported is never collected: keep the collector from writing to (and so
        # copying) the pages the kernels share with it
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            _become_kernel(request["argv"], request["env"], request["cwd"], owner_fd, private)
        children[pid] = None
        return {"pid": pid}, [os.pidfd_open(pid)]  # before any reap: it is this child's
    return {"error": f"unknown request {op!r}"}, []


def _import(modules: Sequence[str]) -> list[str]:
    """Import ``modules`` as the kernel's preload does: one that fails is skipped."""
    import importlib

    done = []
    for name in modules:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception:  # the notebook's own import reports it, in its cell
            continue
    return done


def _fork_hazard() -> str | None:
    """Why forking now would be unsafe: a Python thread (it may hold a lock the child needs), or
    deltalake's tokio runtime (it does not survive a fork)."""
    if threading.active_count() > 1:
        return f"a preloaded module started Python threads: {[t.name for t in threading.enumerate()]}"
    try:
        names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    except OSError:
        return None
    if any(n.startswith("tokio") for n in names):
        return "a preloaded module started deltalake's runtime (tokio threads)"
    return None


def _reap(children: dict[int, int | None]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children[pid] = os.waitstatus_to_exitcode(status)
        # forget old exits: the pool asks for an exit code once, right after the exit
        done = [p for p, c in children.items() if c is not None]
        for old in done[:-256]:
            del children[old]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _become_kernel(argv: list[str], env: dict[str, str], cwd: str, owner_fd: int, private: list[int]) -> None:
    """In the forked child: become a fresh ipykernel; never return into the zygote's loop."""
    code = 1
    try:
        os.setsid()
        _set_name("qsdk-kernel")  # its command line stays the zygote's: `ps -C qsdk-kernel` finds it
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in private:
            if fd != owner_fd:
                os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        import ipykernel_launcher  # type: ignore[import-untyped]

        sys.argv = [ipykernel_launcher.__file__, *argv[3:]]
        if "numpy" in sys.modules:  # a new interpreter seeds its global state afresh
            sys.modules["numpy"].random.seed()
        threading.Thread(target=_die_with_owner, args=(owner_fd,), name="qsdk-owner-watch", daemon=True).start()
        from ipykernel import kernelapp

        # parent_handle=1: no ipykernel parent poller (it would stop the kernel when the zygote,
        # its parent, dies); _die_with_owner watches the pool's process instead
        kernelapp.IPKernelApp.launch_instance(parent_handle=1)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        # not the atexit handlers: ZeroMQ's context would wait for ever on the sockets a failed
        # launch opened, and the pool would take this for a live kernel until its start timeout
        os._exit(1)
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _set_name(name: str) -> None:
    """The process name (``comm``: ps, top, psutil's ``name()``), through ``prctl(PR_SET_NAME)``."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _die_with_owner(owner_fd: int) -> None:
    """Kill this kernel's process group when the pool's process exits (pidfd readable)."""
    select.select([owner_fd], [], [])
    os.killpg(os.getpgid(0), signal.SIGKILL)
