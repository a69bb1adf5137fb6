"""MLflow behind a tracking server (``make mlflow-server``): the driver and the processes that run
the notebooks log over http, and artifacts go through the server (``--serve-artifacts``) into its
own store, so no process of the run needs a path on the driver's disk to track.

The partitions run in kernels of the local executor: each is a process of its own that gets the
tracking URI and run id from its stage context, exactly as a Ray worker does (the Ray executor
passes the same context), without a Ray start that a loaded 2-core machine can time out."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from qsdk.integrations import tracker
from qsdk.sdk import QuantSDK

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "tests" / "notebooks" / "tracking_metrics.ipynb"


def test_partitions_log_runs_and_artifacts_through_the_server(tmp_path, mlflow_server):
    project = tmp_path / "project"
    (project / "pipelines").mkdir(parents=True)
    (project / "pipelines" / "tracking.yaml").write_text(
        f"stages:\n  metrics_monthly:\n    notebook: {NOTEBOOK}\n    partition: {{by: month}}\n"
        "flows:\n  fanout: {stages: [metrics_monthly]}\n")
    sdk = QuantSDK(project, lakehouse_root=tmp_path / "lake", runs_dir=tmp_path / "runs")
    assert sdk.config.tracking_uri == mlflow_server.uri
    result = sdk.run_pipeline("fanout", params={"start": "2000-01-01", "end": "2000-02-29", "steps": 2},
                              executor="local")
    assert result.status == "succeeded"
    assert tracker.wait_rendered(timeout=300)  # the HTML renderings, logged after the run returned

    client = MlflowClient(mlflow_server.uri)  # everything is read back through the server
    parent = client.get_run(result.extra["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["qsdk.run_id"] == result.run_id
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    (stage,) = children
    parts = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.`mlflow.parentRunId` = '{stage.info.run_id}'")
    assert sorted(p.data.tags["qsdk.partition"] for p in parts) == ["2000-01-01_2000-01-31", "2000-02-01_2000-02-29"]
    for part in parts:  # logged by the partition's kernel, over http
        assert part.info.status == "FINISHED"
        assert part.info.artifact_uri.startswith("mlflow-artifacts:"), part.info.artifact_uri
        assert [m.value for m in client.get_metric_history(part.info.run_id, "loss")] == [1.0, 0.5]
        assert {Path(a.path).name for a in client.list_artifacts(part.info.run_id, "figures")} == {"curve.png"}
        notebooks = {Path(a.path).name for a in client.list_artifacts(part.info.run_id, "notebook")}
        assert {n.rsplit(".", 1)[1] for n in notebooks} == {"ipynb", "html"}, notebooks
        # the bytes are in the server's own artifact store, put there by the server
        served = list((mlflow_server.folder / "artifacts").rglob(f"{part.info.run_id}/artifacts/figures/curve.png"))
        assert len(served) == 1 and served[0].stat().st_size > 0
    assert not list(tmp_path.rglob("mlartifacts"))  # nothing was written beside a local store
