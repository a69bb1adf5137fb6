"""Run tasks on Ray workers: the project's long-lived local head, an embedded Ray, or a cluster.

Only this module (and the head's own process, :func:`.rayhead.serve`) imports Ray;
``qsdk.execution.executors`` loads it when the ``ray`` executor is asked for. Life cycle:

- ``init``: use the Ray session the caller already opened (a notebook, a test), else join the
  cluster at ``address`` / ``$RAY_ADDRESS``, else attach to the project's long-lived local head
  (:mod:`qsdk.execution.executors.rayhead`, started on first use), else (``"embedded"``,
  ``$QSDK_RAY=embedded``) start an embedded Ray sized to this machine; head and embedded Ray
  have no dashboard and listen on 127.0.0.1 only.
- ``submit``: one Ray task per stage partition. The task calls :func:`qsdk.execution.task.run_task`
  on a pre-warmed kernel from its worker's :class:`~qsdk.execution.kernels.KernelPool` and returns the
  :class:`TaskResult`; a notebook that raises comes back as a failed result (never retried:
  ``retry_exceptions=False``). A worker that dies (killed, out of memory) is retried up to the
  stage's ``retries`` (``max_retries``); commits are idempotent (Delta application
  transactions), so a retry never writes twice.
- ``finalize``: shut Ray down only if ``init`` started or joined it (leaving a long-lived head
  running: only this driver disconnects).

Ray starts worker processes with fork+exec (fresh interpreters), and a worker never forks
itself: its kernels are forked by its pool's zygote (:mod:`qsdk.execution.zygote`), a process
started with fork+exec that imports ``deltalake`` but never starts its runtime (which does not
survive a fork), or started as new interpreters (``QSDK_KERNEL_START=spawn``). Every result
carries ``extra["forks"]``: the Python-level forks (``os.fork``, multiprocessing's "fork") its
worker made so far, which must stay 0.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import ray
import ray.exceptions as rex

from qsdk.errors import ConfigError, FailureReason
from qsdk.execution import detached, tracking_ref
from qsdk.execution.executors import rayhead
from qsdk.execution.executors.base import Executor
from qsdk.execution.executors.rayenv import (
    LOCAL_SYSTEM_CONFIG,
    OBJECT_STORE_BYTES,
    cluster_runtime_env,
    embedded_environment,
    shutdown_ray,
)
from qsdk.execution.kernels import WALL_CLOCK_GRACE, KernelPool
from qsdk.execution.task import Task, TaskResult

ENV_ADDRESS = "RAY_ADDRESS"
# Ray retries a task killed by its memory monitor this many times, on a counter separate from
# max_retries (default 15; older Ray: forever). Read by the driver and by the raylet.
ENV_OOM_RETRIES = "RAY_task_oom_retries"
# Resources every task asks for on top of its stage's, as JSON (e.g. '{"batch_node": 0.01}' to
# keep a run's tasks on the nodes started with `ray start --resources '{"batch_node": 4}'`)
ENV_TASK_RESOURCES = "QSDK_RAY_TASK_RESOURCES"
_RESERVED = {"num_cpus", "num_gpus", "memory"}
# deltalake's Rust code allocates with a jemalloc of its own (a prefixed build, configured by
# this variable, read when deltalake loads), which keeps freed pages until later allocations
# purge them: a worker idle after a commit kept that commit's buffers (measured: about 250 MiB
# a worker after an 80 MB write). 0: hand them back at once (a worker's kernels inherit it).
ENV_JEMALLOC_CONF = "_RJEM_MALLOC_CONF"
WORKER_JEMALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
_KV_NAMESPACE = "qsdk"  # Ray's key-value store (in the GCS): the tracker's ids travel through it


class RayExecutor(Executor):
    """``address``: a Ray cluster to join, or ``"embedded"`` for a throw-away Ray started and
    stopped by this executor. Unset: ``$RAY_ADDRESS``, else (``$QSDK_RAY`` unset or ``head``)
    the long-lived local head of ``project_root`` (:mod:`.rayhead`, started by the first run,
    stopped after ``idle_timeout`` seconds without a run), else an embedded Ray
    (:func:`.rayhead.target`). Without ``project_root`` there is no head to key: embedded.

    ``num_cpus``: CPUs of the embedded Ray (default: all of this machine's). ``prewarm``:
    kernels each worker keeps started ahead of need (0: start one per task); a task starts its
    worker's next kernel only while another task may follow (the scheduler's ``upcoming``): a
    worker's processes end with the driver's Ray job, so a spare after the last task is a
    kernel's start and memory for nothing. While one may follow, every running task's worker
    starts one: Ray, not qsdk, picks the worker the next task runs on. ``oom_retries``:
    bound on Ray's retries of tasks its memory monitor kills. ``wall_clock_grace``: seconds a
    notebook may run past its stage ``timeout`` before its kernel is killed.
    ``check_resources``: fail a task at once when no node has the resources it asks for
    (turn off for an autoscaling cluster, where such a node may still appear).
    ``task_resources``: custom Ray resources every task asks for on top of its stage's
    ``resources:`` (default: ``$QSDK_RAY_TASK_RESOURCES`` as JSON), e.g. to pin a run to a
    labelled group of nodes. ``ship_code``: send the project's code to the workers with Ray's
    ``runtime_env`` (``working_dir``, :func:`.rayenv.cluster_runtime_env`), for nodes that do not
    share the driver's disk; default: when joining a cluster by address.

    Every task runs detached from the driver's disk (:mod:`qsdk.execution.detached`): it stages
    in a scratch folder of its worker, commits there, and brings its executed notebook back in
    its result, which the driver writes under ``runs/<run_id>/``.
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        prewarm: int = 1,
        oom_retries: int = 1,
        wall_clock_grace: float = WALL_CLOCK_GRACE,
        check_resources: bool = True,
        temp_dir: str | None = None,
        project_root: str | Path | None = None,
        idle_timeout: float | None = None,
        task_resources: Mapping[str, float] | None = None,
        ship_code: bool | None = None,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.prewarm = prewarm
        self.oom_retries = oom_retries
        self.wall_clock_grace = wall_clock_grace
        self.check_resources = check_resources
        self.temp_dir = temp_dir
        self.project_root = project_root
        self.idle_timeout = idle_timeout
        self.task_resources = dict(task_resources) if task_resources is not None else _env_resources()
        self.ship_code = ship_code
        self._shipped = False
        self.head: rayhead.HeadInfo | None = None  # the long-lived head this executor joined
        self._lease: ExitStack | None = None
        self._owns_session = False
        self._nodes: list[dict[str, float]] = []
        self._remote: Any = None

    def init(self) -> None:
        if not ray.is_initialized():
            os.environ.setdefault(ENV_OOM_RETRIES, str(self.oom_retries))
            how, address = rayhead.target(self.address, project_root=self.project_root, env=os.environ)
            common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                                      "namespace": "qsdk"}
            if how == "head":
                self._attach_head(common)
            elif address:
                # cluster processes do not inherit our environment: ship what they need
                self._shipped = self.ship_code is not False and self.project_root is not None
                runtime_env = cluster_runtime_env(project_root=self.project_root if self._shipped else None,
                                                  env=os.environ)
                try:
                    ray.init(address=address, runtime_env=runtime_env, **common)
                except (ConnectionError, rex.RayError) as exc:
                    raise ConfigError(
                        f"cannot join the Ray cluster at {address!r}: {_first_line(exc)}; check "
                        f"--ray-address / ${ENV_ADDRESS} (and $RAY_AUTH_TOKEN if the cluster uses "
                        "token authentication), or unset it to run on an embedded Ray",
                        address=address,
                    ) from exc
            else:
                with embedded_environment():
                    ray.init(
                        num_cpus=self.num_cpus or os.cpu_count(),
                        include_dashboard=False,
                        object_store_memory=OBJECT_STORE_BYTES,
                        _temp_dir=self.temp_dir,
                        _system_config={**LOCAL_SYSTEM_CONFIG, "task_oom_retries": self.oom_retries},
                        **common,
                    )
            self._owns_session = True
        self._nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
        self._remote = ray.remote(_run_on_worker)  # type: ignore[arg-type]  # ray types remote() for zero-argument functions only

    def _attach_head(self, common: dict[str, Any]) -> None:
        """Join the project's long-lived head, starting it if none runs (:mod:`.rayhead`)."""
        assert self.project_root is not None
        self._lease = rayhead.take_lease(self.project_root)  # before ensure: no idle stop in between
        try:
            self._join_head(common)
        except BaseException:
            self._lease.close()
            self._lease = None
            raise

    def _join_head(self, common: dict[str, Any]) -> None:
        assert self.project_root is not None
        deadline = time.monotonic() + rayhead.START_TIMEOUT
        while True:
            self.head = rayhead.ensure(self.project_root, num_cpus=self.num_cpus, idle_timeout=self.idle_timeout)
            try:
                _head_authentication()
                with embedded_environment():  # a 127.0.0.1 driver, as the head's node
                    ray.init(address=self.head.address, **common)
                return
            except (ConnectionError, rex.RayError) as exc:
                # a head that just came up on a loaded machine may not answer yet: try again
                # (a head that died is replaced by ensure)
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"cannot join the project's Ray head at {self.head.address}: {_first_line(exc)}; "
                        "`qsdk ray stop` and run again, or use --ray-address embedded",
                        address=self.head.address) from exc
                time.sleep(1.0)

    def submit(self, task: Task, *, upcoming: int | None = None) -> Future[TaskResult]:
        if self._remote is None:
            raise RuntimeError("RayExecutor.submit before init()")
        out: Future[TaskResult] = Future()
        options = task_options(task, extra=self.task_resources)
        problem = self._infeasible(options) if self.check_resources else None
        if problem:
            out.set_result(_failed(task, problem, reason="resources", ename="InfeasibleResources"))
            return out
        key = _forward_tracking(task)
        ref = self._remote.options(**options).remote(task, prewarm=self.prewarm, grace=self.wall_clock_grace,
                                                     shipped=self._shipped, tracking_key=key,
                                                     spare=takes_spare(upcoming))

        def done(finished: Future[TaskResult]) -> None:
            if key is not None:
                _kv_delete(key)
            out.set_result(detached.deliver(_result_of(finished, task)))

        ref.future().add_done_callback(done)
        return out

    def finalize(self) -> None:
        if self._owns_session and ray.is_initialized():
            shutdown_ray()  # on the long-lived head: only this driver goes, the head stays
        self._owns_session = False
        self._remote = None
        if self._lease is not None:
            self._lease.close()
            self._lease = None

    def _infeasible(self, options: Mapping[str, Any]) -> str | None:
        need = {"CPU": options["num_cpus"], "GPU": options.get("num_gpus", 0),
                "memory": options.get("memory", 0), **options.get("resources", {})}
        need = {k: v for k, v in need.items() if v}
        if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in self._nodes):
            return None
        have = [{k: node.get(k, 0) for k in need} for node in self._nodes]
        return (f"it asks for {need} but no node of the Ray cluster has that much (nodes have {have}); "
                "lower `resources:` in the stage's registry entry or add a node that has them")


