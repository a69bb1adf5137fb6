"""Tracking off the critical path: a hook that runs another hook in a helper process.

:class:`BackgroundTracking` wraps a tracking hook (:class:`~qsdk.integrations.mlflow.MlflowTracking`)
and forwards its calls, pickled, to ``python -m qsdk.integrations.tracker``, started at the
first task that really runs (a re-run in which every task is cached starts nothing). That
process imports MLflow, opens the store, creates the runs, copies the executed notebooks and
renders their HTML, while this process imports papermill, starts the kernel and runs the
notebook: on two cores the two halves run side by side instead of one after the other, and
this process never imports MLflow.

What a task needs from the tracker, its run id (for ``qsdk.log_metric`` and its Delta commit
metadata), is handed over through a file (:mod:`qsdk.execution.tracking_ref`): ``before_task``
returns at once with the file's path, and only the steps that need the id wait for it.
``after_flow`` waits until the helper has logged everything but the HTML renderings of the
executed notebooks, so when a run returns its MLflow record is complete (runs, params, metrics,
tags, Delta versions, each notebook's ``.ipynb``) as it was when tracking ran inline. The helper
then renders the HTML and logs it after the run has returned (about a second of CPU per notebook,
more than the rest of a small run's tracking), and exits; :func:`wait_rendered` waits for
that. The helper's warnings are re-emitted here; if the helper dies, pending tasks
get no id (they run untracked) and a warning says why.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from qsdk.execution import tracking_ref
from qsdk.execution.hooks import Hook

if TYPE_CHECKING:
    from qsdk.execution.scheduling import RunResult, RunState
    from qsdk.execution.task import Task, TaskResult

_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding this qsdk package
_Call = tuple[str, dict[str, Any]]


class BackgroundTracking(Hook):
    """Run ``inner`` (a picklable hook) in a helper process; see the module docstring."""

    def __init__(self, inner: Hook) -> None:
        self.inner = inner
        self._proc: subprocess.Popen[bytes] | None = None
        self._held: list[_Call] = []  # calls made before the helper was needed
        self._pending: set[str] = set()  # id files the helper has not written yet
        self._lock = threading.Lock()

    # -------------------------------------------------------------- hook methods
    def before_flow(self, *, run: RunState, **_: Any) -> None:
        self._held.append(("before_flow", {"run": run}))

    def before_task(self, *, run: RunState, task: Task, **_: Any) -> dict[str, Any] | None:
        path = str(run.run_dir / ".tracking" / f"{task.key.replace('/', '_')}.json")
        with self._lock:
            self._pending.add(path)
        if self._proc is None:
            self._start()
        self._send("before_task", {"run": run, "task": task}, reply_to=path)
        return {tracking_ref.PENDING_KEY: path}

    def after_task(self, *, run: RunState, task: Task, result: TaskResult, **_: Any) -> None:
        call: _Call = ("after_task", {"run": run, "task": task, "result": result})
        if self._proc is None:
            self._held.append(call)  # a cache hit before any task ran: replayed if one runs
        else:
            self._send(*call)

    def after_flow(self, *, run: RunState, result: RunResult, **_: Any) -> None:
        self._held.clear()
        proc = self._proc
        if proc is None:  # nothing ran: nothing new to record, as the inner hook would do
            return
        self._send("after_flow", {"run": run, "result": result})
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.close()
        except OSError:
            pass
        replies = _read_all(proc.stdout)
        for kind, value in replies:
            if kind == "warning":
                warnings.warn(value, RuntimeWarning, stacklevel=2)
            elif kind == "extra":
                result.extra.update(value)
        if ("done", None) not in replies and proc.wait() != 0:
            warnings.warn(f"qsdk: the tracking helper exited with code {proc.returncode}; this run's "
                          "tracking may be incomplete (its error is on stderr above)", RuntimeWarning,
                          stacklevel=2)
        self._proc = None
        _rendering.add(proc)  # still rendering HTML: _release_on_exit reaps it

    # -------------------------------------------------------------- the helper process
    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "qsdk.integrations.tracker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        threading.Thread(target=self._release_on_exit, name="qsdk-tracker-watch", daemon=True).start()
        self._send("init", {"hook": self.inner})
        for method, kwargs in self._held:
            self._send(method, kwargs)
        self._held.clear()

    def _send(self, method: str, kwargs: dict[str, Any], *, reply_to: str | None = None) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            pickle.dump((method, kwargs, reply_to), self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):  # the helper died: _release_on_exit frees the waiters
            pass

    def _release_on_exit(self) -> None:
        """When the helper ends, every id it did not write is written empty: those tasks run
        untracked instead of waiting for an id that will never come."""
        proc = self._proc
        assert proc is not None
        proc.wait()
        _rendering.discard(proc)
        with self._lock:
            for path in self._pending:
                if not Path(path).exists():
                    tracking_ref.publish(path, None)
            self._pending.clear()


_rendering: set[subprocess.Popen[bytes]] = set()  # helpers of returned runs, maybe still rendering


def wait_rendered(timeout: float | None = None) -> bool:
    """Wait until every run this process tracked has logged its notebooks' HTML renderings (the
    helper does that after the run returns); ``False`` if ``timeout`` seconds passed first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for proc in list(_rendering):
        try:
            proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        _rendering.discard(proc)
    return True


def _read_all(stream: IO[bytes]) -> list[tuple[str, Any]]:
    """The helper's replies up to its ``done`` (or its end, if it died before)."""
    out: list[tuple[str, Any]] = []
    while True:
        try:
            out.append(pickle.load(stream))
            if out[-1] == ("done", None):
                return out
        except EOFError:
            return out
        except (pickle.UnpicklingError, OSError) as exc:
            out.append(("warning", f"qsdk: lost the tracking helper's replies: {exc}"))
            return out


# ------------------------------------------------------------------ inside the helper
def _serve(inbox: IO[bytes], outbox: IO[bytes]) -> tuple[Any, Path | None]:
    """Run the calls from ``inbox`` on the hook sent first; ``warm`` it while nothing waits;
    after ``after_flow``, reply ``done`` and close ``outbox``. Returns the hook and the run's
    folder (``None`` if no flow ended)."""
    calls: queue.Queue[tuple[str, dict[str, Any], str | None] | None] = queue.Queue()

    def read() -> None:
        while True:
            try:
                calls.put(pickle.load(inbox))
            except EOFError:
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
        value = _call(getattr(hook, method), kwargs, outbox)
        if reply_to is not None:
            tracking_ref.publish(reply_to, value)
        if method == "after_flow":
            extra = kwargs["result"].extra
            pickle.dump(("extra", dict(extra)), outbox)
            pickle.dump(("done", None), outbox)
            outbox.close()  # the run returns now; nothing more goes to it
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
            pickle.dump(("warning", str(w.message)), outbox)
    outbox.flush()
    return value


def main() -> None:
    # stdout carries the replies: anything a library prints goes to stderr instead
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    hook, run_dir = _serve(sys.stdin.buffer, outbox)
    if hook is None or run_dir is None or not hasattr(hook, "render_deferred"):
        return
    _detach()
    try:
        hook.render_deferred()
    except Exception:  # the run has returned: say it in the run's folder
        import traceback

        with open(run_dir / "tracking.log", "a", encoding="utf-8") as log:
            log.write("qsdk: logging the executed notebooks' HTML failed:\n" + traceback.format_exc())


def _detach() -> None:
    """Let go of the command's terminal and pipes: a caller that captures the command's output
    would otherwise wait for the renderings."""
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)


if __name__ == "__main__":
    main()
