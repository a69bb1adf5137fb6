"""Reads and links around the contract, from inside a stage's kernel.

A notebook that opens a table's files itself (``open()``, pandas, pyarrow, deltalake's Rust
reader, through a link) fails its stage with reason ``direct_read`` naming the path and the
``DataLoader`` call to use, even if it caught the error; qsdk's own reads in the same notebook
pass. A link made in the lakehouse fails the stage as a direct write, and ``qsdk tables``
reports what it cannot resolve as broken while listing the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from qsdk import cli
from tests.conftest import Project
from tests.reliability.conftest import TableState, state

COLS = {"k": "int64", "v": "float64"}
LOG0 = "silver/prices/_delta_log/00000000000000000000.json"

# The notebook reads silver.prices through qsdk (must pass), runs `attack`, then writes its output.
NOTEBOOK = """import pandas as pd, qsdk
prices = qsdk.DataLoader().read("silver.prices")
lake = qsdk.DataLoader().lakehouse.root
exec(attack)
qsdk.write_table("silver.out", prices)"""

# case -> (attack, path it opened relative to the lakehouse, table named in the fix)
READS = {
    "open() of a Delta commit": (f'open(f"{{lake}}/{LOG0}").read()', LOG0, "silver.prices"),
    "pandas read_parquet of a table folder": ('pd.read_parquet(f"{lake}/silver/prices")', "silver/prices",
                                              "silver.prices"),
    "pyarrow.dataset": ('import pyarrow.dataset as ds\nds.dataset(f"{lake}/silver/prices").to_table()',
                        "silver/prices", "silver.prices"),
    "deltalake.DeltaTable of an undeclared table": (
        'import deltalake\ndeltalake.DeltaTable(f"{lake}/silver/secret").to_pandas()', "silver/secret",
        "silver.secret"),
    "through a link made outside the lakehouse": (
        'import os\nos.symlink(f"{lake}/silver", "silver_link")\npd.read_parquet("silver_link/prices")',
        "silver/prices", "silver.prices"),
    "caught by the notebook": (
        'try:\n    pd.read_parquet(f"{lake}/silver/prices")\nexcept Exception as exc:\n    print("ignored", exc)',
        "silver/prices", "silver.prices"),
}


def _reader_sdk(project: Project, lakehouse_root: str | Path | None = None):
    """The reader stage's project, its two tables seeded, on ``lakehouse_root`` (default: the project's)."""
    from qsdk.sdk import QuantSDK

    (project.table("silver.prices", COLS, primary_key=["k"]).table("silver.secret", COLS)
     .table("silver.out", COLS)
     .stage("reader", 'attack: str = ""', NOTEBOOK, inputs=["silver.prices"], outputs=["silver.out"])
     .flow("f", ["reader"]).save())
    sdk = QuantSDK(project.root, lakehouse_root=lakehouse_root or project.root / "lakehouse",
                   runs_dir=project.root / "runs")
    sdk.lakehouse.write("silver.prices", pd.DataFrame({"k": range(10), "v": 1.0}), mode="append")
    sdk.lakehouse.write("silver.secret", pd.DataFrame({"k": [1], "v": 2.0}), mode="append")
    return sdk


def _failed_read(sdk, attack: str):
    """Run the reader stage with ``attack``: its one failure, a direct read the guard caught."""
    result = sdk.run_pipeline("f", params={"attack": attack}, executor="local", track=False, cache=False,
                              raise_on_failure=False)
    (failed,) = result.failures
    assert failed.error.reason == "direct_read" and failed.error.ename == "DirectLakehouseRead", failed.error
    return failed


@pytest.fixture(scope="module")
def sdk(tmp_path_factory):
    return _reader_sdk(Project(tmp_path_factory.mktemp("direct") / "proj"))


@pytest.mark.parametrize("case", list(READS))
def test_direct_reads_of_lakehouse_files_fail_the_stage(sdk, case):
    attack, opened, table = READS[case]
    before = state(sdk.lakehouse, "silver.out")
    failed = _failed_read(sdk, attack)
    err = failed.error
    lake = sdk.lakehouse.root
    assert err.evalue.splitlines() == [str(lake / opened)]
    assert f"read {lake / opened} directly" in str(err)
    assert f"read it with qsdk.DataLoader().read({table!r})" in str(err)
    declared = table == "silver.prices"
    assert (f"after adding {table!r} to the stage's inputs" in str(err)) is not declared
    assert state(sdk.lakehouse, "silver.out") == before  # its staged write: not committed
    if case != "caught by the notebook":  # the cell that read raised, naming the fix
        notebook = json.loads(Path(failed.notebook).read_text())
        errors = [o for c in notebook["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert errors and errors[0]["ename"] == "DirectReadError"


READS_S3 = {case: READS[case] for case in ("pandas read_parquet of a table folder", "pyarrow.dataset",
                                           "deltalake.DeltaTable of an undeclared table")}


@pytest.mark.parametrize("case", list(READS_S3))
def test_direct_reads_of_an_object_store_lakehouse_fail_the_stage(project, s3_root, case):
    """On an ``s3://`` lakehouse the guard sees the table's URI (or, from pandas, its key with
    pyarrow's S3 file system) in the wrapped readers' arguments."""
    attack, opened, table = READS_S3[case]
    sdk = _reader_sdk(project, s3_root)
    assert sdk.run_pipeline("f", executor="local", track=False, cache=False).status == "succeeded"  # qsdk's reads pass
    before = state(sdk.lakehouse, "silver.out")
    err = _failed_read(sdk, attack).error
    assert err.evalue.splitlines() == [f"{s3_root}/{opened}"]
    assert f"read it with qsdk.DataLoader().read({table!r})" in str(err)
    assert state(sdk.lakehouse, "silver.out") == before  # its staged write: not committed


def test_links_in_the_lakehouse_fail_the_stage_and_qsdk_tables_reports_them_broken(project, tmp_path, capsys):
    outside = tmp_path / "outside" / "t"
    (outside / "_delta_log").mkdir(parents=True)
    attack = (f'import os\nos.symlink(f"{{lake}}/silver/prices", f"{{lake}}/silver/alias")\n'
              f'os.symlink({str(outside)!r}, f"{{lake}}/silver/escape")')
    sdk = (project.table("silver.prices", COLS).table("silver.out", COLS)
           .stage("reader", 'attack: str = ""', NOTEBOOK, inputs=["silver.prices"], outputs=["silver.out"])
           .flow("f", ["reader"]).sdk())
    sdk.lakehouse.write("silver.prices", pd.DataFrame({"k": range(10), "v": 1.0}), mode="append")
    junk = sdk.lakehouse.root / "silver" / "junk" / "_delta_log"
    junk.mkdir(parents=True)
    (junk / "00000000000000000000.json").write_text("not a commit\n")  # a damaged table

    result = sdk.run_pipeline("f", params={"attack": attack}, executor="local", track=False, cache=False,
                              raise_on_failure=False)
    (failed,) = result.failures
    err = failed.error
    assert err.reason == "direct_write"  # (not direct_read: the notebook's DataLoader read passed)
    assert sorted(err.evalue.splitlines()) == ["silver/alias", "silver/escape"]
    assert "created the symbolic links" in str(err) and "remove it" in str(err)
    assert state(sdk.lakehouse, "silver.out") == TableState(None, None)

    # qsdk tables lists every table, and says which cannot be read and why
    assert cli.main(["--project", str(project.root), "tables", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["silver.prices"] == {"name": "silver.prices", "version": 0, "rows": 10, "broken": None,
                                     "path": str(sdk.lakehouse.root / "silver" / "prices")}
    assert rows["silver.out"]["broken"] is None and rows["silver.out"]["version"] is None
    assert "is a symbolic link (to" in rows["silver.alias"]["broken"]
    assert f"(to {outside})" in rows["silver.escape"]["broken"]
    assert "silver.junk" in rows["silver.junk"]["broken"] and rows["silver.junk"]["version"] is None
    assert cli.main(["--project", str(project.root), "tables"]) == 0
    out = capsys.readouterr()
    assert "silver.prices                version 0      rows 10" in out.out
    assert "silver.escape                BROKEN: " in out.out and "3 broken table folder(s)" in out.err
    assert os.path.islink(sdk.lakehouse.root / "silver" / "escape")  # reported, never removed by qsdk


def test_a_direct_delta_commit_before_a_failing_cell_is_still_reported(project):
    attack = ('import deltalake\ndeltalake.write_deltalake(f"{lake}/silver/prices", '
              'pd.DataFrame({"k": [1], "v": [9.0]}), mode="append")\nraise ValueError("boom")')
    sdk = (project.table("silver.prices", COLS).table("silver.out", COLS)
           .stage("reader", 'attack: str = ""', NOTEBOOK, inputs=["silver.prices"], outputs=["silver.out"])
           .flow("f", ["reader"]).sdk())
    sdk.lakehouse.write("silver.prices", pd.DataFrame({"k": range(10), "v": 1.0}), mode="append")
    result = sdk.run_pipeline("f", params={"attack": attack}, executor="local", track=False, cache=False,
                              raise_on_failure=False)
    err = result.failures[0].error
    assert err.reason == "direct_write" and err.commits == {"silver.prices": [1]}  # not hidden behind the error
    assert "committed version 1 of silver.prices itself" in str(err)
    assert "undo with `qsdk restore silver.prices --version 0`" in str(err)
    assert "(the notebook then failed too, reason error: ValueError: boom)" in str(err)
    assert state(sdk.lakehouse, "silver.prices") == TableState(1, 11)
