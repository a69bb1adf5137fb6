"""MLflow tracking: the hook's run layout, notebook metrics/figures, 32-way parallel logging,
and the backfill flow tracked end to end (with ``qsdk lineage`` naming the run).

Real kernels, a real MLflow SQLite store and real Delta tables, all under ``tmp_path``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient

import qsdk
from qsdk import cli
from qsdk.execution.scheduling import RunResult, RunState, new_run_id, plan
from qsdk.execution.task import TaskResult
from qsdk.integrations import mlflow as tracking
from qsdk.integrations import tracker
from qsdk.integrations.mlflow import MlflowTracking
from qsdk.lakehouse import stagecontext as runtime
from qsdk.sdk import QuantSDK

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "tests" / "notebooks" / "tracking_metrics.ipynb"


@pytest.fixture
def sdk(tmp_path, store) -> QuantSDK:
    """A project with one stage that logs metrics, run alone and fanned out by month."""
    project = tmp_path / "project"
    (project / "pipelines").mkdir(parents=True)
    (project / "pipelines" / "tracking.yaml").write_text(
        "stages:\n"
        f"  metrics:\n    notebook: {NOTEBOOK}\n"
        f"  metrics_monthly:\n    notebook: {NOTEBOOK}\n    partition: {{by: month}}\n"
        "flows:\n"
        "  metrics: {stages: [metrics]}\n"
        "  fanout: {stages: [metrics_monthly]}\n"
    )
    return QuantSDK(project, lakehouse_root=tmp_path / "lake", runs_dir=tmp_path / "runs")


def _runs(client: MlflowClient, flow: str, **tags: str):
    exp = client.get_experiment_by_name(f"qsdk/{flow}")
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([exp.experiment_id], filter_string=query)


def _artifacts(client: MlflowClient, run_id: str, path: str) -> set[str]:
    return {Path(a.path).name for a in client.list_artifacts(run_id, path)}


def _artifacts_eventually(client: MlflowClient, run_id: str, path: str, expected: set[str],
                          timeout: float = 300) -> set[str]:
    """The artifacts under ``path`` once they are ``expected`` (the HTML renderings are logged by
    the tracking helper after the run returned, also after its process exited), or at timeout."""
    deadline = time.monotonic() + timeout
    while (found := _artifacts(client, run_id, path)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def test_outside_a_flow_log_calls_do_nothing_and_say_so_once(monkeypatch, capsys):
    monkeypatch.delenv(runtime.ENV_CONTEXT, raising=False)
    monkeypatch.setattr(runtime, "_current", None)
    monkeypatch.setattr(tracking, "_warned", False)
    clients_before = dict(tracking._clients)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a notice on stderr, not a Python warning
        assert qsdk.log_metric("sharpe", 1.2) is None
        assert qsdk.log_metric("sharpe", 1.3, step=1) is None
        assert qsdk.log_figure(object(), "plot") is None
    err = capsys.readouterr().err
    assert err.count("log_metric/log_figure do nothing here (not inside a tracked flow run)") == 1, err
    assert tracking._clients == clients_before  # no store was opened


def test_notebook_metrics_figure_params_and_failure_land_in_the_stage_run(sdk, store, tmp_path):
    result = sdk.run_pipeline("metrics", params={"steps": 4})
    client = MlflowClient(store)
    parent = client.get_run(result.extra["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["qsdk.run_id"] == result.run_id
    assert parent.data.tags["qsdk.flow"] == "metrics"
    assert "mlflow.source.git.commit" not in parent.data.tags  # the tmp project is no git repo
    assert parent.data.params["metrics.steps"] == "4"

    (stage,) = _runs(client, "metrics", **{"mlflow.parentRunId": parent.info.run_id})
    assert stage.info.status == "FINISHED"
    assert stage.data.tags["qsdk.kind"] == "stage"
    assert stage.data.params == {"start": "2000-01-01", "end": "2000-12-31", "steps": "4", "fail": "false"}
    assert json.loads(stage.data.tags["qsdk.params"])["fail"] is False
    history = client.get_metric_history(stage.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25)]
    assert stage.data.metrics["days"] == 366  # 2000 is a leap year
    assert _artifacts(client, stage.info.run_id, "figures") == {"curve.png"}
    assert "metrics.ipynb" in _artifacts(client, stage.info.run_id, "notebook")  # before the run returned
    assert tracker.wait_rendered(timeout=300)  # the HTML follows, rendered by the helper afterwards
    assert _artifacts(client, stage.info.run_id, "notebook") == {"metrics.ipynb", "metrics.html"}
    html = Path(client.download_artifacts(stage.info.run_id, "notebook/metrics.html", str(tmp_path)))
    assert "<html" in html.read_text() and "log_metric" in html.read_text()  # a rendering of this notebook

    # the same run again is all cache hits: it starts no kernel and opens no MLflow run
    flows_before = len(_runs(client, "metrics", **{"qsdk.kind": "flow"}))
    again = sdk.run_pipeline("metrics", params={"steps": 4})
    assert [r.status for r in again.results] == ["cached"]
    assert "mlflow_run_id" not in again.extra
    assert len(_runs(client, "metrics", **{"qsdk.kind": "flow"})) == flows_before

    # a failing notebook: its run is FAILED with the error; what it logged before stays
    failed = sdk.run_pipeline("metrics", params={"fail": True}, raise_on_failure=False)
    assert failed.status == "failed"
    parent = client.get_run(failed.extra["mlflow_run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["qsdk.status"] == "failed"
    (stage,) = _runs(client, "metrics", **{"mlflow.parentRunId": parent.info.run_id})
    assert stage.info.status == "FAILED"
    assert "planned failure after logging" in stage.data.tags["qsdk.error"]
    assert len(client.get_metric_history(stage.info.run_id, "loss")) == 3
    assert "notebook" in {a.path for a in client.list_artifacts(stage.info.run_id)}


# The 32 logging processes. A launcher interpreter imports qsdk and MLflow once, before any
# store is opened, then forks 32 workers: each opens its own SQLite connection, waits at a
# barrier until all 32 are up, and logs at the same moment. (Spawning 32 interpreters that
# each import MLflow takes minutes on a 2-core machine; the store sees the same 32 writers.)
_LAUNCHER = """
import json, multiprocessing as mp, os, sys, time
from mlflow import MlflowClient
import qsdk
from qsdk.execution import context as runtime
from qsdk.integrations import mlflow as tracking

