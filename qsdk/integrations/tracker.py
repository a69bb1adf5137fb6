"""Tracking off the critical path: a hook that runs another hook in a tracking process.

:class:`BackgroundTracking` wraps a tracking hook (:class:`~qsdk.integrations.mlflow.MlflowTracking`)
and forwards its calls, pickled, to a process of :mod:`qsdk.integrations.tracking_agent`,
reached at the first task that really runs (a re-run in which every task is cached reaches
nothing): by default the long-lived tracking agent, which has imported MLflow and opened the
store before (a run pays for neither), else (``$QSDK_TRACKER=process``, or no agent could be
reached) a helper process of the run's own, which imports MLflow, opens the store, creates the
runs, copies the executed notebooks and renders their HTML while this process imports
papermill, starts the kernel and runs the notebook. Either way this process never imports MLflow.

What a task needs from the tracker, its run id (for ``qsdk.log_metric`` and its Delta commit
metadata), is handed over through a file (:mod:`qsdk.execution.tracking_ref`): ``before_task``
returns at once with the file's path, and only the steps that need the id wait for it.
``after_flow`` waits until the tracking process has logged everything but the HTML renderings
of the executed notebooks, so when a run returns its MLflow record is complete (runs, params,
metrics, tags, Delta versions, each notebook's ``.ipynb``) as it was when tracking ran inline.
The renderings follow (about a second of CPU per notebook, more than the rest of a small run's
tracking); :func:`wait_rendered` waits for them. The tracking process's warnings are
re-emitted here; if it dies, pending tasks get no id (they run untracked) and a warning says why.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from qsdk import localservice
from qsdk.execution import tracking_ref
from qsdk.execution.hooks import Hook
from qsdk.integrations import tracking_agent

if TYPE_CHECKING:
    from qsdk.execution.scheduling import RunResult, RunState
    from qsdk.execution.task import Task, TaskResult

_Call = tuple[str, dict[str, Any]]


class BackgroundTracking(Hook):
    """Run ``inner`` (a picklable hook) in a tracking process; see the module docstring."""

    def __init__(self, inner: Hook) -> None:
        self.mode = tracking_agent.mode()  # a bad $QSDK_TRACKER fails before the run, not at its first task
        self.inner = inner
        self._link: _Link | None = None
        self._held: list[_Call] = []  # calls made before the tracking process was needed
        self._pending: set[str] = set()  # id files the tracking process has not written yet
        self._lock = threading.Lock()

    # -------------------------------------------------------------- hook methods
    def before_flow(self, *, run: RunState, **_: Any) -> None:
        self._held.append(("before_flow", {"run": run}))

    def before_task(self, *, run: RunState, task: Task, **_: Any) -> dict[str, Any] | None:
        path = str(run.run_dir / ".tracking" / f"{task.key.replace('/', '_')}.json")
        with self._lock:
            self._pending.add(path)
        if self._link is None:
            self._start()
        self._send("before_task", {"run": run, "task": task}, reply_to=path)
        return {tracking_ref.PENDING_KEY: path}

    def after_task(self, *, run: RunState, task: Task, result: TaskResult, **_: Any) -> None:
        call: _Call = ("after_task", {"run": run, "task": task, "result": result})
        if self._link is None:
            self._held.append(call)  # a cache hit before any task ran: replayed if one runs
        else:
            self._send(*call)

    def after_flow(self, *, run: RunState, result: RunResult, **_: Any) -> None:
        self._held.clear()
        link = self._link
        if link is None:  # nothing ran: nothing new to record, as the inner hook would do
            return
        self._send("after_flow", {"run": run, "result": result})
        link.close_send()
        done = False
        while not done:
            kind, value = link.replies.get()
            if kind == "warning":
                warnings.warn(value, RuntimeWarning, stacklevel=2)
            elif kind == "extra":
                result.extra.update(value)
            done = kind in ("done", "end")
            if kind == "end":
                warnings.warn(f"qsdk: {link.name} ended before the run's tracking was complete; this "
                              f"run's tracking may be incomplete ({link.where_errors})", RuntimeWarning,
                              stacklevel=2)
        self._link = None
        _rendering.add(link)  # still rendering HTML

    # -------------------------------------------------------------- the tracking process
    def _start(self) -> None:
        link = None
        if self.mode == "agent":
            try:
                link = _Link.to_agent(tracking_agent.connect(), on_end=self._release)
            except OSError as exc:
                warnings.warn(f"qsdk: could not reach the tracking agent ({exc}); this run is tracked by a "
                              "helper process of its own", RuntimeWarning, stacklevel=3)
        self._link = link or _Link.to_helper(on_end=self._release)
        self._send("init", {"hook": self.inner})
        for method, kwargs in self._held:
            self._send(method, kwargs)
        self._held.clear()

    def _send(self, method: str, kwargs: dict[str, Any], *, reply_to: str | None = None) -> None:
        assert self._link is not None
        try:
            pickle.dump((method, kwargs, reply_to), self._link.send, protocol=pickle.HIGHEST_PROTOCOL)
            self._link.send.flush()
        except (OSError, ValueError):  # the tracking process died: _release frees the waiters
            pass

    def _release(self) -> None:
        """When the tracking process ends (or the connection to it), every id it did not write
        is written empty: those tasks run untracked instead of waiting for an id that never comes."""
        with self._lock:
            for path in self._pending:
                if not Path(path).exists():
                    tracking_ref.publish(path, None)
            self._pending.clear()


class _Link:
    """The pipe to a tracking process (a connection to the agent, or a helper's stdin/stdout);
    a thread reads its replies into :attr:`replies`, ``("end", None)`` last."""

    def __init__(self, send: IO[bytes], recv: IO[bytes], *, close_send: Callable[[], None],
                 reap: Callable[[], object], on_end: Callable[[], None], name: str, where_errors: str) -> None:
        self.send, self.name, self.where_errors = send, name, where_errors
        self.close_send = close_send
        self.replies: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.ended = threading.Event()  # the HTML renderings are logged, or the process is gone
        threading.Thread(target=self._read, args=(recv, reap, on_end), name="qsdk-tracker-replies",
                         daemon=True).start()

    @classmethod
    def to_agent(cls, sock: socket.socket, *, on_end: Callable[[], None]) -> _Link:
        send = sock.makefile("wb")

        def close_send() -> None:
            try:
                send.close()
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        log = Path(sock.getpeername()).parent / "agent.log"  # the agent's folder (its key is not recomputed)
        return cls(send, sock.makefile("rb"), close_send=close_send, reap=sock.close, on_end=on_end,
                   name="the tracking agent", where_errors=f"its log: {log}")

    @classmethod
    def to_helper(cls, *, on_end: Callable[[], None]) -> _Link:
        env = {**os.environ, "PYTHONPATH": localservice.pythonpath()}
        proc = subprocess.Popen([sys.executable, "-m", "qsdk.integrations.tracking_agent"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        stdin = proc.stdin

        def close_send() -> None:
            try:
                stdin.close()
            except OSError:
                pass

        return cls(stdin, proc.stdout, close_send=close_send, reap=proc.wait, on_end=on_end,
                   name="the tracking helper", where_errors="its error is on stderr above")

    def _read(self, recv: IO[bytes], reap: Callable[[], object], on_end: Callable[[], None]) -> None:
        while True:
            try:
                message = pickle.load(recv)
            except EOFError:
                break
            except (pickle.UnpicklingError, OSError, ValueError) as exc:
                self.replies.put(("warning", f"qsdk: lost the tracking process's replies: {exc}"))
                break
            if message == ("rendered", None):
                break
            self.replies.put(message)
        self.replies.put(("end", None))
        try:
            recv.close()
        except OSError:
            pass
        reap()
        on_end()
        self.ended.set()


_rendering: set[_Link] = set()  # tracking processes of returned runs, maybe still rendering


def wait_rendered(timeout: float | None = None) -> bool:
    """Wait until every run this process tracked has logged its notebooks' HTML renderings (the
    tracking process does that after the run returns); ``False`` if ``timeout`` seconds passed first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for link in list(_rendering):
        if not link.ended.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            return False
        _rendering.discard(link)
    return True
