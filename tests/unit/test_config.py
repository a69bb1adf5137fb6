"""Config: a relative tracking URI names the store from the command's folder, whoever opens it."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsdk.config import Config, absolute_tracking_uri


@pytest.mark.parametrize(("uri", "expected"), [
    ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
    ("sqlite:///store/m.db", "sqlite:///{cwd}/store/m.db"),
    ("file:./mlruns", "file://{cwd}/mlruns"),
    ("mlruns", "file://{cwd}/mlruns"),
])
def test_a_relative_tracking_uri_is_made_absolute_from_the_current_folder(tmp_path, monkeypatch, uri, expected):
    monkeypatch.chdir(tmp_path)
    cwd = str(tmp_path.resolve())
    assert absolute_tracking_uri(uri) == expected.format(cwd=cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = Config(project_root=tmp_path, lakehouse_root=tmp_path / "lake", runs_dir=tmp_path / "runs")
    assert config.tracking_uri == expected.format(cwd=cwd)


@pytest.mark.parametrize("uri", ["sqlite:////abs/mlflow.db", "sqlite:///:memory:", "http://127.0.0.1:5000",
                                 "file:///abs/mlruns", "databricks", "postgresql://u@h/db"])
def test_absolute_and_remote_tracking_uris_are_kept(uri):
    assert absolute_tracking_uri(uri) == uri


def test_the_default_store_is_the_projects_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = Config(project_root=tmp_path, lakehouse_root=tmp_path / "lake", runs_dir=tmp_path / "runs")
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert Path(config.tracking_uri.removeprefix("sqlite:///")).is_absolute()
