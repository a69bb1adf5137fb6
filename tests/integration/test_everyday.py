"""Everyday use on real kernels: a registry with broken entries still runs every other flow,
`qsdk check` lists every problem, computed defaults and the None convention reach the notebook."""

from __future__ import annotations

import json

import pytest

from qsdk import cli
from tests.unit.test_registry import broken_project

WRITE = ('import pandas as pd\nimport qsdk\n'
         'qsdk.write_table("{table}", pd.DataFrame({{"k": [int({k})], "v": [float({v})]}}), mode="overwrite")')


@pytest.fixture
def broken(project):
    """broken_project, with notebooks that write their table."""
    broken_project(project)
    project.stage("good", 'x: int = 1\nlabel: str = "x"',
                  WRITE.format(table="bronze.a", k="x", v='label == "none"'), outputs=["bronze.a"])
    project.stage("computed", 'import os\nx: int = 1\nout_dir = os.path.join("a", "b")\ny = x * 2',
                  WRITE.format(table="bronze.e", k="y", v="len(out_dir)"), outputs=["bronze.e"])
    project.save()
    return project


def qsdk(project, *argv: str) -> int:
    return cli.main(["--project", str(project.root), *argv])


def test_broken_entries_are_listed_checked_and_refused_while_other_flows_run(broken, capsys):
    assert qsdk(broken, "list") == 0
    out = capsys.readouterr()
    assert "ok               good" in out.out
    assert "f_ghost          BROKEN: flow 'f_ghost' needs stage 'ghost', which is broken" in out.out
    assert "`qsdk check` lists them" in out.err

    assert qsdk(broken, "check") == 1
    lines = capsys.readouterr().out.splitlines()
    assert {line.split(":")[0] for line in lines} == {
        "stage notag", "stage badentry", "stage ghost", "file zz_extra.yaml",
        "flow f_notag", "flow f_bad", "flow f_ghost"}

    assert qsdk(broken, "show", "f_notag") == 0
    out = capsys.readouterr().out
    assert "notag  BROKEN:" in out and "no parameters cell" in out and "  good\n" in out

    assert qsdk(broken, "run", "f_ghost", "--executor", "local", "--no-track") == 2
    assert "which is broken" in capsys.readouterr().err
    assert not (broken.root / "runs").exists()  # refused before any run folder or kernel

    assert qsdk(broken, "run", "ok", "--executor", "local", "--no-track", "-p", "label=none") == 0
    assert qsdk(broken, "run", "comp", "--executor", "local", "--no-track", "--json") == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["parameters"]["computed"] == {"x": 1}  # the notebook computed out_dir and y itself
    lake = broken.sdk().lakehouse
    assert lake.read("bronze.a").to_pylist() == [{"k": 1, "v": 1.0}]  # "none" arrived as the string
    assert lake.read("bronze.e").to_pylist() == [{"k": 2, "v": 3.0}]  # y = 1 * 2, out_dir = "a/b"
