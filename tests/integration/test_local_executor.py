"""The local executor overlaps the driver's task imports with its first kernel's start."""
from __future__ import annotations

import subprocess
import sys


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
