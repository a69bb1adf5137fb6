"""Stages on real kernels against real Delta tables: the contract holds end to end."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from qsdk.errors import FlowFailed

COLS = {"k": "int64", "v": "float64"}
IMPORTS = "import pandas as pd\nimport qsdk"
GOOD = 'qsdk.write_table("bronze.a", pd.DataFrame({"k": [1, 2, 3], "v": [0.1, 0.2, 0.3]}), mode="merge")'


def base(project):
    return (project.table("bronze.a", COLS, primary_key=["k"]).table("silver.b", COLS, primary_key=["k"])
            .table("silver.c", COLS, primary_key=["k"]))


def seeded(project, stage_code, **spec):
    """A project where `seed` wrote bronze.a once, and stage `bad` runs ``stage_code``."""
    base(project).stage("seed", "n: int = 3", IMPORTS, GOOD, outputs=["bronze.a"])
    spec = {"inputs": ["bronze.a"], "outputs": ["silver.b"], **spec}
    project.stage("bad", "x: int = 1", IMPORTS, *stage_code, **spec)
    project.flow("seed", ["seed"]).flow("bad", ["bad"])
    sdk = project.sdk()
    sdk.run_pipeline("seed")
    return sdk


def failure(sdk, flow="bad"):
    result = sdk.run_pipeline(flow, raise_on_failure=False)
    assert result.status == "failed"
    (err,) = [r.error for r in result.results if r.error]
    return result, err


def test_good_stage_writes_and_records_versions(project):
    base(project).stage("seed", "n: int = 3", IMPORTS, GOOD, outputs=["bronze.a"])
    project.stage("copy", "scale: float = 2.0", IMPORTS,
                  'df = qsdk.DataLoader().read("bronze.a")\ndf["v"] = df["v"] * scale\n'
                  'qsdk.write_table("silver.b", df, mode="overwrite")',
                  inputs=["bronze.a"], outputs=["silver.b"])
    sdk = project.flow("f", ["seed", "copy"]).sdk()
    result = sdk.run_pipeline("f", params={"scale": "10"})
    out = result.to_dict()
    assert out["stages"]["seed"]["written"] == {"bronze.a": 0}
    assert out["stages"]["copy"]["read"] == {"bronze.a": 0}
    assert out["stages"]["copy"]["written"] == {"silver.b": 0}
    assert sorted(sdk.lakehouse.read("silver.b").column("v").to_pylist()) == [1.0, 2.0, 3.0]
    nb = nbformat.read(out["stages"]["copy"]["notebooks"][0], as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "scale = 10.0" in injected[0].source
    meta = sdk.lakehouse.commit_metadata("silver.b", 0)
    assert meta["qsdk.stage"] == "copy" and meta["qsdk.run_id"] == result.run_id
    assert json.loads(meta["qsdk.inputs"]) == {"bronze.a": 0}


def test_undeclared_read(project):
    sdk = seeded(project, ['qsdk.DataLoader().read("silver.c")'])
    _, err = failure(sdk)
    assert err.ename == "ContractViolation" and "read undeclared table 'silver.c'" in err.evalue
    assert err.stage == "bad" and err.cell_index == 2  # index in the stage notebook


def test_undeclared_write_leaves_table_untouched(project):
    sdk = seeded(project, ['qsdk.write_table("bronze.a", pd.DataFrame({"k": [9], "v": [9.0]}))'])
    _, err = failure(sdk)
    assert "wrote undeclared table 'bronze.a'" in err.evalue
    assert sdk.lakehouse.version("bronze.a") == 0 and sdk.lakehouse.info("bronze.a").rows == 3


def test_wrong_schema(project):
    sdk = seeded(project, ['qsdk.write_table("silver.b", pd.DataFrame({"k": [1], "v": ["high"]}))'])
    _, err = failure(sdk)
    assert "column 'v'" in err.evalue and "float64" in err.evalue
    assert not sdk.lakehouse.exists("silver.b")


def test_duplicate_key(project):
    sdk = seeded(project, ['qsdk.write_table("silver.b", pd.DataFrame({"k": [1, 1], "v": [1.0, 2.0]}))'])
    _, err = failure(sdk)
    assert "duplicate primary key" in err.evalue


def test_stage_raising_halfway_commits_nothing_and_keeps_its_notebook(project):
    sdk = seeded(project, [
        'qsdk.write_table("silver.b", pd.DataFrame({"k": [1], "v": [1.0]}))',
        'qsdk.write_table("silver.c", pd.DataFrame({"k": [1], "v": [1.0]}))',
        'raise RuntimeError("boom halfway")',
    ], outputs=["silver.b", "silver.c"])
    # give silver.b a last good version first
    project.stage("prime", "x: int = 1", IMPORTS, 'qsdk.write_table("silver.b", pd.DataFrame({"k": [7], "v": [7.0]}))',
                  outputs=[]).save()
    lake = sdk.lakehouse
    lake.write("silver.b", __import__("pandas").DataFrame({"k": [7], "v": [7.0]}), mode="append")
    result, err = failure(sdk)
    assert err.ename == "RuntimeError" and err.evalue == "boom halfway" and err.cell_index == 4
    assert lake.version("silver.b") == 0 and lake.read("silver.b").column("k").to_pylist() == [7]
    assert not lake.exists("silver.c")
    kept = nbformat.read(err.notebook, as_version=4)
    assert any("boom halfway" in json.dumps(c.get("outputs", [])) for c in kept.cells)
    assert Path(result.run_dir, "run.json").exists()


def test_sys_exit_before_writing_is_a_failed_stage(project):
    sdk = seeded(project, ["import sys\nsys.exit(0)", 'qsdk.write_table("silver.b", pd.DataFrame({"k": [1], "v": [1.0]}))'])
    _, err = failure(sdk)
    assert err.reason == "outputs_missing" and "silver.b" in str(err)


def test_failed_stage_stops_downstream(project):
    base(project).stage("first", "x: int = 1", "raise ValueError('nope')", outputs=["bronze.a"])
    project.stage("second", "x: int = 1", IMPORTS, "pass", inputs=["bronze.a"], outputs=["silver.b"])
    sdk = project.flow("f", ["first", "second"]).sdk()
    with pytest.raises(FlowFailed, match="first failed: cell 1 \\(In \\[3\\]\\) raised ValueError: nope"):
        sdk.run_pipeline("f")
    result = sdk.run_pipeline("f", raise_on_failure=False)
    assert {r.stage: r.status for r in result.results} == {"first": "failed", "second": "skipped"}


def test_cli_json_and_exit_codes(project):
    base(project).stage("seed", "n: int = 3", IMPORTS, GOOD, outputs=["bronze.a"]).flow("seed", ["seed"]).save()
    env_args = ["--project", str(project.root)]
    cmd = [sys.executable, "-m", "qsdk", *env_args]
    env = {**__import__("os").environ, "QSDK_LAKEHOUSE": str(project.root / "lake"), "QSDK_RUNS": str(project.root / "runs")}
    done = subprocess.run([*cmd, "run", "seed", "-p", "n=4", "--json", "--executor", "local"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "succeeded" and out["flow"] == "seed"
    assert out["stages"]["seed"]["written"] == {"bronze.a": 0}
    assert out["stages"]["seed"]["notebooks"][0].endswith("seed.ipynb")
    assert Path(out["stages"]["seed"]["notebooks"][0]).exists()
    bad = subprocess.run([*cmd, "run", "seed", "-p", "n=four"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "qsdk: error: stage 'seed', parameter 'n': expected int, got 'four' (invalid literal for int() with base 10: 'four')"
    ]
    tables = subprocess.run([*cmd, "tables", "--json"], capture_output=True, text=True, env=env)
    info = {t["name"]: t for t in json.loads(tables.stdout)}
    assert info["bronze.a"]["version"] == 0 and info["bronze.a"]["rows"] == 3
    assert info["silver.b"]["version"] is None
