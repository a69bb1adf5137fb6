"""Terminal progress for flow runs: live per stage and per partition, and a summary at the end.

On a terminal, a ``rich`` live table shows one row per stage with a mark per partition
(pending, running, done, cached, failed, skipped) and counts. Elsewhere (a pipe, a log file,
CI) it prints one line per finished task instead. Either way the run ends with a summary
table and the failures with their stage, partition, cell and exception.

"running" means handed to the executor: on Ray a task may still wait there for a free CPU.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from qsdk.execution.hooks import Hook

_MARK = {"succeeded": "ok  ", "failed": "FAIL", "cached": "hit ", "skipped": "skip"}
_GLYPH = {"pending": ("·", "dim"), "running": ("▶", "yellow"), "succeeded": ("✓", "green"),
          "cached": ("○", "cyan"), "failed": ("✗", "bold red"), "skipped": ("-", "dim")}
_ORDER = ("succeeded", "cached", "running", "pending", "failed", "skipped")
_MAX_MARKS = 60  # beyond this many partitions a stage shows counts only


class ConsoleProgress(Hook):
    """``live``: force the live table on (``True``) or off (``False``); default: on a terminal."""

    def __init__(self, stream: Any = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.live_mode = self.console.is_terminal if live is None else live
        self._state: dict[str, dict[str, str]] = {}  # stage -> task key -> status
        self._started = 0.0
        self._title = ""
        self._live: Live | None = None

    # ------------------------------------------------------------ hook methods
    def before_flow(self, *, run, **_: Any) -> None:
        self._state = {stage: {t.key: "pending" for t in tasks} for stage, tasks in run.tasks.items()}
        n = sum(len(keys) for keys in self._state.values())
        self._title = f"qsdk: run {run.run_id} of flow {run.flow.name!r}: {len(self._state)} stage(s), {n} task(s)"
        self._started = time.perf_counter()
        if self.live_mode:
            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.start()
        else:
            self.console.print(self._title)

    def before_task(self, *, task, **_: Any) -> None:
        self._set(task.stage, task.key, "running")

    def after_task(self, *, task, result, **_: Any) -> None:
        self._set(task.stage, task.key, result.status)
        if self._live is None:
            self.console.print(f"  [{_MARK.get(result.status, result.status)}] {result.key:<40} "
                               f"{result.duration:6.1f}s", markup=False)

    def after_flow(self, *, result, **_: Any) -> None:
        for r in result.results:  # tasks never started are reported as skipped
            self._set(r.stage, r.key, r.status)
        if self._live is not None:
            self._live.stop()
            self._live = None
            self.console.print(self._title)
        self.console.print(self._summary(result))
        for r in result.failures:
            self.console.print(Text.assemble(("  ✗ ", "bold red"), (str(r.error or r.key), "")))
        counts: dict[str, int] = {}
        for r in result.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        self.console.print(f"qsdk: {result.status} in {result.duration:.1f}s ({summary}); "
                           f"notebooks in {result.run_dir}", markup=False)

    # ------------------------------------------------------------ rendering
    def _set(self, stage: str, key: str, status: str) -> None:
        self._state.setdefault(stage, {})[key] = status

    def _render(self) -> Group:
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("stage")
        table.add_column("partitions")
        table.add_column("done", justify="right")
        table.add_column("running", justify="right")
        table.add_column("failed", justify="right")
        for stage, tasks in list(self._state.items()):
            statuses = list(tasks.values())
            marks = Text()
            if len(statuses) <= _MAX_MARKS:
                for status in statuses:
                    glyph, style = _GLYPH.get(status, ("?", ""))
                    marks.append(glyph, style=style)
            done = sum(s in ("succeeded", "cached") for s in statuses)
            table.add_row(stage, marks, f"{done}/{len(statuses)}", str(statuses.count("running")),
                          str(statuses.count("failed")))
        elapsed = time.perf_counter() - self._started
        return Group(Text(self._title), table, Text(f"{elapsed:.0f}s", style="dim"))

    def _summary(self, result) -> Table:
        table = Table(title=None, box=None, header_style="bold", pad_edge=False)
        for name in ("stage", "status", "tasks", *_ORDER[:2], "failed", "skipped", "time"):
            table.add_column(name, justify="left" if name in ("stage", "status") else "right")
        for stage, tasks in self._state.items():
            statuses = list(tasks.values())
            seconds = sum(r.duration for r in result.results if r.stage == stage)
            status = result.stage_status(stage)
            style = {"failed": "bold red", "skipped": "dim", "succeeded": "green", "cached": "cyan"}.get(status, "")
            table.add_row(stage, Text(status, style=style), str(len(statuses)),
                          *(str(statuses.count(s)) for s in ("succeeded", "cached", "failed", "skipped")),
                          f"{seconds:.1f}s")
        return table