paths, steps = json.loads(sys.argv[1]), int(sys.argv[2])
fork = mp.get_context("fork")
barrier, results = fork.Barrier(len(paths)), fork.Queue()

def work(index, path):
    os.environ["QSDK_CONTEXT"] = path
    ctx = runtime.current()
    tracking.client(ctx.tracking[tracking.URI_KEY]).get_run(ctx.tracking[tracking.RUN_ID_KEY])
    barrier.wait(timeout=300)
    started = time.perf_counter()
    for step in range(steps):
        qsdk.log_metric("pnl", index + step / 10, step=step)
    qsdk.log_metric("index", index)
    results.put((index, os.getpid(), time.perf_counter() - started))

procs = [fork.Process(target=work, args=(i, p)) for i, p in enumerate(paths)]
for proc in procs:
    proc.start()
done = [results.get(timeout=600) for _ in procs]
for proc in procs:
    proc.join()
print(json.dumps({"exitcodes": [p.exitcode for p in procs], "done": done}))
"""


def test_32_partitions_logging_at_once_lose_no_run_and_no_metric(sdk, store, tmp_path):
    db = Path(store.removeprefix("sqlite:///"))
    flow = sdk.registry.flow("fanout")
    params = flow.resolve({"start": "2000-01-01", "end": "2002-08-31"})
    run_id = new_run_id()
    run_dir = sdk.config.runs_dir / run_id
    tasks = plan(flow, params, registry=sdk.registry, config=sdk.config, run_id=run_id, run_dir=run_dir)
    state = RunState(run_id, flow, params, run_dir, sdk.config, tasks)
    task_list = tasks["metrics_monthly"]
    assert len(task_list) == 32
    hook = MlflowTracking(html=False)
    assert not db.exists()
    hook.before_flow(run=state)
    contexts = []
    for i, task in enumerate(task_list):
        # the driver creates and migrates the fresh store at the first task, before any worker logs
        task.context.tracking.update(hook.before_task(run=state, task=task))
        assert db.exists()
        contexts.append(str(task.context.save(tmp_path / "contexts" / f"{i}.json")))

    steps = 5
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(contexts), str(steps)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-5000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["exitcodes"] == [0] * 32
    assert len({pid for _, pid, _ in report["done"]}) == 32  # 32 distinct processes logged
    logged = [seconds for _, _, seconds in report["done"]]
    for task in task_list:
        hook.after_task(run=state, task=task, result=TaskResult(task.stage, task.partition, "succeeded", ""))
    hook.after_flow(run=state, result=RunResult(run_id, flow.name, "succeeded", str(run_dir), [], params))
    print(f"32 processes logged {steps + 1} metrics each; slowest took {max(logged):.2f}s")

    client = MlflowClient(store)
    runs = _runs(client, "fanout", **{"qsdk.run_id": run_id, "qsdk.kind": "partition"})
    assert len(runs) == 32
    assert {r.data.tags["qsdk.partition"] for r in runs} == {t.partition for t in task_list}
    by_partition = {t.partition: i for i, t in enumerate(task_list)}
    for r in runs:
        index = by_partition[r.data.tags["qsdk.partition"]]
        assert r.info.status == "FINISHED"
        assert r.data.metrics["index"] == index  # each process logged to its own run
        history = sorted(client.get_metric_history(r.info.run_id, "pnl"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(s, index + s / 10) for s in range(steps)]
    (stage,) = _runs(client, "fanout", **{"qsdk.run_id": run_id, "qsdk.kind": "stage"})
    assert stage.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == stage.info.run_id for r in runs)


def _git_head() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def test_backfill_via_cli_is_tracked_and_lineage_names_the_run(tmp_path, store, monkeypatch, capsys):
    monkeypatch.setenv("QSDK_LAKEHOUSE", str(tmp_path / "lake"))
    monkeypatch.setenv("QSDK_RUNS", str(tmp_path / "runs"))
    code = cli.main(["--project", str(REPO), "run", "backfill", "-p", "start=2009-11-01",
                     "-p", "end=2010-02-28", "--only", "ingest_prices", "--only", "clean_prices", "--executor", "local", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    client = MlflowClient(store)

    (parent,) = _runs(client, "backfill", **{"qsdk.kind": "flow"})
    assert parent.info.run_id == result["mlflow_run_id"]
    assert parent.data.tags["qsdk.run_id"] == result["run_id"]
    if _git_head():
        assert parent.data.tags["mlflow.source.git.commit"] == _git_head()
    stages = {r.data.tags["qsdk.stage"]: r for r in _runs(client, "backfill", **{"qsdk.kind": "stage"})}
    assert set(stages) == {"ingest_prices", "clean_prices"}
    partitions = _runs(client, "backfill", **{"qsdk.kind": "partition"})
    assert len(partitions) == 4  # two 5-year blocks (2009, 2010) x two stages
    for name, stage in stages.items():
        assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert stage.data.params["start"] == "2009-11-01" and stage.data.params["end"] == "2010-02-28"
        children = [p for p in partitions if p.data.tags["mlflow.parentRunId"] == stage.info.run_id]
        assert len(children) == 2
        for child in children:
            assert child.info.status == "FINISHED"
            lo, hi = child.data.tags["qsdk.partition"].split("_")
            assert (child.data.params["start"], child.data.params["end"]) == (lo, hi)
            expected = {f"{lo}_{hi}.ipynb", f"{lo}_{hi}.html"}
            assert _artifacts_eventually(client, child.info.run_id, "notebook", expected) == expected
        for table in result["stages"][name]["written"]:
            versions = [int(c.data.tags[f"delta.write.{table}"]) for c in children]
            assert int(stage.data.tags[f"delta.write.{table}"]) == max(versions)
    clean_children = [p for p in partitions if p.data.tags["qsdk.stage"] == "clean_prices"]
    for child in clean_children:
        assert "delta.read.bronze.prices_raw" in child.data.tags

    assert cli.main(["--project", str(REPO), "lineage", "silver.prices", "--json"]) == 0
    lineage = json.loads(capsys.readouterr().out)
    assert lineage["run_id"] == result["run_id"]
    assert lineage["stage"] == "clean_prices"
    writer = client.get_run(lineage["mlflow_run_id"])
    assert writer.data.tags["qsdk.stage"] == "clean_prices"
    assert int(writer.data.tags["delta.write.silver.prices"]) == lineage["version"]
    assert lineage["inputs"] == {"bronze.prices_raw": int(writer.data.tags["delta.read.bronze.prices_raw"])}

    assert cli.main(["--project", str(REPO), "lineage", "silver.prices"]) == 0
    text = capsys.readouterr().out
    assert result["run_id"] in text and lineage["mlflow_run_id"] in text and "clean_prices" in text


_NO_MLFLOW_HERE = """
import json, sys
from qsdk.sdk import QuantSDK
sdk = QuantSDK(sys.argv[1], lakehouse_root=sys.argv[2], runs_dir=sys.argv[3])
result = sdk.run_pipeline("metrics", params={"steps": 2}, executor="local")
print(json.dumps({"mlflow_imported": "mlflow" in sys.modules, "run": result.extra["mlflow_run_id"],
                  "status": result.status}))
"""


def test_a_tracked_run_records_everything_without_importing_mlflow_in_the_driver(sdk, store, tmp_path):
    """The tracking process (qsdk/integrations/tracking_agent.py) does the MLflow work; when the run
    returns, its record is complete: runs, parameters, notebook metrics, notebook; the HTML follows."""
    out = subprocess.run([sys.executable, "-c", _NO_MLFLOW_HERE, str(sdk.config.project_root),
                          str(sdk.config.lakehouse_root), str(sdk.config.runs_dir)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-5000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["status"] == "succeeded"
    assert report["mlflow_imported"] is False
    client = MlflowClient(store)
    parent = client.get_run(report["run"])
    assert parent.info.status == "FINISHED" and parent.data.params["metrics.steps"] == "2"
    (stage,) = _runs(client, "metrics", **{"mlflow.parentRunId": parent.info.run_id})
    assert stage.info.status == "FINISHED"
    assert len(client.get_metric_history(stage.info.run_id, "loss")) == 2  # logged by the notebook
    expected = {"metrics.ipynb", "metrics.html"}  # the HTML logged after the driver process exited
    assert _artifacts_eventually(client, stage.info.run_id, "notebook", expected) == expected
