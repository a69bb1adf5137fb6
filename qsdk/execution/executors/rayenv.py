"""How qsdk starts a local Ray (the embedded one, and the long-lived head): the import path its
processes inherit, loopback only. Imports no Ray at module level (the head's launcher and
``qsdk ray status`` load it without Ray)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qsdk import storage
from qsdk.localservice import SOURCE_ROOT, pythonpath

# Ray's single-machine mode (the default on macOS and Windows): node address 127.0.0.1 stays
# 127.0.0.1 and every server binds to it. On Linux Ray otherwise advertises the machine's
# address and binds its gRPC servers on all interfaces.
_ENV_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
OBJECT_STORE_BYTES = 256 * 2**20  # results are small; table data goes through Delta, not Ray
# Ray's settings for a Ray qsdk starts (embedded, the head). While it starts, the raylet connects
# to the object store it has just launched on a thread; when the store is not listening yet (most
# starts on 2 cores) the retry sleeps a whole second (10 attempts, 1 s apart). Retrying every
# 0.1 s, 100 times, keeps the same 10 s of patience and takes about 1 s off ``ray.init`` (2.7 s
# instead of 3.7 s in 6 of 8 alternating starts, 2026-11-30).
LOCAL_SYSTEM_CONFIG: dict[str, int] = {"raylet_client_connect_timeout_milliseconds": 100,
                                       "raylet_client_num_connect_attempts": 100}
# What a worker of a cluster needs from the driver's environment: the object store's variables
# (qsdk.storage) and an MLflow server's credentials. Shipped in the job's runtime_env, which
# whoever can read the cluster's job metadata can read: a node's own credentials (an instance
# role, its own environment) are used where the driver has none set.
FORWARDED_ENV = (*storage.ENV_VARS, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS")
# Never shipped with the project's code: run outputs, local stores and Delta tables, caches; Ray
# leaves out .git, .venv, venv and __pycache__ itself, and what the project's .gitignore names.
# gitwildmatch patterns, and Ray applies them to qsdk's own folder too (``py_modules``): "/lakehouse/"
# would drop qsdk/lakehouse, so a local lakehouse is left out by its table files instead.
CODE_EXCLUDES = ["/runs/", "/mlruns/", "/mlartifacts/", "/mlflow.db", "/.mlflow-server/", "/.qsdk/",
                 "/.dvc/cache/", "/.dvc/tmp/", "_delta_log/", "/lakehouse*/**/*.parquet",
                 "/lakehouse*/_qsdk_*/", "/lakehouse*/_sandbox/", ".pytest_cache/", ".mypy_cache/",
                 ".ruff_cache/", "*.egg-info/"]


def cluster_runtime_env(*, project_root: str | Path | None, env: Mapping[str, str],
                        excludes: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``runtime_env`` of a driver that joins a cluster by address, whose nodes may share no
    disk with it: :data:`FORWARDED_ENV` as set here, and, with ``project_root``, the project's
    code as Ray's ``working_dir`` (workers start in their node's copy of it, first on the import
    path), with this qsdk's package as a ``py_modules`` entry when it lies outside the project.
    Without ``project_root`` the workers import this source tree's path (a shared disk)."""
    runtime: dict[str, Any] = {"env_vars": {k: env[k] for k in FORWARDED_ENV if env.get(k)}}
    if project_root is None:
        runtime["env_vars"]["PYTHONPATH"] = pythonpath()
        return runtime
    root = Path(project_root).resolve()
    runtime["working_dir"] = str(root)
    runtime["excludes"] = [*CODE_EXCLUDES, *excludes]
    package = Path(SOURCE_ROOT) / "qsdk"
    if not package.is_relative_to(root):
        runtime["py_modules"] = [str(package)]
    return runtime


@contextmanager
def embedded_environment() -> Iterator[None]:
    """While the embedded Ray starts: its processes inherit our import path and listen on
    127.0.0.1 only.

    The environment reaches the processes Ray spawns (and through the raylet, its workers:
    cheaper than a ``runtime_env``, which makes Ray start new workers). The driver reads
    the local-only switch once at import, so its constant is flipped too; both are restored.
    """
    from ray._private import ray_constants

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", _ENV_LOCAL_ONLY)}
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["PYTHONPATH"] = pythonpath()
    os.environ[_ENV_LOCAL_ONLY] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shutdown_ray() -> None:
    """``ray.shutdown()``, without the second a local Ray's shutdown spends on its autoscaler.

    A Ray this process started (the embedded one, the head) stops its processes one by one: the
    raylet, then the GCS, then Ray's autoscaler monitor. The monitor answers SIGTERM by reporting
    its "failure" to the GCS, which is gone by then; it blocks there, and Ray waits its full
    one-second grace before killing it: about 1 s of every ``qsdk run`` on an embedded Ray. A
    one-node Ray has nothing to autoscale; its monitor is killed first. A driver that only joined
    a cluster started nothing and is left to ``ray.shutdown()`` alone.
    """
    import ray
    from ray._private import worker

    node = worker._global_node
    if node is not None and node.head:
        node.kill_monitor(check_alive=False)
    ray.shutdown()
