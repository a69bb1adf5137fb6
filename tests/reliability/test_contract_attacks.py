"""Attacks on the table contract from inside a notebook: path tricks in table names, files
written into the lakehouse folder behind the SDK's back, and writes with the wrong columns.

Each is refused with a clear error or reported as a failed stage; nothing lands outside the
lakehouse, and the attacked table keeps its version and rows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from qsdk.errors import ContractViolation, TableNameError
from qsdk.lakehouse.contract import TableSpec, validate_table_name
from qsdk.lakehouse.tables import Lakehouse
from tests.reliability.conftest import NOTEBOOK_RENDEZVOUS, TableState, state

COLS = {"k": "int64", "v": "float64"}
ATTEMPTS = {"i": "int64", "op": "string", "name": "string", "error": "string", "message": "string"}


def bad_names(tmp_path: Path) -> list[object]:
    return [
        "../escape.t", "silver/../../escape", "silver.../x", "silver..prices", "silver./tmp/x",
        "silver.prices/../../../x", f"{tmp_path}/evil.t", f"/{tmp_path}.t", "/etc/passwd", "silver",
        "a.b.c", "", ".", "Silver.Prices", "silver.pri ces", " silver.prices", "silver.prices ",
        "silver.prices\n", "silver.pr\nices", "silver.prices\x00", "silver.pri\x00ces.x",
        "silver.prïces", "silver.prices\u200b", "silver.ｐrices", "silver.prices;rm -rf",
        "silver.prices%2f..", "silver.*", "silver.t" + "x" * 100, None, 3, ("silver", "prices"),
    ]


def _tree(folder: Path, *, skip: tuple[Path, ...]) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        out |= {os.path.relpath(Path(dirpath, n), folder) for n in [*filenames, *dirnames]}
    return out


@pytest.mark.parametrize("name", bad_names(Path("/tmp/qsdk-attack")), ids=repr)
def test_bad_table_names_are_refused(name):
    with pytest.raises(TableNameError, match=r"invalid table name .*use 'layer.name'"):
        validate_table_name(name)


def test_bad_names_and_columns_from_a_notebook_are_refused_and_create_nothing(project, tmp_path):
    names = bad_names(tmp_path)
    code = f"""import pandas as pd, qsdk
names = {names!r}
good = pd.DataFrame({{"k": [1], "v": [1.0]}})
tries = [("write", n, lambda n=n: qsdk.write_table(n, good)) for n in names]
tries += [("read", n, lambda n=n: qsdk.DataLoader().read(n)) for n in names]
tries += [
    ("extra", "silver.out", lambda: qsdk.write_table("silver.out", good.assign(x=1))),
    ("missing", "silver.out", lambda: qsdk.write_table("silver.out", good[["k"]])),
    ("retyped", "silver.out", lambda: qsdk.write_table("silver.out", good.assign(v="1.0"))),
    ("truncating", "silver.out", lambda: qsdk.write_table("silver.out", good.assign(k=1.5))),
]
rows = []
for i, (op, name, attempt) in enumerate(tries):
    try:
        attempt()
        rows.append((i, op, repr(name), "", "accepted"))
    except Exception as exc:
        rows.append((i, op, repr(name), type(exc).__name__, str(exc)))
