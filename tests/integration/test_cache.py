"""Incremental runs: the content-hash cache per stage partition, on real kernels and Delta tables."""

from __future__ import annotations

import json

import nbformat
import pytest

from qsdk.execution.executors.local import LocalExecutor

COLS = {"date": "date", "v": "float64"}
SRC = '''import pandas as pd, qsdk, os
days = pd.date_range(start, end, freq="D")
qsdk.write_table("bronze.src", pd.DataFrame({"date": days, "v": [float(d.day) * scale for d in days]}),
                 mode="overwrite", predicate=qsdk.between("date", start, end))'''
DOUBLE = '''import pandas as pd, qsdk
df = qsdk.DataLoader().read("bronze.src", filters=[("date", ">=", start), ("date", "<=", end)])
df["v"] = df["v"] * 2
qsdk.write_table("silver.dbl", df, mode="overwrite", predicate=qsdk.between("date", start, end))'''
TOTAL = '''import pandas as pd, qsdk
df = qsdk.DataLoader().read("silver.dbl")
qsdk.write_table("gold.total", pd.DataFrame({"date": [df["date"].max()], "v": [df["v"].sum()]}), mode="overwrite")'''
RANGE = 'start: "date" = "2020-01-01"\nend: "date" = "2020-02-29"'


class Counting(LocalExecutor):
    """The real local executor, counting the tasks that reached it (each starts a kernel)."""

    def __init__(self):
        self.submitted: list[str] = []
        self.inited = 0

    def init(self):
        self.inited += 1

    def submit(self, task, *, upcoming=None):
        self.submitted.append(task.key)
        return super().submit(task, upcoming=upcoming)


@pytest.fixture
def sdk(project):
    (project.table("bronze.src", COLS, primary_key=["date"]).table("silver.dbl", COLS, primary_key=["date"])
     .table("gold.total", COLS)
     .stage("src", RANGE + "\nscale: float = 1.0\nflag: str = ''", SRC, "if flag and os.path.exists(flag) and start > '2020-01-31':\n    raise RuntimeError('injected')",
            outputs=["bronze.src"], partition={"by": "month"})
     .stage("dbl", RANGE, DOUBLE, inputs=["bronze.src"], outputs=["silver.dbl"], partition={"by": "month"})
     .stage("total", "x: int = 0", TOTAL, inputs=["silver.dbl"], outputs=["gold.total"])
     .flow("f", ["src", "dbl", "total"]))
    return project.sdk()


def run(sdk, track=False, **kw):
    ex = Counting()
    result = sdk.run_pipeline("f", executor=ex, track=track, raise_on_failure=False, **kw)
    return result, ex


def statuses(result):
    return {r.key: r.status for r in result.results}


def edit(notebook, index, source):
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[index].source = source
    nbformat.write(nb, notebook)


def test_noop_rerun_starts_nothing_and_reports_cached(sdk):
    first, ex1 = run(sdk)
    assert first.status == "succeeded" and len(ex1.submitted) == 5
    second, ex2 = run(sdk)
    assert second.status == "succeeded"
    assert ex2.submitted == [] and ex2.inited == 0  # no executor start, so no kernel, no Ray
    assert set(statuses(second).values()) == {"cached"}
    assert second.to_dict()["stages"]["total"]["written"] == first.to_dict()["stages"]["total"]["written"]


def test_noop_checks_read_each_table_version_once_per_run(sdk, monkeypatch):
    """A no-op re-run's cost is the Delta metadata it opens: while no task has run, one version
    read per table for the whole run, however many partitions (here 2 per partitioned stage) and
    stages name it. (Once a task runs, later stages read afresh:
    test_code_edit_reruns_stage_and_changed_downstream_only.)"""
    from qsdk.lakehouse.tables import Lakehouse

    run(sdk)
    calls: list[str] = []
    real = Lakehouse.version

    def counting(self, name):
        calls.append(name)
        return real(self, name)

    monkeypatch.setattr(Lakehouse, "version", counting)
    second, _ = run(sdk)
    assert set(statuses(second).values()) == {"cached"}
    assert sorted(calls) == ["bronze.src", "gold.total", "silver.dbl"]


