"""The cache key covers the code a notebook imports, package versions, contracts and declared
sources: a change to any of them makes exactly the tasks that depend on it stale, with the
reason in words, and the next run re-runs exactly those (real kernels, real Delta tables)."""

from __future__ import annotations

import json

import pytest

from qsdk.execution.executors.local import LocalExecutor

COLS = {"date": "date", "v": "float64"}
WRITE = '''qsdk.write_table("{table}", pd.DataFrame({{"date": pd.date_range(start, end, freq="D"), "v": {value}}}),
                 mode="overwrite", predicate=qsdk.between("date", start, end))'''
RANGE = 'start: "date" = "2020-01-01"\nend: "date" = "2020-01-10"'


class Counting(LocalExecutor):
    """The real local executor, recording which tasks reached it."""

    def __init__(self):
        super().__init__(prewarm=1)
        self.submitted: list[str] = []

    def submit(self, task, *, upcoming=None):
        self.submitted.append(task.key)
        return super().submit(task, upcoming=upcoming)


@pytest.fixture
def proj(project, tmp_path, monkeypatch):
    nb = project.root / "notebooks"
    nb.mkdir(parents=True)
    # featlib -> baselib at module level, -> lazylib inside a function; otherlib for stage b only
    (nb / "featlib.py").write_text("from baselib import SCALE\n\ndef value():\n    import lazylib\n"
                                   "    return SCALE * lazylib.K\n")
    (nb / "baselib.py").write_text("SCALE = 2.0\n")
    (nb / "lazylib.py").write_text("K = 1.0\n")
    (nb / "otherlib.py").write_text("import qsdk_fakedep\n\nOFFSET = 1.0\n")
    site = tmp_path / "site"
    (site / "qsdk_fakedep").mkdir(parents=True)
    (site / "qsdk_fakedep" / "__init__.py").write_text("")
    _dist_info(site, "1.0")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))  # the kernels find it too
    (project.root / "data").mkdir()
    (project.root / "data" / "ref.csv").write_text("a,b\n1,2\n")
    (project.table("bronze.a", COLS, primary_key=["date"]).table("bronze.b", COLS, primary_key=["date"])
     .table("gold.c", COLS, primary_key=["date"])
     .stage("a", RANGE, "import pandas as pd, qsdk\nimport featlib",
            WRITE.format(table="bronze.a", value="featlib.value()"), outputs=["bronze.a"])
     .stage("b", RANGE, "import pandas as pd, qsdk\nimport otherlib",
            WRITE.format(table="bronze.b", value="otherlib.OFFSET"), outputs=["bronze.b"],
            sources=[{"files": "data/*.csv"}])
     .stage("c", RANGE, "import pandas as pd, qsdk\ndf = qsdk.DataLoader().read('bronze.a')",
            "qsdk.write_table('gold.c', df.assign(v=df.v + 1), mode='overwrite')",
            inputs=["bronze.a"], outputs=["gold.c"])
     .flow("f", ["a", "b", "c"]))
    project.site = site
    return project


def _dist_info(site, version):
    for old in site.glob("qsdk_fakedep-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"qsdk_fakedep-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: qsdk-fakedep\nVersion: {version}\n")


def run(sdk):
    ex = Counting()
    result = sdk.run_pipeline("f", executor=ex, track=False, raise_on_failure=False)
    assert result.status == "succeeded", [str(r.error) for r in result.failures]
    return sorted(ex.submitted)


def stale(sdk):
    """``{task: reasons}`` of the tasks `qsdk status` says the next run will execute."""
    return {s.stage: s.reasons for s in sdk.status("f") if s.state != "cached"}


def record(proj, stage):
    return json.loads((proj.root / "lakehouse" / "_qsdk_cache" / stage / "_all.json").read_text())


def test_imported_code_packages_contracts_and_sources_are_in_the_cache_key(proj):
    sdk = proj.sdk()
    assert run(sdk) == ["a", "b", "c"]
    files_a = record(proj, "a")["deps"]["files"]
    files_b = record(proj, "b")["deps"]["files"]
    # the closure: direct, module-level and lazily imported project modules; qsdk's own modules
    assert {"notebooks/featlib.py", "notebooks/baselib.py", "notebooks/lazylib.py"} <= set(files_a)
    assert "notebooks/otherlib.py" not in files_a and "notebooks/featlib.py" not in files_b
    assert any(k.endswith("qsdk/lakehouse/tables.py") for k in files_a)  # through DataLoader/write_table
    assert record(proj, "b")["deps"]["packages"]["qsdk-fakedep"] == "1.0"
    assert "pandas" in record(proj, "a")["deps"]["packages"]
    assert stale(sdk) == {} and run(sdk) == []

    # a module only stage a imports (at module level, through featlib): a and what reads it
    (proj.root / "notebooks" / "baselib.py").write_text("SCALE = 3.0\n")
    predicted = stale(sdk)
    assert predicted["a"] == ("notebooks/baselib.py changed",)
    assert "b" not in predicted and "c" in predicted
    assert run(sdk) == ["a", "c"]

    # a lazily imported module whose edit does not change a's output: a re-runs, c stays cached
    (proj.root / "notebooks" / "lazylib.py").write_text("K = 1.0  # same value\n")
    assert stale(sdk)["a"] == ("notebooks/lazylib.py changed",)
    assert run(sdk) == ["a"]

    # another version of a package stage b imports
    _dist_info(proj.site, "2.0")
    assert stale(sdk) == {"b": ("qsdk-fakedep 1.0 -> 2.0",)}
    assert run(sdk) == ["b"]

    # a declared source file
    (proj.root / "data" / "ref.csv").write_text("a,b\n1,3\n")
    assert stale(sdk) == {"b": ("source files data/*.csv changed",)}
    assert run(sdk) == ["b"]

    # the contract of a table stage c reads (and a writes)
    proj.doc["tables"]["bronze.a"]["description"] = "now documented"
    proj.doc["tables"]["bronze.a"]["primary_key"] = ["date", "v"]
    sdk = proj.sdk()
    predicted = stale(sdk)
    assert predicted["a"] == ("contract of bronze.a changed",)
    assert "contract of bronze.a changed" in predicted["c"] and "b" not in predicted


def test_a_record_from_before_code_tracking_is_stale(proj):
    sdk = proj.sdk()
    run(sdk)
    path = proj.root / "lakehouse" / "_qsdk_cache" / "b" / "_all.json"
    old = json.loads(path.read_text())
    for key in ("deps", "contracts", "sources"):
        old.pop(key)
    path.write_text(json.dumps(old))
    assert stale(sdk) == {"b": ("recorded before qsdk tracked imported code, contracts and sources",)}
