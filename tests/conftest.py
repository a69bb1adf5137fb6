"""Shared fixtures: throw-away qsdk projects with real notebooks, Delta tables and kernels."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from tests.services.fixtures import mlflow_server, s3_env, s3_root, s3_server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]

# Tests never touch the repository's own lakehouse, runs or tracking store.
os.environ.pop("QSDK_LAKEHOUSE", None)
os.environ.pop("QSDK_RUNS", None)
# One throw-away MLflow store for the session; tests that need their own set it themselves.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='qsdk-tests-mlflow-')}/mlflow.db"
# Runs on Ray start a throw-away embedded Ray, not a long-lived head that would outlive the test
# (tests of the head, tests/integration/test_ray_head.py, ask for one and stop it).
os.environ["QSDK_RAY"] = "embedded"
# Tracked runs reach a long-lived tracking agent (the default); a test that changes the
# environment gets its own, so they stop soon after their last run, and the session stops any
# it started (tests/integration/test_tracking_agent.py tests the agent itself).
os.environ["QSDK_TRACKER_IDLE_TIMEOUT"] = "60"


@pytest.fixture(scope="session", autouse=True)
def _stop_tracking_agents_started_here():
    from qsdk.integrations import tracking_agent

    before = {info.pid for info in tracking_agent.running()}
    yield
    for info in tracking_agent.running():
        if info.pid not in before:
            tracking_agent.stop(info.key)


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A SQLite MLflow store of the test's own, as ``$MLFLOW_TRACKING_URI``."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def own_agents(monkeypatch):
    """Tracking agents of this test only (tests/integration/test_tracking_agent.py): their folders
    under a temp dir of its own (short: a Unix socket's path has 107 bytes), stopped afterwards."""
    from qsdk.integrations import tracking_agent

    short = tempfile.mkdtemp(prefix="qa-", dir="/tmp")
    monkeypatch.setenv("TMPDIR", short)  # the agents' folders, also for the test's subprocesses
    monkeypatch.setattr(tempfile, "tempdir", short)
    yield
    for info in tracking_agent.running():
        tracking_agent.stop(info.key)
    shutil.rmtree(short, ignore_errors=True)


def write_notebook(path: Path, parameters: str, *cells: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    param_cell = new_code_cell(parameters)
    param_cell.metadata["tags"] = ["parameters"]
    nb.cells = [param_cell, *(new_code_cell(c) for c in cells)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


class Project:
    """A temporary qsdk project: ``pipelines/*.yaml`` plus notebooks, with its own lakehouse."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "pipelines").mkdir(parents=True, exist_ok=True)
        self.doc: dict[str, dict[str, Any]] = {"tables": {}, "stages": {}, "flows": {}}

    def table(self, name: str, columns: dict[str, str], **extra: Any) -> Project:
        self.doc["tables"][name] = {"columns": columns, **extra}
        return self

    def stage(self, name: str, params_cell: str, *cells: str, **spec: Any) -> Project:
        nb = write_notebook(self.root / "notebooks" / f"{name}.ipynb", params_cell, *cells)
        self.doc["stages"][name] = {"notebook": str(nb.relative_to(self.root)), **spec}
        return self

    def flow(self, name: str, stages: list[str], **spec: Any) -> Project:
        self.doc["flows"][name] = {"stages": stages, **spec}
        return self

    def a_then_b(self) -> Project:
        """Flow ``f``: stage ``a`` writes ``bronze.a``, stage ``b`` copies it into ``silver.b``
        (one task each, the second after the first)."""
        cols = {"date": "date", "v": "float64"}
        return (self.table("bronze.a", cols).table("silver.b", cols)
                .stage("a", "x: int = 1", "import pandas as pd, qsdk\nqsdk.write_table('bronze.a', "
                       "pd.DataFrame({'date': pd.to_datetime(['2020-01-01']), 'v': [float(x)]}), mode='overwrite')",
                       outputs=["bronze.a"])
                .stage("b", "x: int = 1", "import qsdk\nqsdk.write_table('silver.b', "
                       "qsdk.DataLoader().read('bronze.a'), mode='overwrite')", inputs=["bronze.a"], outputs=["silver.b"])
                .flow("f", ["a", "b"]))

    def save(self) -> Project:
        doc = {k: v for k, v in self.doc.items() if v}
        (self.root / "pipelines" / "registry.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return self

    def sdk(self):
        from qsdk.sdk import QuantSDK

        self.save()
        return QuantSDK(self.root, lakehouse_root=self.root / "lakehouse", runs_dir=self.root / "runs")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "proj")


@pytest.fixture
def repo_project(tmp_path: Path):
    """The repository's own registry and notebooks, with a private lakehouse and runs folder."""
    from qsdk.sdk import QuantSDK

    return QuantSDK(REPO, lakehouse_root=tmp_path / "lakehouse", runs_dir=tmp_path / "runs")


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the repository's pipelines/ and notebooks/ that a test may edit."""
    root = tmp_path / "copy"
    for folder in ("pipelines", "notebooks"):
        shutil.copytree(REPO / folder, root / folder)
    return root
