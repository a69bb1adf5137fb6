"""Terminal progress for flow runs: a hook that prints each task as it finishes, and a summary."""

from __future__ import annotations

import sys
from typing import Any

from qsdk.hooks import Hook

_MARK = {"succeeded": "ok  ", "failed": "FAIL", "cached": "hit ", "skipped": "skip"}


class ConsoleProgress(Hook):
    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr

    def before_flow(self, *, run, **_: Any) -> None:
        n = sum(len(t) for t in run.tasks.values())
        print(f"qsdk: run {run.run_id} of flow {run.flow.name!r}: {len(run.tasks)} stage(s), {n} task(s)",
              file=self.stream, flush=True)

    def after_task(self, *, task, result, **_: Any) -> None:
        print(f"  [{_MARK.get(result.status, result.status)}] {result.key:<40} {result.duration:6.1f}s",
              file=self.stream, flush=True)

    def after_flow(self, *, result, **_: Any) -> None:
        counts: dict[str, int] = {}
        for r in result.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        print(f"qsdk: {result.status} in {result.duration:.1f}s ({summary}); notebooks in {result.run_dir}",
              file=self.stream, flush=True)
