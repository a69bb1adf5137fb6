"""The lakehouse on an S3-compatible object store against a local folder: a big write and a no-op
re-run, each printed next to the local-disk figure.

The store is the loopback test server (``tests/services/s3server.py``: moto, in memory, plain
http on 127.0.0.1), so the figures measure qsdk's and deltalake's object-store paths (more
requests: listing, conditional puts, ranged reads), not a network; a real store adds its
round trips. Both sides run the one-stage ``trivial`` flow of ``_trivial.py`` in this process
with the local executor and no pre-warming, alternating local and S3 each round:

* write: the flow writing ``--rows`` rows (cache and tracking off), minus its 10-row run;
* no-op re-run: the same flow again when nothing changed (every task decided cached from the
  cache record and the table versions, both on the store).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median  # noqa: E402
from _trivial import project  # noqa: E402

sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from qsdk.execution.executors.local import LocalExecutor
    from qsdk.sdk import QuantSDK
    from tests.services.fixtures import start_s3_server, stop

    work = Path(tempfile.mkdtemp(prefix="qsdk-bench-s3-"))
    root = project(work / "project")
    server = start_s3_server()
    os.environ.update(server.env)

    def run(where: str, rows: int, *, cache: bool) -> float:
        sdk = QuantSDK(root, lakehouse_root=where, runs_dir=work / "runs")
        started = time.perf_counter()
        sdk.run_pipeline("trivial", params={"rows": rows}, executor=LocalExecutor(prewarm=0), track=False,
                         cache=cache)
        return time.perf_counter() - started

    writes: dict[str, list[float]] = {"local": [], "s3": []}
    noops: dict[str, list[float]] = {"local": [], "s3": []}
    try:
        for i in range(args.repeat + 1):  # round 0 warms up
            for side in ("local", "s3"):
                base = str(work / "lakes") if side == "local" else server.url(f"bench-{uuid.uuid4().hex[:8]}")
                small = run(f"{base}/w-small-{i}", 10, cache=False)
                big = run(f"{base}/w-big-{i}", args.rows, cache=False)
                run(f"{base}/noop-{i}", 10, cache=True)  # cold: the cache records are written
                noop = run(f"{base}/noop-{i}", 10, cache=True)
                if i:
                    writes[side].append(big - small)
                    noops[side].append(noop)
    finally:
        stop(server.process)
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"write of {args.rows:,} rows through qsdk.write_table, over the 10-row run: local folder "
          f"{median(writes['local']):.2f} s, S3 (loopback) {median(writes['s3']):.2f} s "
          f"({median(writes['s3']) / median(writes['local']):.2f}x, n={args.repeat})")
    print(f"no-op re-run of a one-stage flow: local folder {median(noops['local']):.2f} s, S3 (loopback) "
          f"{median(noops['s3']):.2f} s ({median(noops['s3']) / median(noops['local']):.2f}x, n={args.repeat})")


if __name__ == "__main__":
    main()
