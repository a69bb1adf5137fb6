"""How qsdk starts a local Ray (the embedded one, and the long-lived head): the import path its
processes inherit, loopback only. Imports no Ray at module level (the head's launcher and
``qsdk ray status`` load it without Ray)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Ray's single-machine mode (the default on macOS and Windows): node address 127.0.0.1 stays
# 127.0.0.1 and every server binds to it. On Linux Ray otherwise advertises the machine's
# address and binds its gRPC servers on all interfaces.
_ENV_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
SOURCE_ROOT = str(Path(__file__).resolve().parents[3])  # the folder holding this qsdk package
OBJECT_STORE_BYTES = 256 * 2**20  # results are small; table data goes through Delta, not Ray


def pythonpath() -> str:
    """Workers import this qsdk, from this source tree, whatever else is installed."""
    current = os.environ.get("PYTHONPATH")
    return os.pathsep.join([SOURCE_ROOT, current] if current else [SOURCE_ROOT])


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