def test_code_edit_reruns_stage_and_changed_downstream_only(sdk, project):
    run(sdk)
    nb = project.root / "notebooks" / "dbl.ipynb"
    edit(nb, 1, DOUBLE.replace("* 2", "* 3"))
    result, ex = run(sdk)
    assert sorted(ex.submitted) == ["dbl[2020-01-01_2020-01-31]", "dbl[2020-02-01_2020-02-29]", "total"]
    assert statuses(result)["src[2020-01-01_2020-01-31]"] == "cached"
    total = sdk.lakehouse.read("gold.total").column("v").to_pylist()
    assert total == [3 * (sum(range(1, 32)) + sum(range(1, 30)))]


def test_markdown_and_saved_outputs_do_not_invalidate(sdk, project):
    run(sdk)
    nb_path = project.root / "notebooks" / "dbl.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("# A new explanation"))
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="stale output\n")]
    nb.cells[2].execution_count = 42
    nb.cells[2].metadata["collapsed"] = True
    nbformat.write(nb, nb_path)
    result, ex = run(sdk)
    assert ex.submitted == [] and set(statuses(result).values()) == {"cached"}


def test_parameter_change_reruns_what_depends_on_it(sdk):
    run(sdk)
    result, ex = run(sdk, params={"src.scale": "2"})
    # src re-runs with the new value; its data changed, so everything downstream re-runs too
    assert len(ex.submitted) == 5 and result.status == "succeeded"
    _, ex = run(sdk, params={"src.scale": "2"})
    assert ex.submitted == []


def test_extended_range_runs_only_new_partitions(sdk):
    run(sdk)
    result, ex = run(sdk, params={"end": "2020-03-31"})
    assert sorted(ex.submitted) == ["dbl[2020-03-01_2020-03-31]", "src[2020-03-01_2020-03-31]", "total"]
    assert statuses(result)["dbl[2020-01-01_2020-01-31]"] == "cached"  # bronze moved on, its slice did not


def test_resume_after_failure_continues_at_the_failed_partition(sdk, tmp_path):
    flag = tmp_path / "fail-once"
    flag.write_text("x")
    first, ex1 = run(sdk, params={"flag": str(flag)})
    assert first.status == "failed"
    assert statuses(first)["src[2020-02-01_2020-02-29]"] == "failed"
    assert statuses(first)["src[2020-01-01_2020-01-31]"] == "succeeded"
    assert statuses(first)["total"] == "skipped"
    flag.unlink()
    second, ex2 = run(sdk, params={"flag": str(flag)})
    assert second.status == "succeeded"
    assert "src[2020-01-01_2020-01-31]" not in ex2.submitted
    assert "src[2020-02-01_2020-02-29]" in ex2.submitted
    assert statuses(second)["src[2020-01-01_2020-01-31]"] == "cached"


def test_force_all_or_one_stage(sdk):
    run(sdk)
    _, ex = run(sdk, force=True)
    assert len(ex.submitted) == 5
    result, ex = run(sdk, force=["dbl"])
    assert sorted(ex.submitted) == ["dbl[2020-01-01_2020-01-31]", "dbl[2020-02-01_2020-02-29]"]
    assert statuses(result)["total"] == "cached"  # dbl wrote the same data again


def test_status_reports_cached_stale_and_never(sdk, project):
    assert {s.state for s in sdk.status("f")} == {"never"}
    run(sdk)
    assert {s.state for s in sdk.status("f")} == {"cached"}
    edit(project.root / "notebooks" / "src.ipynb", 1, SRC + "\n# touched")
    rows = {(s.stage, s.partition): s for s in sdk.status("f", params={"end": "2020-03-31"})}
    assert rows[("src", "2020-01-01_2020-01-31")].state == "stale"
    assert "notebook notebooks/src.ipynb changed" in rows[("src", "2020-01-01_2020-01-31")].reasons
    assert rows[("src", "2020-03-01_2020-03-31")].state == "never"
    assert rows[("dbl", "2020-01-01_2020-01-31")].reasons == ("upstream src will run and rewrites rows it read",)


