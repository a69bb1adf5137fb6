"""Every notebook under notebooks/ runs, and its saved outputs still match (pytest-notebook).

Stage notebooks run with their default parameters under a stage context whose writes commit
at once, in the registry's DAG order, so each stage finds the tables its upstream wrote. The
committed notebooks keep the outputs of such a run; ``make regen-notebooks`` refreshes them.
"""

from __future__ import annotations

import graphlib
import os
from pathlib import Path

import pytest
from pytest_notebook.nb_regression import NBRegressionFixture

from qsdk.config import Config
from qsdk.execution.context import new_context
from qsdk.model.registry import Registry
from tests.conftest import REPO

REGISTRY = Registry.load(Config.load(REPO))
BY_NOTEBOOK = {s.notebook: s for s in REGISTRY.stages.values()}
# volatile or environment-specific parts of a notebook
IGNORE = (
    "/metadata/language_info",
    "/metadata/widgets",
    "/cells/*/execution_count",
    "/cells/*/metadata",
    "/cells/*/outputs/*/execution_count",
    "/cells/*/outputs/*/data/text/html",
    "/cells/*/outputs/*/data/image/png",
    "/cells/*/outputs/*/data/application/vnd.jupyter.widget-view+json",
)


def _ordered_notebooks() -> list[Path]:
    writer = {t: s.name for s in REGISTRY.stages.values() for t in s.outputs}
    deps = {s.name: {writer[t] for t in s.inputs if t in writer} for s in REGISTRY.stages.values()}
    stage_order = [REGISTRY.stages[n].notebook for n in graphlib.TopologicalSorter(deps).static_order()]
    others = sorted(p.resolve() for p in (REPO / "notebooks").rglob("*.ipynb")
                    if ".ipynb_checkpoints" not in p.parts and p.resolve() not in BY_NOTEBOOK)
    return [*stage_order, *others]


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nb-lakehouse")


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", _ordered_notebooks(), ids=lambda p: str(p.relative_to(REPO)))
def test_notebook_runs_and_matches_saved_outputs(notebook: Path, lake_root: Path, tmp_path: Path) -> None:
    env = {"QSDK_PROJECT": str(REPO), "QSDK_LAKEHOUSE": str(lake_root), "QSDK_RUNS": str(tmp_path / "runs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    stage = BY_NOTEBOOK.get(notebook)
    if stage is not None:
        context = new_context(REGISTRY, run_id="notebook-test", stage=stage.name, lakehouse_root=lake_root,
                              inputs=stage.inputs, outputs=stage.outputs, staging_dir=None)
        env["QSDK_CONTEXT"] = str(context.save(tmp_path / "context.json"))
    fixture = NBRegressionFixture(
        exec_timeout=600,
        exec_cwd=str(notebook.parent),
        exec_env=env,
        diff_ignore=IGNORE,
        diff_use_color=False,
        force_regen=os.environ.get("QSDK_REGEN_NOTEBOOKS") == "1",
    )
    fixture.check(str(notebook))
