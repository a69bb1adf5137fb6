"""The qsdk papermill engine: papermill's nbclient engine plus a bootstrap step.

Before the first cell runs, the engine executes a silent statement in the kernel that points
``QSDK_CONTEXT`` at the stage's context file and, for a pre-warmed kernel, moves it to the
notebook's folder (papermill's ``cwd`` applies only to kernels it starts). Doing it in the
kernel rather than through the kernel's start-up environment works the same for a kernel
started for this notebook and for one started ahead of time (a pre-warmed kernel passed in as
``km``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.utils import merge_kwargs, remove_args
from traitlets import Dict, Unicode

from qsdk.errors import KernelBootstrapError
from qsdk.execution import inkernel

ENGINE_NAME = "qsdk"


def bootstrap_code(*, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """Kernel code that sets ``env`` and moves to ``cwd``, leaving no name in the namespace."""
    code = "import os as __qsdk_os\n"
    code += "".join(f"__qsdk_os.environ[{k!r}] = {v!r}\n" for k, v in (env or {}).items())
    if cwd:
        code += f"__qsdk_os.chdir({cwd!r})\n"
    return code + "del __qsdk_os\n"


class _QsdkClient(PapermillNotebookClient):
    kernel_env = Dict({}, help="environment variables set in the kernel before the first cell")
    kernel_cwd = Unicode(None, allow_none=True, help="folder the kernel moves to before the first cell")

    def papermill_execute_cells(self) -> None:
        if self.kernel_env or self.kernel_cwd:
            self._silent(bootstrap_code(env=self.kernel_env, cwd=self.kernel_cwd) + inkernel.start_code(),
                         what="could not set the stage context")
        super().papermill_execute_cells()
        if self.kernel_env:  # a stage run (not a plain papermill call): what the notebook imported
            self._silent(inkernel.finish_code(), what="could not record the notebook's imports")

    def _silent(self, code: str, *, what: str) -> None:
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        reply = self.wait_for_reply(msg_id)
        if not reply or reply["content"].get("status") != "ok":
            evalue = (reply or {}).get("content", {}).get("evalue", "no reply")
            raise KernelBootstrapError(f"kernel bootstrap failed: {what} ({evalue})")


class QsdkEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man,
        kernel_name,
        log_output=False,
        stdout_file=None,
        stderr_file=None,
        start_timeout=60,
        execution_timeout=None,
        **kwargs: Any,
    ):
        kwargs = remove_args(["input_path"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(
            safe_kwargs,
            timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
        )
        return _QsdkClient(nb_man, **final_kwargs).execute()


def register() -> None:
    """Make ``engine_name="qsdk"`` known to papermill (``run_task`` calls this).

    Deliberately not a ``papermill.engine`` entry point: papermill loads entry points while
    ``papermill.engines`` is still being imported, and this module imports from it.
    """
    papermill_engines.register(ENGINE_NAME, QsdkEngine)