def test_status_predicts_exactly_what_the_next_run_executes(sdk, project):
    """For changes that change what a task computes, the tasks `status` calls stale or never run
    are exactly the tasks the next run executes."""

    def predicted(**kw):
        return {f"{s.stage}[{s.partition}]" if s.partition else s.stage
                for s in sdk.status("f", params=kw.get("params")) if s.state != "cached"}

    def executed(**kw):
        result, ex = run(sdk, **kw)
        assert result.status == "succeeded", [str(r.error) for r in result.failures]
        return set(ex.submitted)

    jan, feb, mar = "2020-01-01_2020-01-31", "2020-02-01_2020-02-29", "2020-03-01_2020-03-31"
    run(sdk)
    # 1. the range grows by a month: the new partitions, and the summary that reads every date
    wider = {"end": "2020-03-31"}
    assert predicted(params=wider) == executed(params=wider) == {f"src[{mar}]", f"dbl[{mar}]", "total"}
    # 2. a leaf stage's code
    edit(project.root / "notebooks" / "total.ipynb", 1, TOTAL.replace('df["v"].sum()', 'df["v"].sum() + 1'))
    assert predicted(params=wider) == executed(params=wider) == {"total"}
    # 3. a middle stage's code that changes its output: it and what reads it
    edit(project.root / "notebooks" / "dbl.ipynb", 1, DOUBLE.replace("* 2", "* 3"))
    every = {f"dbl[{p}]" for p in (jan, feb, mar)} | {"total"}
    assert predicted(params=wider) == executed(params=wider) == every
    # 4. one stage's parameter (-p src.scale=2): every task of the chain
    scaled = {**wider, "src.scale": 2.0}
    assert predicted(params=scaled) == executed(params=scaled) == every | {f"src[{p}]" for p in (jan, feb, mar)}
    # 5. the contract of a table a stage writes and another reads
    project.doc["tables"]["silver.dbl"]["description"] = "doubled values"
    sdk = project.sdk()
    assert predicted(params=scaled) == executed(params=scaled) == every


def test_cli_force_and_status_json(sdk, project):
    import os
    import subprocess
    import sys

    run(sdk)
    env = {**os.environ, "QSDK_LAKEHOUSE": str(sdk.config.lakehouse_root), "QSDK_RUNS": str(sdk.config.runs_dir)}
    base = [sys.executable, "-m", "qsdk", "--project", str(project.root)]
    out = subprocess.run([*base, "status", "f", "--json"], capture_output=True, text=True, env=env, check=True)
    assert {r["state"] for r in json.loads(out.stdout)} == {"cached"}
    out = subprocess.run([*base, "run", "f", "--executor", "local", "--no-track", "--json", "--force", "total"],
                         capture_output=True, text=True, env=env, check=True)
    stages = json.loads(out.stdout)["stages"]
    assert stages["total"]["status"] == "succeeded" and stages["src"]["status"] == "cached"


def test_tracked_partial_rerun_records_cached_tasks_with_their_origin(sdk, project):
    from mlflow import MlflowClient

    first, _ = run(sdk, track=True)
    edit(project.root / "notebooks" / "total.ipynb", 1, TOTAL + "\n# touched")
    second, ex = run(sdk, track=True)
    assert ex.submitted == ["total"]
    client = MlflowClient(sdk.config.tracking_uri)
    exp = client.get_experiment_by_name("qsdk/f")
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{second.extra['mlflow_run_id']}'")
    by_stage = {r.data.tags.get("qsdk.stage"): r for r in children}
    assert set(by_stage) == {"src", "dbl", "total"}
    partitions = client.search_runs([exp.experiment_id],
                                    filter_string=f"tags.`mlflow.parentRunId` = '{by_stage['src'].info.run_id}'")
    assert {r.data.tags["qsdk.cached_from"] for r in partitions} == {first.run_id}
    assert "qsdk.cached_from" not in by_stage["total"].data.tags


def test_a_record_whose_rows_were_restored_away_is_not_cached(sdk, project):
    from qsdk.lakehouse.tables import Lakehouse

    first, _ = run(sdk)
    assert first.status == "succeeded"
    lake = Lakehouse(project.root / "lakehouse", sdk.registry.tables)
    jan, feb = "2020-01-01_2020-01-31", "2020-02-01_2020-02-29"
    written = {r.partition: r.written["bronze.src"] for r in first.results if r.stage == "src"}
    assert written[feb] > written[jan]  # February committed after January
    lake.restore("bronze.src", written[jan])  # rewinds February's commit, not January's
    rows = {(s.stage, s.partition): s for s in sdk.status("f")}
    assert rows[("src", jan)].state == "cached"
    assert rows[("src", feb)].state == "stale"
    assert "output bronze.src no longer holds the rows this task wrote" in rows[("src", feb)].reasons[0]
    second, ex = run(sdk)
    assert ex.submitted == [f"src[{feb}]"]  # its output is identical again, so nothing downstream runs
    assert lake.read("bronze.src").num_rows == 60
