"""What qsdk runs inside a stage's kernel around the notebook.

The qsdk papermill engine calls :func:`start` right after its bootstrap (before the first cell)
and :func:`finish` after the last cell succeeded. Both run silently (no output, no history) and
leave no name in the notebook's namespace. Keep them cheap: they run once per notebook.

* ``start``: installs the direct-read guard (:mod:`qsdk.lakehouse.guard`) and the import
  recorder (:mod:`qsdk.codedeps`).
* ``finish``: writes what the notebook imported to the task's staging folder, for the cache key.
"""

from __future__ import annotations


def start() -> None:
    from qsdk import codedeps
    from qsdk.lakehouse import guard
    from qsdk.lakehouse import stagecontext as runtime

    guard.install(runtime.current())  # before the recorder: its imports are not the notebook's
    codedeps.start_recording()


def finish() -> None:
    from qsdk import codedeps

    codedeps.stop_recording()  # this function's own imports are not the notebook's
    from qsdk.lakehouse import stagecontext as runtime

    ctx = runtime.current()
    if ctx is not None and ctx.staging_dir:
        codedeps.dump_recorded(ctx.staging_dir)


def start_code() -> str:
    return "__import__('qsdk.execution.inkernel', fromlist=['start']).start()\n"


def finish_code() -> str:
    return "__import__('qsdk.execution.inkernel', fromlist=['finish']).finish()\n"
