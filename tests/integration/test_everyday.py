"""Everyday use on real kernels: a registry with broken entries still runs every other flow,
`qsdk check` lists every problem, computed defaults and the None convention reach the notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qsdk import cli
from tests.conftest import REPO
from tests.unit.model.test_registry import broken_project

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

    assert qsdk(broken, "show", "comp") == 0
    assert "out_dir: str = <computed: os.path.join('a', 'b')>, y: str = <computed: x * 2>" in capsys.readouterr().out

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

    # the pictures: by status, by a run, and a broken flow with its broken stage marked
    assert qsdk(broken, "runs", "ok", "--json") == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert qsdk(broken, "show", "ok", "--format", "svg") == 0  # status with the default label="x"
    assert _states(capsys.readouterr().out) == {"good": "stale"}
    assert qsdk(broken, "show", "ok", "--format", "svg", "-p", "label=none") == 0  # as it ran
    assert _states(capsys.readouterr().out) == {"good": "cached"}
    assert qsdk(broken, "show", "ok", "--format", "svg", "--run", run["run_id"]) == 0
    assert _states(capsys.readouterr().out) == {"good": "succeeded"}
    assert qsdk(broken, "show", "f_notag", "--format", "svg") == 0
    assert _states(capsys.readouterr().out) == {"notag": "broken", "good": "unknown"}
    assert qsdk(broken, "show", "ok", "--format", "svg", "--run", "20990101T000000Z-abcdef") == 2
    err = capsys.readouterr().err
    assert "no finished run '20990101T000000Z-abcdef'" in err and run["run_id"] in err


def _states(svg: str) -> dict[str, str]:
    """Stage -> state, as the SVG's nodes carry them."""
    import re

    return dict(re.findall(r'data-node="([^"]+)" data-kind="stage" data-state="([^"]+)"', svg))


def test_show_draws_every_stage_and_table_of_the_backfill(tmp_path, monkeypatch, capsys):
    import re

    from qsdk.config import Config
    from qsdk.model.registry import Registry

    monkeypatch.setenv("QSDK_LAKEHOUSE", str(tmp_path / "lake"))  # nothing ran there: all never run
    flow = Registry.load(Config.load(REPO)).flow("backfill")
    tables = {t for s in flow.stages for t in (*s.inputs, *s.outputs)}
    svg_path, png_path = tmp_path / "backfill.svg", tmp_path / "backfill.png"
    assert cli.main(["--project", str(REPO), "show", "backfill", "--format", "svg", "-o", str(svg_path)]) == 0
    svg = svg_path.read_text()
    assert _states(svg) == {s: "never" for s in flow.stage_names}
    assert set(re.findall(r'data-node="([^"]+)" data-kind="table"', svg)) == tables
    assert 'data-node="clean_prices" data-kind="stage" data-state="never" data-partitions="3"' in svg
    assert "clean_prices ×3" in svg  # 2000-2013 in three 5-year blocks, collapsed into the node
    assert cli.main(["--project", str(REPO), "show", "backfill", "--format", "png", "-o", str(png_path)]) == 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 20_000
    capsys.readouterr()
    assert cli.main(["--project", str(REPO), "show", "backfill", "--format", "mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart LR") and "stage_clean_prices --> table_silver__prices" in mermaid
    assert "class " in mermaid and "classDef never" in mermaid


def test_a_fresh_clone_is_a_dvc_project(tmp_path):
    """The committed .dvc/config and .dvcignore make a clone a DVC project: `dvc dag` works, and
    after a qsdk run with params.yaml's values `dvc repro` succeeds without re-running anything."""
    clone, bin_dir = tmp_path / "clone", Path(sys.executable).parent
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "QSDK_LAKEHOUSE": str(tmp_path / "lake"), "QSDK_RUNS": str(tmp_path / "runs"),
           "QSDK_DVC_REMOTE": str(tmp_path / "remote")}

    def sh(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    assert "clean_prices" in sh("dvc", "dag")
    assert sh("dvc", "remote", "default").strip() == "qsdk-local"
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["backfill"].update(start="2005-01-01", end="2005-02-28")  # a short range: one kernel
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    sh("qsdk", "run", "backfill", "--only", "ingest_prices", "-p", "start=2005-01-01", "-p", "end=2005-02-28",
       "--executor", "local", "--no-track")
    first = sh("dvc", "repro", "ingest_prices")
    assert "Running stage 'ingest_prices'" in first and "cached" in first  # no lock yet: DVC asks qsdk
    assert "didn't change" in sh("dvc", "repro", "ingest_prices")
    # QSDK_DVC_REMOTE points the committed qsdk-local remote elsewhere, in .dvc/config.local only
    from qsdk.integrations.dvc import command as dvc

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QSDK_DVC_REMOTE", str(tmp_path / "remote"))
        assert dvc.ensure_remote(clone) == "qsdk-local"
    assert str(tmp_path / "remote") in sh("dvc", "remote", "list")
    assert "~/.cache/qsdk/dvc-remote" in (clone / ".dvc" / "config").read_text()


def test_output_into_a_closed_pipe_ends_quietly():
    """`qsdk tables --json | head`: the reader leaves early; no BrokenPipeError traceback."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "qsdk"), "--project", str(REPO), "list", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before qsdk writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "BrokenPipe" not in err and "Traceback" not in err and "Exception ignored" not in err, err
