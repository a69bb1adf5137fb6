"""The launcher widget, driven in-process: form from typed parameters, inline validation,
Run in a background thread with live progress, links, readable errors. Real kernels run the
stage notebooks; real Delta tables are written."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import ipywidgets as W
import pytest

from qsdk.lakehouse.tables import Lakehouse
from qsdk.widgets import Launcher
from tests.conftest import Project

PARAMS = '''from typing import Literal

start: "date" = "2021-01-01"  # first day
end: "date" = "2021-01-31"  # last day
n: int = 2  # how many
scale: float = 1.0
mode: Literal["ok", "fail"] = "ok"  # fail on purpose
flag: bool = False
tags: list[str] = []
threshold: float | None = None
'''
BODY = '''import pandas as pd
import qsdk

if mode == "fail":
    raise ValueError("planted failure for the launcher test")
days = pd.date_range(start, end, freq="MS").date
qsdk.write_table("bronze.numbers", pd.DataFrame({"day": days, "value": [n * scale] * len(days)}),
                 mode="overwrite", predicate=qsdk.between("day", start, end))
'''


@pytest.fixture
def sdk(project: Project):
    project.table("bronze.numbers", {"day": "date", "value": "float64"}, primary_key=["day"])
    project.stage("numbers", PARAMS, BODY, outputs=["bronze.numbers"], partition={"by": "month"})
    project.flow("numbers_flow", ["numbers"], description="numbers by month")
    return project.sdk()


def test_form_is_built_from_typed_parameters_and_validates_inline(sdk) -> None:
    launcher = Launcher(sdk=sdk)
    assert launcher.flow_picker.options == ("numbers_flow",)
    kinds = {name: type(widget) for name, widget in launcher.fields.items()}
    assert kinds == {"start": W.DatePicker, "end": W.DatePicker, "n": W.IntText, "scale": W.FloatText,
                     "mode": W.Dropdown, "flag": W.Checkbox, "tags": W.Text, "threshold": W.Text}
    assert launcher.fields["mode"].options == ("ok", "fail")
    assert launcher.fields["start"].value == dt.date(2021, 1, 1)
    assert launcher.params() == {} and launcher.validate() == {}  # defaults: nothing to pass, valid

    launcher.fields["end"].value = dt.date(2020, 12, 1)  # before start: the run's own check, inline
    assert "swap them" in launcher.messages["start"].value
    launcher.fields["end"].value = dt.date(2021, 2, 28)
    assert launcher.messages["start"].value == ""
    launcher.fields["threshold"].value = "high"
    assert "expected float or None" in launcher.messages["threshold"].value
    launcher.run_button.click()  # refused: nothing starts
    assert launcher._future is None and "fix the parameters" in launcher.status.value
    launcher.fields["threshold"].value = "0.5"
    assert launcher.validate() == {"end": "2021-02-28", "threshold": "0.5"}


def test_run_in_background_with_live_progress_links_and_tables(sdk, monkeypatch) -> None:
    launcher = Launcher(sdk=sdk)
    launcher.fields["end"].value = dt.date(2021, 2, 28)  # two monthly partitions
    launcher.fields["n"].value = 3
    seen: list[tuple[str, int]] = []

    def watch_bars(change: dict[str, Any]) -> None:  # bars appear when the flow starts
        for stage, bar in launcher.progress.items():
            bar.observe(lambda ch, s=stage: seen.append((s, ch["new"])), names="value")

    launcher.progress_box.observe(watch_bars, names="children")
    assert _graph_states(launcher) == {"numbers": "never"}  # before the run: what qsdk status says
    drawn: list[str] = []
    launcher.graph_view.observe(lambda ch: drawn.append(_graph_states(launcher)["numbers"]), names="value")
    launcher.run_button.click()
    assert launcher.running and launcher.run_button.disabled  # click returned; the run goes on
    result = launcher.wait(timeout=600)

    assert result is not None and result.status == "succeeded", launcher.status.value
    assert seen == [("numbers", 1), ("numbers", 2)]  # moved by the hook as each partition finished
    bar = launcher.progress["numbers"]
    assert (bar.value, bar.max, bar.bar_style) == (2, 2, "success")
    assert launcher.task_status["numbers"] == {"2021-01-01_2021-01-31": "succeeded",
                                               "2021-02-01_2021-02-28": "succeeded"}
    assert "succeeded" in launcher.status.value and not launcher.run_button.disabled
    links = launcher.links.outputs[0]["data"]["text/html"]
    for r in result.results:
        assert str(Path(r.notebook).relative_to(result.run_dir)) in links
    assert result.extra["mlflow_run_id"] in links
    table = Lakehouse(sdk.config.lakehouse_root).read("bronze.numbers").to_pylist()
    assert sorted((row["day"], row["value"]) for row in table) == [(dt.date(2021, 1, 1), 3.0),
                                                                   (dt.date(2021, 2, 1), 3.0)]
    # the graph was re-coloured live: pending, running while partitions ran, succeeded at the end
    assert drawn[0] == "pending" and "running" in drawn and drawn[-1] == "succeeded"
    assert 'data-partitions="2"' in launcher.graph_view.value and "numbers ×2" in launcher.graph_view.value
    assert 'data-node="bronze.numbers" data-kind="table"' in launcher.graph_view.value
    # the History tab: the run, its status, its notebooks and its MLflow run id
    history = launcher.history.value
    assert f"data-run='{result.run_id}'" in history and "succeeded" in history
    assert result.extra["mlflow_run_id"] in history and "2021-02-01_2021-02-28.ipynb" in history
    assert "href='http" not in history  # no MLflow UI runs here: the id is shown, not linked
    monkeypatch.setenv("QSDK_MLFLOW_UI", "http://127.0.0.1:5999")  # as `make mlflow-ui` would serve
    launcher.tabs.selected_index = 1  # opening the tab refreshes it
    mlflow_id = result.extra["mlflow_run_id"]
    assert re.search(rf"href='http://127.0.0.1:5999/#/experiments/\d+/runs/{mlflow_id}'", launcher.history.value)


def _graph_states(launcher) -> dict[str, str]:
    return dict(re.findall(r'data-node="([^"]+)" data-kind="stage" data-state="([^"]+)"', launcher.graph_view.value))


def test_parameters_for_another_choice_are_greyed_out(project: Project) -> None:
    cell = ('from typing import Literal\nsource: Literal["real", "synthetic"] = "real"\n'
            'n_symbols: int = 20  # synthetic only: number of symbols\nseed: int = 0  # synthetic only: seed\n'
            'label: str = "x"  # real data label')
    project.table("bronze.numbers", {"day": "date", "value": "float64"})
    sdk = project.stage("s", cell, outputs=["bronze.numbers"]).flow("f", ["s"]).sdk()
    launcher = Launcher(sdk=sdk)
    assert launcher.fields["n_symbols"].disabled and launcher.fields["seed"].disabled
    assert not launcher.fields["label"].disabled and not launcher.fields["source"].disabled
    launcher.fields["source"].value = "synthetic"
    assert not launcher.fields["n_symbols"].disabled and not launcher.fields["seed"].disabled


def test_a_failed_stage_is_shown_readably(sdk) -> None:
    launcher = Launcher(sdk=sdk, track=False)
    launcher.fields["mode"].value = "fail"
    launcher.run_button.click()
    result = launcher.wait(timeout=600)
    assert result is not None and result.status == "failed"
    status = launcher.status.value
    assert "failed" in status and "planted failure for the launcher test" in status
    assert "ValueError" in status and "Traceback" not in status
    assert launcher.progress["numbers"].bar_style == "danger"
    assert launcher.task_status["numbers"] == {"2021-01-01_2021-01-31": "failed"}
    assert "MLflow: not tracked" in launcher.links.outputs[0]["data"]["text/html"]
    assert not Lakehouse(launcher.sdk.config.lakehouse_root).exists("bronze.numbers")
