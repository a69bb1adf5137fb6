"""The worked migration: the three scripts of ``examples/legacy/`` become the ``legacy`` flow.

The original scripts run first on the shipped CSV (their outputs are the legacy files the
contracts are read from, and the numbers to match); then each is imported with
``qsdk import-script``; the first two need no hand edit at all, the factor script needs its
helper import replaced (the importer reports that blocker, and ``qsdk check`` refuses the notebook
until it is fixed); the flow runs on real kernels into Delta tables, and every table equals the
file the original script wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from qsdk.cli import main
from tests.conftest import REPO

SCRIPTS = [("download_prices", "clean_legacy_prices", []), ("factors", "legacy_factors", []),
           ("report", "legacy_report", ["--layer", "gold"])]
OUTPUTS = {"silver.prices_clean": "prices_clean.parquet", "silver.factors": "factors.parquet",
           "gold.report": "report.csv"}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy") / "proj"
    for folder in ("pipelines", "notebooks", "examples"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("*.parquet", "report.csv"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for script, _, _ in SCRIPTS:  # the legacy way: run each script from the repository root
        subprocess.run([sys.executable, f"examples/legacy/scripts/{script}.py"], cwd=root, check=True,
                       capture_output=True)
    out = root / "examples" / "legacy" / "out"
    originals = {t: pd.read_csv(out / f) if f.endswith(".csv") else pd.read_parquet(out / f)
                 for t, f in OUTPUTS.items()}
    reports = {}
    for script, stage, extra in SCRIPTS:
        argv = ["--project", str(root), "import-script", f"examples/legacy/scripts/{script}.py", "--stage", stage,
                "--flow", "legacy", "--json", *extra]
        reports[stage] = _json_of(main, argv)
    checked_before_fix = _json_of(main, ["--project", str(root), "check", "--json"], code=1)
    _replace_helper_import(root / reports["legacy_factors"]["notebook"], root)
    from qsdk.sdk import QuantSDK

    sdk = QuantSDK(root, lakehouse_root=root / "lakehouse", runs_dir=root / "runs")
    result = sdk.run_pipeline("legacy", executor="local", track=False, raise_on_failure=False)
    return {"root": root, "reports": reports, "originals": originals, "result": result, "sdk": sdk,
            "checked_before_fix": checked_before_fix}


def _json_of(cli, argv, code=0):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(argv) == code
    return json.loads(buf.getvalue())


def _replace_helper_import(notebook: Path, root: Path) -> None:
    """The one hand edit: the helpers the factor script imported from another script are pasted
    into the notebook (a team would move them into a package module)."""
    nb = nbformat.read(notebook, as_version=4)
    helper = (root / "examples" / "legacy" / "scripts" / "common.py").read_text()
    cells = [c for c in nb.cells if "scripts.common" in c.source]
    assert len(cells) == 1
    cells[0].source = helper
    nbformat.write(nb, notebook)


def test_the_migrated_flow_gives_exactly_what_the_original_scripts_gave(migrated):
    assert migrated["result"].status == "succeeded", migrated["result"].failures
    loader = migrated["sdk"].loader()
    for table, original in migrated["originals"].items():
        migrated_rows = loader.read(table)
        if "date" in migrated_rows:
            migrated_rows["date"] = pd.to_datetime(migrated_rows["date"])
        keys = [k for k in ("symbol", "date") if k in original]
        pd.testing.assert_frame_equal(
            migrated_rows.sort_values(keys).reset_index(drop=True)[list(original.columns)],
            original.sort_values(keys).reset_index(drop=True), check_exact=True, check_dtype=False)


def test_what_the_importer_found_in_each_script(migrated):
    reports = migrated["reports"]
    first = reports["clean_legacy_prices"]
    assert first["needs_human"] == []
    assert [(i["status"], i["table"]) for i in first["io"]] == [("source", None), ("table", "silver.prices_clean")]
    contract = first["tables"]["silver.prices_clean"]
    assert contract["primary_key"] == ["symbol", "date"] and contract["columns"]["date"] == "date"
    assert "primary_key" not in reports["legacy_report"]["tables"]["gold.report"]  # no date: no key guessed
    assert [p["name"] for p in first["parameters"]] == ["input", "start", "end", "symbols", "min_volume", "gaps",
                                                        "verbose"]
    factors = reports["legacy_factors"]
    assert [p["name"] for p in factors["parameters"]] == ["momentum_window", "volatility_window", "winsor_limit"]
    assert len(factors["blockers"]) == 2 and "scripts.common" in factors["blockers"][1]
    assert [i["table"] for i in reports["legacy_report"]["io"]] == ["silver.prices_clean", "silver.factors",
                                                                   "gold.report"]
    assert reports["legacy_report"]["dvc"].startswith("dvc.yaml synced")


def test_check_refused_the_unfixed_notebook_and_the_registry_stays_in_step(migrated):
    rules = sorted((p["name"], p["rule"]) for p in migrated["checked_before_fix"])
    assert rules == [("legacy_factors", "script_import"), ("legacy_factors", "sys_path")]
    root = migrated["root"]
    assert main(["--project", str(root), "check"]) == 0
    assert main(["--project", str(root), "dvc", "sync", "--check"]) == 0
    assert "clean_legacy_prices" in (root / "dvc.yaml").read_text()


def test_a_changed_vendor_file_makes_the_migrated_stages_stale(migrated):
    """Runs last: it edits the shipped CSV of the project copy (the declared source)."""
    sdk = migrated["sdk"]
    assert {t.stage: t.state for t in sdk.status("legacy")} == dict.fromkeys(
        ["clean_legacy_prices", "legacy_factors", "legacy_report"], "cached")
    csv = migrated["root"] / "examples" / "legacy" / "data" / "prices.csv"
    csv.write_text(csv.read_text() + "2012-12-31,AAPL,1,1,1,1,1000,1\n")
    status = {t.stage: t for t in sdk.status("legacy")}
    assert status["clean_legacy_prices"].state == "stale"
    assert "source files examples/legacy/data/prices.csv changed" in status["clean_legacy_prices"].reasons
