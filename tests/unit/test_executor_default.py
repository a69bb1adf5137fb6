"""One executor default (qsdk.config.DEFAULT_EXECUTOR) for the CLI, the SDK, the launcher,
reproduce and the scheduler: a change there changes them all."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from qsdk import config
from qsdk.cli import build_parser


def test_every_front_end_and_the_sdk_default_to_the_one_executor_default():
    from qsdk.execution.scheduling import run_flow
    from qsdk.reproduce import reproduce
    from qsdk.sdk import QuantSDK
    from qsdk.widgets import Launcher

    assert config.DEFAULT_EXECUTOR in ("local", "ray")
    parser = build_parser()
    assert parser.parse_args(["run", "backfill"]).executor == config.DEFAULT_EXECUTOR
    assert parser.parse_args(["reproduce", "r1"]).executor == config.DEFAULT_EXECUTOR
    for function in (QuantSDK.run_pipeline, reproduce, run_flow, Launcher.__init__):
        default = inspect.signature(function).parameters["executor"].default
        assert default == config.DEFAULT_EXECUTOR, function.__qualname__


def test_no_module_spells_an_executor_default_of_its_own():
    """The equality above would also hold for a copied literal; this catches the copy (a typed
    parameter default, or an argparse default)."""
    root = Path(config.__file__).parent
    literal = re.compile(r"""executor\s*:[^=\n]*=\s*["'](local|ray)["']|--executor["'],\s*default=["']""")
    found = [f"{p.relative_to(root.parent)}:{m.group(0)}" for p in sorted(root.rglob("*.py"))
             for m in literal.finditer(p.read_text())]
    assert found == []
