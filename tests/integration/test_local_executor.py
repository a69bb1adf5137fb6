"""The local executor overlaps the driver's task imports with its first kernel's start."""
from __future__ import annotations

import subprocess
import sys

from qsdk.execution.executors.local import LocalExecutor


def test_init_imports_papermill_on_a_thread_while_the_first_kernel_starts():
    code = (
        "import sys, threading\n"
        "from qsdk.execution.executors.local import LocalExecutor\n"
        "ex = LocalExecutor(prewarm=1)\n"
        "assert 'papermill' not in sys.modules\n"
        "ex.init()\n"
        "[t.join() for t in threading.enumerate() if t.name == 'qsdk-task-imports']\n"
        "print('papermill' in sys.modules, 'deltalake' in sys.modules)\n"
        "ex.finalize()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True"]


class _Recording(LocalExecutor):
    def __init__(self) -> None:
        super().__init__(prewarm=1)
        self.upcoming: list[int | None] = []

    def submit(self, task, *, upcoming=None):
        self.upcoming.append(upcoming)
        return super().submit(task, upcoming=upcoming)


def test_the_last_task_starts_no_spare_kernel(project, monkeypatch):
    """A pre-warmed pool starts a replacement kernel as each task takes one, except after the
    run's last task: a spare nobody uses would cost a kernel's start and its imports."""
    from qsdk.execution import kernels

    starts: list[int] = []
    real_start = kernels._PooledKernelManager.start_kernel

    async def counted(self, *args, **kwargs):
        starts.append(1)
        return await real_start(self, *args, **kwargs)

    monkeypatch.setattr(kernels._PooledKernelManager, "start_kernel", counted)
    sdk = project.a_then_b().sdk()
    ex = _Recording()
    result = sdk.run_pipeline("f", executor=ex, track=False, cache=False)
    assert result.status == "succeeded"
    assert ex.upcoming == [1, 0]
    assert len(starts) == 2, f"{len(starts)} kernels started for 2 tasks"
