"""Pre-warmed Jupyter kernels: start kernels ahead of need, hand each out once, never reuse one.

Starting a kernel (a new Python process importing ipykernel) is most of papermill's fixed cost
per notebook. A :class:`KernelPool` keeps ``size`` kernels started and ready in the
background; :meth:`KernelPool.acquire` hands one out at once and starts its replacement, and
:meth:`KernelPool.release` shuts the used kernel down in the background. A kernel runs exactly
one notebook, so no state (variables, imports, monkey patches) leaks from one stage run into
the next: every run still gets a fresh interpreter; only the wait for it is gone.

A kernel may also be *warmed*: before it is handed out it imports the modules the next stages
import first (``Task.preload``, learnt by :meth:`KernelPool.run_task`; by default the leading
imports of each stage's notebook, see :func:`qsdk.nbfile.leading_imports`). Importing pandas,
Delta and the quant library costs about half a second per notebook; a warmed kernel has done
it while the previous notebook ran. Only ``sys.modules`` is warm: the notebook's namespace is
empty, and its own ``import`` statements still run (and bind names) as written.

papermill still executes the notebook: the kernel manager is passed to the qsdk papermill
engine (``run_task(task, km=...)``), and nbclient uses a given manager that has a kernel
instead of starting one.

The pool owns a background thread with its own asyncio loop where kernels are started and
shut down; nbclient talks to an acquired kernel from the caller's thread through its own
client. One pool per process (for example one per Ray worker).

How kernels start (``start``, default ``$QSDK_KERNEL_START``, else ``fork``): ``fork`` forks
each kernel from the pool's zygote, a process that has imported ipykernel and the preload
modules once (:mod:`qsdk.execution.zygote`), which saves each kernel 1 to 2 s of CPU;
``spawn`` starts each as a new interpreter. Either way each kernel is a new process that runs
one notebook. If the zygote cannot fork (it died, or refused), the pool says why once in the
log and starts the rest of its kernels with ``spawn``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.session import new_id

from qsdk.errors import KernelPoolError
from qsdk.execution.zygote import (
    ForkProvisioner,
    KernelStart,
    Zygote,
    fork_unavailable,
    kernel_start,
)

if TYPE_CHECKING:
    from qsdk.execution.task import Task, TaskResult

# nbclient passes these when it starts a kernel itself; a pooled kernel needs them at start:
# an in-memory IPython history (many kernels at once must not contend for one SQLite file),
# and no start-up chatter (e.g. the TCP transport notice) in the stage's output.
KERNEL_ARGUMENTS = ("--HistoryManager.hist_file=:memory:", "--IPKernelApp.log_level=ERROR")
# How long the whole notebook may run past the stage timeout (papermill's per-cell limit)
# before the kernel is killed: time for the commit and for papermill to report a cell timeout.
WALL_CLOCK_GRACE = 5.0
_log = logging.getLogger(__name__)


class _PooledClient(AsyncKernelClient):
    """An async kernel client whose ``wait_for_ready`` returns as soon as the kernel answers.

    jupyter_client's version always ends by draining IOPub until 0.2 s pass without a message,
    which is 0.2 s per notebook. Here the kernel's ``idle`` status for our own ``kernel_info``
    request proves both channels work; nbclient ignores IOPub messages of other requests. If
    that status does not come quickly (IOPub not subscribed yet), fall back to the original.
    """

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        msg_id = self.kernel_info()
        try:
            reply = await self._reply_to(self.get_shell_msg, msg_id, timeout=min(timeout or 5.0, 5.0))
            await self._reply_to(self.get_iopub_msg, msg_id, timeout=0.5, idle=True)
        except Empty:
            return await super()._async_wait_for_ready(timeout)
        self._handle_kernel_info_reply(reply)

    @staticmethod
    async def _reply_to(get: Any, msg_id: str, *, timeout: float, idle: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = await get(timeout=max(deadline - time.monotonic(), 0.0))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if not idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"):
                return msg


class _PooledKernelManager(AsyncKernelManager):
    """A kernel manager that tracks the clients made for its kernel.

    nbclient leaves open the client of a kernel it did not start; the pool closes it on release.
    ``prepare_client`` connects the client that nbclient will get ahead of time: a fresh IOPub
    (SUB) socket misses the kernel's first status messages (ZeroMQ's "slow joiner"), which
    costs jupyter_client's ``wait_for_ready`` a 0.2 s retry on every run otherwise.
    """

    def __init__(self, *, zygote: Zygote | None = None, on_fallback: Any = None, **kwargs: Any) -> None:
        super().__init__(client_class=f"{__name__}._PooledClient", **kwargs)
        self._qsdk_clients: list[Any] = []
        self._qsdk_ready: Any = None
        if zygote is not None:  # jupyter_client keeps a provisioner that is already set
            self.kernel_id = new_id()
            self.provisioner = ForkProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
            self.provisioner.zygote = zygote
            self.provisioner.on_fallback = on_fallback

    def client(self, **kwargs: Any):
        if self._qsdk_ready is not None and not kwargs:
            kc, self._qsdk_ready = self._qsdk_ready, None
            return kc
        return self.new_client(**kwargs)

    def new_client(self, **kwargs: Any):
        """A client with its own session id: clients that share one (jupyter_client's default)
        share a ZeroMQ identity, and the kernel drops the connection of the second."""
        session = self.session.clone()
        session.session = new_id()
        kc = super().client(session=session, **kwargs)
        self._qsdk_clients.append(kc)
        return kc

    def prepare_client(self) -> None:
        kc = self.new_client()
        kc.iopub_channel, kc.shell_channel  # noqa: B018 (the properties connect the sockets)
        self._qsdk_ready = kc

    def forget_client(self, kc: Any) -> None:
        self._qsdk_clients.remove(kc)

    def stop_clients(self) -> None:
        self._qsdk_ready = None
        while self._qsdk_clients:
            self._qsdk_clients.pop().stop_channels()

    @property
    def kernel_pid(self) -> int | None:
        return getattr(self.provisioner, "pid", None)

    def is_alive_now(self) -> bool:
        """Without awaiting: is the kernel process still running?"""
        process = getattr(self.provisioner, "process", None)
        return process is not None and process.poll() is None


class KernelPool:
    """Keep ``size`` fresh kernels started; hand each out once.

    ``size=0`` starts each kernel on demand (no pre-warming, same code path). ``cwd``: the
    folder kernels start in; :meth:`acquire` moves a kernel to another folder if asked.
    ``start``: ``fork`` (from a zygote) or ``spawn`` (a new interpreter); see the module's doc.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        kernel_name: str = "python3",
        cwd: str | Path | None = None,
        extra_arguments: Sequence[str] = KERNEL_ARGUMENTS,
        startup_timeout: float = 60.0,
        preload: Sequence[str] = (),
        start: KernelStart | None = None,
    ) -> None:
        if size < 0:
            raise KernelPoolError(f"pool size must be 0 or more, got {size}")
        self.start: KernelStart = kernel_start(start)
        self.size = size
        self.kernel_name = kernel_name
        self.cwd = str(Path(cwd or os.getcwd()).resolve())
        self.extra_arguments = list(extra_arguments)
        self.startup_timeout = startup_timeout
        self._preload: dict[str, None] = dict.fromkeys(preload)
        self._zygote: Zygote | None = None
        self._fallback_lock = threading.Lock()
        if self.start == "fork":
            why = fork_unavailable()
            if why is None:
                self._zygote = Zygote(cwd=self.cwd, preload=preload, timeout=2 * startup_timeout)
            else:
                self._fall_back(why)
        self._lock = threading.Lock()
        self._spares: collections.deque[concurrent.futures.Future[_PooledKernelManager]] = collections.deque()
        self._shutdowns: set[concurrent.futures.Future[None]] = set()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qsdk-kernel-pool", daemon=True)
        self._thread.start()
        self._top_up()

    # ------------------------------------------------------------ public API
    def acquire(self, *, cwd: str | Path | None = None, timeout: float | None = None,
                replace: bool = True) -> _PooledKernelManager:
        """A started, ready kernel that nobody else has used; its replacement starts now.

        ``cwd``: run the notebook there (papermill's convention: the notebook's folder).
        ``replace=False``: start no replacement (the caller knows no task follows; a spare
        kernel nobody uses costs a kernel's start and imports, on a machine the task shares).
        """
        stalled = 0
        while True:
            with self._lock:
                if self._closed:
                    raise KernelPoolError("the kernel pool is closed")
                spare = self._spares.popleft() if self._spares else self._start_one()
                if replace:
                    self._top_up_locked()
            wait = timeout if timeout is not None else self._stall_limit()
            try:
                km = spare.result(timeout=wait)
            except concurrent.futures.TimeoutError:
                if timeout is not None or stalled >= 1:
                    raise KernelPoolError(
                        f"no {self.kernel_name!r} kernel was ready within {wait:.0f} s (tried "
                        f"{stalled + 1} time(s)); is the machine overloaded or out of memory? "
                        f"raise startup_timeout (now {self.startup_timeout} s) if kernels are slow "
                        "to start here") from None
                stalled += 1
                self._replace_loop()
                continue
            if km.is_alive_now():
                break
            self._submit_shutdown(km)  # died while waiting (killed): take the next one
        target = str(Path(cwd).resolve()) if cwd is not None else self.cwd
        if target != self.cwd:
            self._run(self._chdir(km, target))
        return km

    @property
    def preload(self) -> tuple[str, ...]:
        """Modules each kernel started from now on imports before it is handed out."""
        return tuple(self._preload)

    def learn(self, modules: Sequence[str]) -> None:
        """Add ``modules`` to :attr:`preload` (for kernels started after this call)."""
        with self._lock:
            self._preload.update(dict.fromkeys(modules))
            if self._zygote is not None:
                self._zygote.preload(modules)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every spare kernel has started (benchmarks, tests)."""
        with self._lock:
            spares = list(self._spares)
        concurrent.futures.wait(spares, timeout=timeout)

    def release(self, km: _PooledKernelManager) -> None:
        """Retire ``km`` after its one run: close its clients, shut it down in the background."""
        km.stop_clients()
        self._submit_shutdown(km)

    def run_task(self, task: Task, *, grace: float = WALL_CLOCK_GRACE, replace: bool = True) -> TaskResult:
        """``execute.run_task`` on a pooled kernel, with a wall-clock limit on the whole notebook.

        papermill's ``execution_timeout`` (the stage ``timeout``) limits each cell; a notebook
        of many cells could still run far longer. If ``task.timeout`` is set, the kernel is
        killed ``timeout + grace`` seconds after the notebook started, and the stage fails with
        ``reason="timeout"``. ``replace``: as for :meth:`acquire`.
        """
        from qsdk.execution.task import run_task

        self.learn(task.preload)  # for the replacement that acquire starts: likely the next task's
        km = self.acquire(replace=replace)  # run_task's bootstrap moves it to the notebook's folder
        killed = threading.Event()
        timer = None
        if task.timeout:
            timer = threading.Timer(task.timeout + grace, _kill, args=(km, killed))
            timer.daemon = True
            timer.start()
        try:
            result = run_task(task, km=km)
        finally:
            if timer is not None:
                timer.cancel()
            self.release(km)
        if killed.is_set() and result.status == "failed" and result.error is not None \
                and result.error.reason == "kernel_died":
            limit = task.timeout + grace  # type: ignore[operator]
            result.error = task.failure(
                f"the notebook ran longer than the stage timeout of {task.timeout} s (+{grace} s grace) "
                "and its kernel was stopped; raise `timeout:` in the stage's registry entry or shorten "
                "the notebook", reason="timeout", ename="WallClockTimeout", evalue=f"{limit} s",
            )
        return result

    def close(self) -> None:
        """Shut down every kernel the pool started and still holds, then stop its thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            spares, self._spares = list(self._spares), collections.deque()
        for spare in spares:
            try:
                self._submit_shutdown(spare.result(timeout=self.startup_timeout))
            except Exception:  # a kernel that failed to start has nothing to shut down
                pass
        concurrent.futures.wait(list(self._shutdowns), timeout=30)
        if self._zygote is not None:
            self._zygote.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals
    def _stall_limit(self) -> float:
        """How long :meth:`acquire` waits for a start before calling the pool's thread stuck:
        the start's own deadline (``startup_timeout``) for the kernel, again for its preload,
        and a margin. Seen under heavy load: a start blocked inside a ZeroMQ send on the pool's
        thread, where jupyter_client's own timeout can never fire."""
        return 2 * self.startup_timeout + 30.0

    def _replace_loop(self) -> None:
        """Give up on the pool's event loop (a start is stuck on its thread) for a fresh one.

        The stuck thread is a daemon and holds nothing qsdk waits for; the spares it was
        starting are dropped, and their kernel processes killed where they are known."""
        with self._lock:
            spares, self._spares = list(self._spares), collections.deque()
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="qsdk-kernel-pool", daemon=True)
            self._thread.start()
            self._top_up_locked()
        for spare in spares:
            if spare.done() and spare.exception() is None:
                _kill(spare.result(), threading.Event())
            else:
                spare.cancel()

    def _top_up(self) -> None:
        with self._lock:
            self._top_up_locked()

    def _top_up_locked(self) -> None:
        while not self._closed and len(self._spares) < self.size:
            self._spares.append(self._start_one())

    def _start_one(self) -> concurrent.futures.Future[_PooledKernelManager]:
        return asyncio.run_coroutine_threadsafe(self._start(self.preload), self._loop)

    def _fall_back(self, why: str) -> None:
        """Start kernels as new interpreters from now on (once per pool, said in the log)."""
        with self._fallback_lock:
            zygote, self._zygote = self._zygote, None
            if self.start == "fork":
                _log.warning("qsdk kernel pool: kernels now start as new interpreters (spawn), not forked "
                             "from a zygote: %s", why)
                self.start = "spawn"
        if zygote is not None:
            zygote.close()

    @property
    def zygote_pid(self) -> int | None:
        """The zygote's process id while it runs (``fork`` mode), else None."""
        zygote = self._zygote
        return zygote.pid if zygote is not None and zygote.alive else None

    async def _start(self, preload: tuple[str, ...] = ()) -> _PooledKernelManager:
        """A started, ready kernel. One that dies, or does not answer within ``startup_timeout``,
        is replaced once by a new start with new ports: jupyter_client picks a kernel's ports here
        and the kernel binds them later, so another process (Ray's many loopback connections) can
        take one in between. A forked kernel that fails so exits at once (:mod:`.zygote`); a
        spawned one hangs in ZeroMQ's exit handlers and is only noticed at the timeout."""
        try:
            return await self._start_once(preload)
        except Exception as exc:
            if asyncio.get_running_loop() is not self._loop:
                raise KernelPoolError(f"could not start a {self.kernel_name!r} kernel: {exc}") from exc
            _log.warning("a %r kernel failed to start (%s); starting another", self.kernel_name, exc)
        try:
            return await self._start_once(preload)
        except Exception as exc:
            raise KernelPoolError(f"could not start a {self.kernel_name!r} kernel: {exc}") from exc

    async def _start_once(self, preload: tuple[str, ...]) -> _PooledKernelManager:
        km = _PooledKernelManager(kernel_name=self.kernel_name, zygote=self._zygote, on_fallback=self._fall_back)
        try:
            await km.start_kernel(extra_arguments=self.extra_arguments, cwd=self.cwd)
            probe = km.client()
            probe.start_channels()
            try:
                # jupyter_client's own wait: it notices a kernel that dies while starting
                await probe._async_wait_for_ready(timeout=self.startup_timeout)
            finally:
                km.stop_clients()
            if preload:
                await self._execute(km, _preload_code(preload), what="warm the kernel's imports")
            km.prepare_client()
            if asyncio.get_running_loop() is not self._loop:
                # this start stalled and the pool moved on (_replace_loop): nobody will take
                # this kernel, and a manager dropped with open sockets blocks ZeroMQ's cleanup
                raise KernelPoolError("the pool gave up on this start after it stalled")
        except Exception:
            if km.has_kernel:
                await self._shutdown(km)
            raise
        return km

    async def _chdir(self, km: _PooledKernelManager, cwd: str) -> None:
        from qsdk.execution.engine import bootstrap_code

        await self._execute(km, bootstrap_code(cwd=cwd), what=f"move the kernel to {cwd}")

    async def _execute(self, km: _PooledKernelManager, code: str, *, what: str) -> None:
        """Run ``code`` silently in ``km``'s kernel (no output, no history) and wait for it."""
        kc = km.new_client()  # not the prepared client: that one is for the run
        kc.start_channels(hb=False)
        try:
            msg_id = kc.execute(code, silent=True, store_history=False)
            while True:
                reply = await kc.get_shell_msg(timeout=self.startup_timeout)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            if reply["content"].get("status") != "ok":
                raise KernelPoolError(f"could not {what}: {reply['content'].get('evalue')}")
        finally:
            kc.stop_channels()
            km.forget_client(kc)

    async def _shutdown(self, km: _PooledKernelManager) -> None:
        """Ask the kernel to exit (killed if it has not after ``shutdown_wait_time``).

        Not ``shutdown_kernel``: that interrupts the kernel first, which an idle kernel
        reports as an error on its stderr.
        """
        km.stop_clients()  # a spare's prepared client: open sockets would block zmq's shutdown
        try:
            if km.is_alive_now():
                await km.request_shutdown()
                await km.finish_shutdown()
        finally:
            await km.cleanup_resources()

    def _submit_shutdown(self, km: _PooledKernelManager) -> None:
        future = asyncio.run_coroutine_threadsafe(self._shutdown(km), self._loop)
        self._shutdowns.add(future)
        future.add_done_callback(self._shutdowns.discard)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


def _preload_code(modules: Sequence[str]) -> str:
    """Import ``modules`` into ``sys.modules`` without binding a name in the user namespace.

    Only from installed locations: the kernel's working folder is left out of ``sys.path``
    meanwhile, so a module beside another notebook is never imported for this one (the
    registry leaves out modules beside the stage's own notebook). A module that fails to
    import is skipped: the notebook's own import reports it, in its cell.
    """
    return (
        "def __qsdk_preload(names):\n"
        "    import importlib, os, sys\n"
        "    here = {'', '.', os.getcwd()}\n"
        "    saved = sys.path[:]\n"
        "    sys.path[:] = [p for p in saved if p not in here]\n"
        "    try:\n"
        "        for name in names:\n"
        "            try:\n"
        "                importlib.import_module(name)\n"
        "            except Exception:\n"
        "                pass\n"
        "    finally:\n"
        "        sys.path[:] = saved\n"
        f"__qsdk_preload({list(modules)!r})\n"
        "del __qsdk_preload\n"
    )


def _kill(km: _PooledKernelManager, killed: threading.Event) -> None:
    pid = km.kernel_pid
    if pid is not None:
        killed.set()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