qsdk.write_table("bronze.attempts", pd.DataFrame(rows, columns={list(ATTEMPTS)!r}))
qsdk.write_table("silver.out", good)"""
    sdk = (project.table("bronze.attempts", ATTEMPTS, primary_key=["i"]).table("silver.out", COLS)
           .stage("attack", "x: int = 1", code, outputs=["bronze.attempts", "silver.out"])
           .flow("f", ["attack"]).sdk())
    lake_root, runs = sdk.config.lakehouse_root, sdk.config.runs_dir
    before = _tree(tmp_path, skip=(lake_root, runs))

    sdk.run_pipeline("f", executor="local", track=False, cache=False)

    tries = sdk.lakehouse.read("bronze.attempts").to_pandas().sort_values("i")
    named = tries[tries.op.isin(["write", "read"])]
    assert len(named) == 2 * len(names)
    for row in named.itertuples():
        assert row.error == "TableNameError", row
        assert row.message.startswith(f"invalid table name {row.name}: use 'layer.name'"), row
    cols = dict(zip(tries.op, tries.message, strict=False))
    assert "columns not in the contract ['x']" in cols["extra"]
    assert "missing columns ['v']" in cols["missing"]
    assert re.search(r"column 'v' has type (large_)?string, the contract says float64", cols["retyped"])
    assert "column 'k' has type double, the contract says int64" in cols["truncating"]
    assert set(tries.error[tries.op.isin(["extra", "missing", "retyped", "truncating"])]) == {"ContractViolation"}

    assert _tree(tmp_path, skip=(lake_root, runs)) == before  # nothing created outside the lakehouse
    created = sorted(p.relative_to(lake_root).as_posix() for p in lake_root.glob("*/*"))
    assert created == ["bronze/attempts", "silver/out"]  # no bad name got as far
    assert state(sdk.lakehouse, "silver.out") == TableState(0, 1)


def test_writes_with_extra_missing_or_retyped_columns_leave_the_table_untouched(tmp_path):
    spec = TableSpec("silver.t", COLS, primary_key=("k",))
    lake = Lakehouse(tmp_path / "lake", {"silver.t": spec})
    lake.write("silver.t", pd.DataFrame({"k": [1, 2], "v": [0.5, 1.5]}), mode="append")
    bad = {  # regex of the message -> the frame
        r"columns not in the contract \['x'\]": pd.DataFrame({"k": [3], "v": [1.0], "x": ["?"]}),
        r"missing columns \['v'\]": pd.DataFrame({"k": [3]}),
        r"column 'v' has type (large_)?string, the contract says float64": pd.DataFrame(
            {"k": [3], "v": pd.array(["1.0"], dtype=object)}),
        r"column 'k' has type double, the contract says int64": pd.DataFrame({"k": [3.5], "v": [1.0]}),
        r"duplicate columns \['v'\]": pa.table([[3], [1.0], [2.0]], names=["k", "v", "v"]),
    }
    for message, frame in bad.items():
        for mode in ("append", "overwrite", "merge"):
            with pytest.raises(ContractViolation, match=message):
                lake.write("silver.t", frame, mode=mode)
    # a contract that no longer matches the table on disk: refused, never a silent cast
    retyped = Lakehouse(tmp_path / "lake", {"silver.t": TableSpec("silver.t", {"k": "int64", "v": "string"})})
    with pytest.raises(ContractViolation, match=r"on disk has schema .* migrate the table or fix the contract"):
        retyped.write("silver.t", pd.DataFrame({"k": [3], "v": ["x"]}), mode="append")
    assert state(lake, "silver.t") == TableState(0, 2)


# ------------------------------------------------------------------ writes behind the SDK's back
SEED = """import pandas as pd, qsdk
qsdk.write_table("silver.prices", pd.DataFrame({"k": range(10), "v": 1.0}), mode="overwrite")"""
DIRECT = {
    "to_parquet into the table's folder": (
        'pd.DataFrame({"k": [99], "v": [9.0]}).to_parquet(f"{lake}/silver/prices/direct.parquet")',
        ["silver/prices/direct.parquet"]),
    "a file outside any table": (
        'import pathlib\npathlib.Path(f"{lake}/silver/notes").mkdir(parents=True, exist_ok=True)\n'
        'pd.DataFrame({"k": [99]}).to_csv(f"{lake}/silver/notes/n.csv")',
        ["silver/notes/n.csv"]),
    "deltalake, bypassing the contract": (
        'import deltalake\ndeltalake.write_deltalake(f"{lake}/silver/prices", pd.DataFrame({"k": [99], "v": [9.0]}), mode="append")',
        ["silver/prices/_delta_log/00000000000000000001.json"]),
    "an existing data file rewritten": (
        'import glob\nf = sorted(glob.glob(f"{lake}/silver/prices/part-*.parquet"))[0]\n'
        'pd.DataFrame({"k": [99], "v": [9.0]}).to_parquet(f)',
        None),  # the name is random: checked by prefix below
}


def _direct_project(project, attack: str):
    code = SEED.replace('qsdk.write_table', 'if not attack:\n    qsdk.write_table') + """