def takes_spare(upcoming: int | None) -> bool:
    """Whether a task starts its worker's next kernel: while another task may follow it
    (``upcoming``: at most that many; None: unknown). Not only as many spares as tasks may
    follow: a spare serves only a task Ray sends to its worker, and Ray sends the next task to
    whichever worker is free first (counted spares, the tail of a flow whose last stage followed
    two partitions waited for a kernel's start about half the time: 0.7 s)."""
    return upcoming is None or upcoming > 0


def task_options(task: Task, *, extra: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Ray options for ``task``: its stage's ``resources`` (``num_cpus`` default 1, ``num_gpus``,
    ``memory`` in bytes, anything else a custom Ray resource), ``extra`` custom resources (the
    executor's ``task_resources``) and its bounded retries."""
    resources = {**(extra or {}), **task.resources}
    options: dict[str, Any] = {
        "name": f"qsdk:{task.key}",
        "num_cpus": float(resources.pop("num_cpus", 1)),
        "max_retries": int(task.retries),
        "retry_exceptions": False,
    }
    if "num_gpus" in resources:
        options["num_gpus"] = float(resources.pop("num_gpus"))
    if "memory" in resources:
        options["memory"] = int(resources.pop("memory"))
    if resources:
        options["resources"] = {k: float(v) for k, v in resources.items()}
    return options


# ------------------------------------------------------------------ inside a Ray worker
_pool: KernelPool | None = None
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(before=_count_fork)


def _run_on_worker(task: Task, *, prewarm: int, grace: float, shipped: bool = False,
                   tracking_key: str | None = None, spare: bool = True) -> TaskResult:
    """The Ray task: run ``task`` on a kernel of this worker's pool, detached from the driver's
    disk (with the project's code where Ray unpacked it: the worker's folder), note where it ran."""
    os.environ.setdefault(ENV_JEMALLOC_CONF, WORKER_JEMALLOC_CONF)  # before this worker loads deltalake

    def run(local: Task) -> TaskResult:
        global _pool
        if _pool is None:
            import atexit

            _pool = KernelPool(prewarm, cwd=Path(local.notebook).parent, preload=local.preload)
            atexit.register(_pool.close)
        return _pool.run_task(local, grace=grace, replace=spare)

    fetch = (lambda: _kv_wait(tracking_key)) if tracking_key else None
    result = detached.run_detached(task, run, code_root=Path.cwd() if shipped else None, fetch_tracking=fetch)
    ctx = ray.get_runtime_context()
    result.extra.update(node_id=ctx.get_node_id(), worker_pid=os.getpid(),
                        assigned_resources=ctx.get_assigned_resources(), forks=_forks)
    return result


# ------------------------------------------------------------------ the tracker's ids, through Ray
# A tracker in the background hands a task the path of a file its ids will be written to
# (qsdk.execution.tracking_ref), on the driver's disk. The driver copies them into Ray's
# key-value store when they arrive; the worker waits for them there (detached.run_detached).
def _forward_tracking(task: Task) -> str | None:
    path = task.context.tracking.get(tracking_ref.PENDING_KEY)
    if not path:
        return None
    key = f"tracking:{task.run_id}:{task.key}"

    def forward() -> None:
        ids = tracking_ref.resolve({tracking_ref.PENDING_KEY: path})
        try:
            _internal_kv()._internal_kv_put(key, json.dumps(ids), namespace=_KV_NAMESPACE)
        except Exception:  # the run ended (Ray shut down) before the tracker answered: no one waits
            pass

    threading.Thread(target=forward, name="qsdk-tracking-forward", daemon=True).start()
    return key


def _kv_wait(key: str, *, timeout: float = tracking_ref.WAIT_S) -> dict[str, Any] | None:
    kv = _internal_kv()
    deadline, delay = time.monotonic() + timeout, 0.005
    while time.monotonic() < deadline:
        value = kv._internal_kv_get(key, namespace=_KV_NAMESPACE)
        if value is not None:
            return dict(json.loads(value))
        time.sleep(delay)
        delay = min(0.1, delay * 2)
    return None  # tracking_ref.publish(None): the task runs untracked


def _kv_delete(key: str) -> None:
    try:
        _internal_kv()._internal_kv_del(key, namespace=_KV_NAMESPACE)
    except Exception:  # Ray already shut down: the store went with it
        pass


def _internal_kv() -> Any:
    """Ray's key-value store in the GCS (the module Ray's own libraries use for small shared state)."""
    from ray.experimental import internal_kv

    return internal_kv


def _env_resources() -> dict[str, float]:
    raw = os.environ.get(ENV_TASK_RESOURCES, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("not an object")
        return {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"${ENV_TASK_RESOURCES}={raw!r} is not a JSON object of resource amounts ({exc}); "
                          """set it like '{"batch_node": 0.01}' or unset it""", variable=ENV_TASK_RESOURCES) from None


# ------------------------------------------------------------------ driver side helpers
def _result_of(done: Future[TaskResult], task: Task) -> TaskResult:
    """The worker's result; a Ray-level failure (dead worker, cancelled) as a failed result."""
    try:
        return done.result()
    except rex.OutOfMemoryError as exc:
        return _failed(task, f"Ray's memory monitor killed its worker (after {task.retries} retries and "
                       f"${ENV_OOM_RETRIES} out-of-memory retries); give the stage more `memory:`",
                       reason="out_of_memory", ename=type(exc).__name__, evalue=_first_line(exc))
    except (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError) as exc:
        return _failed(task, f"its Ray worker died {task.retries + 1} time(s) (killed, out of memory "
                       "or crashed); raise `retries:` in the stage's registry entry to retry more",
                       reason="worker_died", ename=type(exc).__name__, evalue=_first_line(exc))
    except rex.TaskCancelledError as exc:
        return _failed(task, "its Ray task was cancelled", reason="cancelled",
                       ename=type(exc).__name__, evalue=_first_line(exc))
    except Exception as exc:  # the task function itself raised (e.g. no kernel could start)
        cause = exc.cause if isinstance(exc, rex.RayTaskError) and exc.cause is not None else exc
        return _failed(task, f"the Ray task raised {type(cause).__name__}: {_first_line(cause)}",
                       reason="executor", ename=type(cause).__name__, evalue=_first_line(cause))


def _failed(task: Task, detail: str, *, reason: FailureReason, **fields: Any) -> TaskResult:
    error = task.failure(detail, reason=reason, **fields)
    return TaskResult(task.stage, task.partition, "failed", task.output_notebook, error=error,
                      parameters=dict(task.parameters))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _head_authentication() -> None:
    """Authenticate to the head as Ray authenticates to a local cluster it finds by itself.

    A new local Ray (the head, like the embedded Ray) turns token authentication on by default
    with the user's token (``~/.ray/auth_token``); a driver that joins by address turns it on
    only if ``$RAY_AUTH_MODE`` says so. Ray's own rule for joining a local cluster ("on when a
    token exists, unless ``$RAY_AUTH_MODE`` says otherwise") applies here too; it must run
    before ``ray.init`` reads the mode.
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
