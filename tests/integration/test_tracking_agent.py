"""The long-lived tracking agent (qsdk/integrations/tracking_agent.py): runs share one process
that keeps MLflow imported and its stores open; a deleted store is made anew, never written
through a stale connection; a killed agent costs a run its tracking, not its result; an agent
serves only its own environment and code, stops when idle, and is shown and stopped by the CLI.

Real kernels, a real MLflow SQLite store, real agents (each test stops the agents it started).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient

from qsdk import cli
from qsdk.errors import ConfigError
from qsdk.integrations import tracker, tracking_agent
from qsdk.sdk import QuantSDK
from tests.integration.test_tracking import NOTEBOOK, _artifacts_eventually

REPO = Path(__file__).resolve().parents[2]


def _project(root: Path, *cells: str) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "pipelines" / "tracking.yaml").write_text(
        f"stages:\n  metrics:\n    notebook: {NOTEBOOK}\nflows:\n  metrics: {{stages: [metrics]}}\n")
    return root


def _sdk(tmp_path: Path) -> QuantSDK:
    return QuantSDK(_project(tmp_path / "project"), lakehouse_root=tmp_path / "lake", runs_dir=tmp_path / "runs")


def _complete(store: str, mlflow_run_id: str, *, steps: int, rendered_here: bool = True) -> None:
    """The run's record: flow run finished with its params, the stage run with the notebook's
    metrics and the executed notebook, and (once rendered) its HTML. ``rendered_here``: the run
    was this process's, so :func:`tracker.wait_rendered` waits for its renderings; else poll."""
    client = MlflowClient(store)
    parent = client.get_run(mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["metrics.steps"] == str(steps)
    exp = parent.info.experiment_id
    (stage,) = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{mlflow_run_id}'")
    assert stage.info.status == "FINISHED"
    assert len(client.get_metric_history(stage.info.run_id, "loss")) == steps
    if rendered_here:
        assert tracker.wait_rendered(timeout=300)
    expected = {"metrics.ipynb", "metrics.html"}
    assert _artifacts_eventually(client, stage.info.run_id, "notebook", expected) == expected


def test_runs_share_one_agent_that_records_each_run_completely(tmp_path, store, own_agents):
    sdk = _sdk(tmp_path)
    first = sdk.run_pipeline("metrics", params={"steps": 2}, executor="local")
    agent = tracking_agent.status()
    assert agent is not None, "the first tracked run started no agent"
    second = sdk.run_pipeline("metrics", params={"steps": 3}, executor="local")
    assert tracking_agent.status() == agent  # the same process served the second run
    _complete(store, first.extra["mlflow_run_id"], steps=2)
    _complete(store, second.extra["mlflow_run_id"], steps=3)
    assert first.extra["mlflow_run_id"] != second.extra["mlflow_run_id"]


def test_a_store_deleted_between_runs_is_made_anew_and_gets_the_next_run(tmp_path, store, own_agents):
    """The agent keeps each store open; a store deleted since (a new project folder, a
    restored backup) must not swallow the next run through a connection to the deleted file."""
    sdk = _sdk(tmp_path)
    sdk.run_pipeline("metrics", params={"steps": 1}, executor="local")
    assert tracker.wait_rendered(timeout=300)
    agent = tracking_agent.status()
    shutil.rmtree(tmp_path / "mlflow")
    second = sdk.run_pipeline("metrics", params={"steps": 2}, executor="local")
    assert tracking_agent.status() == agent
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    _complete(store, second.extra["mlflow_run_id"], steps=2)
    exp = MlflowClient(store).get_experiment_by_name("qsdk/metrics")
    assert len(MlflowClient(store).search_runs([exp.experiment_id])) == 2  # the second run's flow and stage runs only


def test_an_agent_killed_mid_run_costs_the_run_its_tracking_not_its_result(tmp_path, store, own_agents):
    sdk = _sdk(tmp_path)
    sdk.run_pipeline("metrics", params={"steps": 1}, executor="local")  # the agent is up
    killed = tracking_agent.status()
    assert killed is not None
    # the run's tracking connects, then the agent dies while the notebook runs
    kill = f"import contextlib, os, signal\nwith contextlib.suppress(ProcessLookupError):\n    os.kill({killed.pid}, signal.SIGKILL)\n"
    nb = _killing_notebook(tmp_path / "kill.ipynb", kill)
    (sdk.config.project_root / "pipelines" / "tracking.yaml").write_text(
        f"stages:\n  metrics:\n    notebook: {nb}\nflows:\n  metrics: {{stages: [metrics]}}\n")
    sdk = QuantSDK(sdk.config.project_root, lakehouse_root=tmp_path / "lake", runs_dir=tmp_path / "runs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sdk.run_pipeline("metrics", executor="local")
    assert result.status == "succeeded"
    assert any("tracking agent ended before the run's tracking was complete" in str(w.message) for w in caught), \
        [str(w.message) for w in caught]
    assert tracker.wait_rendered(timeout=60)
    after = sdk.run_pipeline("metrics", executor="local", cache=False)  # a new agent serves the next run
    assert tracking_agent.status() is not None and tracking_agent.status().pid != killed.pid
    assert MlflowClient(store).get_run(after.extra["mlflow_run_id"]).info.status == "FINISHED"


def _killing_notebook(path: Path, source: str) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell("x: int = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(source)]
    nbformat.write(nb, path)
    return path


def test_without_a_reachable_agent_a_run_is_tracked_by_its_own_helper(tmp_path, store, monkeypatch):
    """An agent that cannot listen (here: a temp folder too deep for a Unix socket's path)
    leaves the run to a helper process of its own, with a warning."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    sdk = _sdk(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sdk.run_pipeline("metrics", params={"steps": 2}, executor="local")
    assert any("could not reach the tracking agent" in str(w.message) for w in caught), \
        [str(w.message) for w in caught]
    assert tracking_agent.status() is None
    _complete(store, result.extra["mlflow_run_id"], steps=2)


def test_a_helper_per_run_on_request(tmp_path, store, own_agents, monkeypatch):
    monkeypatch.setenv("QSDK_TRACKER", "process")
    result = _sdk(tmp_path).run_pipeline("metrics", params={"steps": 2}, executor="local")
    assert tracking_agent.status() is None  # no agent was started
    _complete(store, result.extra["mlflow_run_id"], steps=2)


def test_a_wrong_mode_is_refused_before_the_run(tmp_path, store, monkeypatch):
    monkeypatch.setenv("QSDK_TRACKER", "daemon")
    with pytest.raises(ConfigError, match=r"QSDK_TRACKER='daemon'.*'agent'.*'process'"):
        _sdk(tmp_path).run_pipeline("metrics", executor="local")
    assert not (tmp_path / "lake").exists() or not any((tmp_path / "lake").iterdir())
    monkeypatch.setenv("QSDK_TRACKER", "agent")
    monkeypatch.setenv("QSDK_TRACKER_IDLE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match=r"QSDK_TRACKER_IDLE_TIMEOUT='soon' is not a number of seconds"):
        tracking_agent.idle_timeout_default()


def test_an_agent_serves_only_its_environment_and_code(tmp_path, monkeypatch):
    base = tracking_agent.key()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere.db")  # each run names its store
    monkeypatch.setenv("QSDK_LAKEHOUSE", str(tmp_path))
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("DVC_STAGE", "clean_prices")  # set per command by `dvc repro`
    monkeypatch.setenv("MAKEFLAGS", "-j2")
    assert tracking_agent.key() == base
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another")  # credentials MLflow's artifact store reads
    assert tracking_agent.key() != base
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "another")
    assert tracking_agent.key() != base
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert tracking_agent.key() != base
    monkeypatch.delenv("HTTPS_PROXY")
    # qsdk's code changed (a copy of the package, one file touched): another key
    shutil.copytree(REPO / "qsdk", tmp_path / "src" / "qsdk", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(tracking_agent, "_SOURCE_ROOT", tmp_path / "src")
    copied = tracking_agent.key()
    touched = tmp_path / "src" / "qsdk" / "integrations" / "mlflow.py"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert tracking_agent.key() != copied


def test_an_idle_agent_stops_itself_and_the_cli_shows_and_stops_agents(tmp_path, store, own_agents, monkeypatch,
                                                                         capsys):
    sdk = _sdk(tmp_path)
    monkeypatch.setenv("QSDK_TRACKER_IDLE_TIMEOUT", "2")
    sdk.run_pipeline("metrics", params={"steps": 1}, executor="local")
    assert tracker.wait_rendered(timeout=300)
    info = tracking_agent.status()
    assert info is not None and info.idle_timeout == 2
    deadline = time.monotonic() + 120
    while tracking_agent.status() is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert tracking_agent.status() is None, "an idle agent did not stop itself"
    assert not Path(info.socket).parent.exists()  # an agent that ends leaves no folder (its log had no error)

    monkeypatch.setenv("QSDK_TRACKER_IDLE_TIMEOUT", "600")
    sdk.run_pipeline("metrics", params={"steps": 1}, executor="local", cache=False)
    assert cli.main(["tracker", "status", "--json"]) == 0
    shown = [a for a in json.loads(capsys.readouterr().out) if a["this_environment"]]
    assert len(shown) == 1 and shown[0]["idle_timeout"] == 600
    assert cli.main(["tracker", "stop"]) == 0
    assert f"pid {shown[0]['pid']}" in capsys.readouterr().out
    assert tracking_agent.status() is None
    assert cli.main(["tracker", "status"]) == 1
    assert "the next tracked run starts one" in capsys.readouterr().out


_RUN = """
import json, sys
from qsdk.sdk import QuantSDK
sdk = QuantSDK(sys.argv[1], lakehouse_root=sys.argv[2], runs_dir=sys.argv[3])
result = sdk.run_pipeline("metrics", params={"steps": int(sys.argv[4])}, executor="local")
print(json.dumps({"run": result.extra["mlflow_run_id"], "status": result.status,
                  "mlflow_imported": "mlflow" in sys.modules}))
"""


def test_two_commands_at_once_share_the_agent_and_lose_nothing(tmp_path, store, own_agents):
    project = _project(tmp_path / "project")
    procs = [subprocess.Popen([sys.executable, "-c", _RUN, str(project), str(tmp_path / f"lake{i}"),
                               str(tmp_path / f"runs{i}"), str(i + 1)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-5000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["status"] for r in reports] == ["succeeded", "succeeded"]
    assert not any(r["mlflow_imported"] for r in reports)  # the commands never import MLflow
    assert len(tracking_agent.running()) >= 1 and tracking_agent.status() is not None
    for i, report in enumerate(reports):
        _complete(store, report["run"], steps=i + 1, rendered_here=False)  # another process's renderings