if attack:
    qsdk.write_table("silver.prices", pd.DataFrame({"k": range(20), "v": 2.0}), mode="overwrite")
    lake = qsdk.DataLoader().lakehouse.root
""" + "\n".join("    " + line for line in attack.splitlines())
    return (project.table("silver.prices", COLS, primary_key=["k"])
            .stage("prices", 'attack: str = ""', code, outputs=["silver.prices"])
            .flow("f", ["prices"]).sdk())


def _seed_then_attack(sdk, code: str):
    """Run the stage once plainly (version 0, 10 rows), then with ``code``: its direct-write error."""
    sdk.run_pipeline("f", executor="local", track=False, cache=False)
    assert state(sdk.lakehouse, "silver.prices") == TableState(0, 10)
    result = sdk.run_pipeline("f", params={"attack": code}, executor="local", track=False, cache=False,
                              raise_on_failure=False)
    (failed,) = result.failures
    err = failed.error
    assert err.reason == "direct_write" and err.ename == "DirectLakehouseWrite", err
    return err


@pytest.mark.parametrize("case", list(DIRECT))
def test_files_written_into_the_lakehouse_directly_fail_the_stage(project, case, capsys):
    code, paths = DIRECT[case]
    sdk = _direct_project(project, code)
    err = _seed_then_attack(sdk, code)
    assert "directly instead of through qsdk.write_table" in str(err)
    stray = err.evalue.splitlines()
    if paths is None:
        assert len(stray) == 1 and stray[0].startswith("silver/prices/part-")
    else:
        assert stray == paths
    bypassed = 1 if "deltalake" in case else 0  # a direct Delta commit is reported, not undone
    assert state(sdk.lakehouse, "silver.prices").version == bypassed
    if paths is None:  # a data file rewritten in place damaged version 0: reported, not repaired
        assert "changed or deleted silver/prices/part-" in str(err) and "qsdk cannot repair them" in str(err)
        return
    if bypassed:  # said as it is, with the command that undoes it
        assert "committed version 1 of silver.prices itself" in str(err) and "qsdk did not undo it" in str(err)
        assert "undo with `qsdk restore silver.prices --version 0`" in str(err)
        assert "remove those files" not in str(err) and err.commits == {"silver.prices": [1]}
        _undo_with_qsdk_restore(sdk, capsys)
    else:
        assert f"added {paths[0]} (nothing committed them; remove those files)" in str(err)
    assert set(sdk.lakehouse.read("silver.prices", version=0).column("v").to_pylist()) == {1.0}
    assert 2.0 not in set(sdk.lakehouse.read("silver.prices").column("v").to_pylist())  # the stage's write: dropped


DIRECT_S3 = {
    "deltalake, bypassing the contract": (
        'import deltalake\nfrom qsdk import storage\n'
        'deltalake.write_deltalake(f"{lake}/silver/prices", pd.DataFrame({"k": [99], "v": [9.0]}), mode="append", '
        'storage_options=storage.storage_options(lake))',
        ["silver/prices/_delta_log/00000000000000000001.json"]),
    "an object outside any table": (
        'from qsdk import storage\nstorage.write_text(lake / "silver/notes/n.csv", "k\\n99\\n")',
        ["silver/notes/n.csv"]),
}


@pytest.mark.parametrize("case", list(DIRECT_S3))
def test_objects_written_into_an_object_store_lakehouse_directly_fail_the_stage(project, s3_root, case):
    """The same check on an ``s3://`` lakehouse: one listing of the store before and after the notebook."""
    from qsdk.sdk import QuantSDK

    code, paths = DIRECT_S3[case]
    _direct_project(project, code)
    sdk = QuantSDK(project.root, lakehouse_root=s3_root, runs_dir=project.root / "runs")
    err = _seed_then_attack(sdk, code)
    assert err.evalue.splitlines() == paths
    assert f"changed the lakehouse folder {s3_root} directly" in str(err)
    bypassed = 1 if "deltalake" in case else 0  # a direct Delta commit is reported, not undone
    assert state(sdk.lakehouse, "silver.prices").version == bypassed
    if bypassed:
        assert "undo with `qsdk restore silver.prices --version 0`" in str(err) and err.commits == {"silver.prices": [1]}
    else:
        assert f"added {paths[0]} (nothing committed them; remove those files)" in str(err)
    assert 2.0 not in set(sdk.lakehouse.read("silver.prices").column("v").to_pylist())  # the stage's write: dropped


def _undo_with_qsdk_restore(sdk, capsys) -> None:
    from qsdk import cli
    from qsdk.lakehouse.sandbox import user_name

    root = str(sdk.config.project_root)
    assert cli.main(["--project", root, "restore", "silver.prices", "--version", "0",
                     "--reason", "undo a direct commit"]) == 0
    assert "restored silver.prices to version 0 (as new version 2" in capsys.readouterr().out
    assert state(sdk.lakehouse, "silver.prices") == TableState(2, 10)
    assert set(sdk.lakehouse.read("silver.prices").column("v").to_pylist()) == {1.0}
    last = sdk.lakehouse.history("silver.prices", limit=1)[0]
    assert last["operation"] == "RESTORE" and last["qsdk.restored_to"] == "0"
    assert last["qsdk.restored_by"] == user_name() and last["qsdk.restore_reason"] == "undo a direct commit"
    assert cli.main(["--project", root, "restore", "silver.prices", "--version", "7"]) == 2
    assert "has versions 0 to 2; restore to one of them (got 7)" in capsys.readouterr().err


def test_commits_of_other_tasks_during_a_stage_are_not_mistaken_for_direct_writes(project, rendezvous):
    """While the notebook runs, another writer commits to its table (as parallel partitions
    do), and leaves a data file no commit references (a commit that lost a conflict)."""
    code = SEED + "\nport = int(port)\nif port:\n" + "\n".join(
        "    " + line for line in NOTEBOOK_RENDEZVOUS.splitlines())
    sdk = (project.table("silver.prices", COLS, primary_key=["k"]).table("silver.other", COLS)
           .stage("prices", 'port: str = "0"', code, outputs=["silver.prices"])
           .flow("f", ["prices"]).sdk())
    sdk.run_pipeline("f", executor="local", track=False, cache=False)
    lake = sdk.lakehouse

    import threading

    # object_store stages a local write as `name#N` and renames it: one such file appears and
    # another disappears while the stage runs (a parallel partition's commit in flight)
    staging_name = "part-00001-5c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f-c000.snappy.parquet"
    leaving = lake.path("silver.prices") / f"{staging_name}#2"
    leaving.write_bytes(b"in flight")
    results = []
    runner = threading.Thread(target=lambda: results.append(sdk.run_pipeline(
        "f", params={"port": str(rendezvous.port)}, executor="local", track=False, cache=False,
        raise_on_failure=False)))
    runner.start()
    try:
        conn, _ = rendezvous.wait()
        lake.write("silver.prices", pd.DataFrame({"k": [100], "v": [3.0]}), mode="append")
        lake.write("silver.other", pd.DataFrame({"k": [1], "v": [3.0]}), mode="append")
        orphan = lake.path("silver.prices") / "part-00000-0b0e4e2e-1c9a-4d55-a1b6-6f0f2f4b8d21-c000.snappy.parquet"
        pd.DataFrame({"k": [7], "v": [7.0]}).to_parquet(orphan)
        (lake.path("silver.prices") / f"{staging_name}#1").write_bytes(b"in flight")
        leaving.unlink()
        rendezvous.release(conn)
    finally:
        runner.join(timeout=120)
    assert results[0].status == "succeeded", results[0].failures
    assert state(lake, "silver.prices") == TableState(2, 10)  # seed, the other writer's append, this overwrite
