"""dvc.yaml rendered from the registry: in step with pipelines/, deterministic, same edges."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from qsdk import cli
from qsdk.config import Config
from qsdk.errors import ParameterError, VersioningError
from qsdk.integrations.dvc import dvcsync
from qsdk.model.registry import Registry

REPO = Path(__file__).resolve().parents[3]


def test_committed_dvc_yaml_is_in_step_with_pipelines():
    registry = Registry.load(Config.load(REPO))
    report = dvcsync.sync(registry, check=True)
    assert report.in_step, f"run `make dvc-sync` (qsdk dvc sync) and commit dvc.yaml:\n{report.describe()}"
    assert (REPO / "dvc.yaml").read_text() == dvcsync.render(registry)
    # DVC's project files are committed: dvc.yaml works in a fresh clone, pushing to the local remote
    assert (REPO / ".dvcignore").is_file()
    config = (REPO / ".dvc" / "config").read_text()
    assert "remote = qsdk-local" in config and "url = ~/.cache/qsdk/dvc-remote" in config


def test_check_fails_when_pipelines_change_and_sync_keeps_user_params(project_copy: Path, capsys):
    registry = Registry.load(Config.load(project_copy))
    dvcsync.sync(registry)
    params = yaml.safe_load((project_copy / "params.yaml").read_text())
    params["backfill"]["start"] = "2005-01-01"  # a user's value
    params["backfill"]["obsolete"] = 1
    params["mine"] = {"keep": True}  # not qsdk's
    (project_copy / "params.yaml").write_text(yaml.safe_dump(params))
    assert dvcsync.sync(registry, check=True).in_step

    doc = yaml.safe_load((project_copy / "pipelines" / "backfill.yaml").read_text())
    doc["stages"]["clean_prices"]["description"] = "changed"
    doc["flows"]["backfill"]["parameters"]["end"] = "2006-12-31"
    (project_copy / "pipelines" / "backfill.yaml").write_text(yaml.safe_dump(doc))
    assert cli.main(["--project", str(project_copy), "dvc", "sync", "--check"]) == 1
    err = capsys.readouterr().err
    assert "out of step" in err and "+    desc: changed" in err
    assert cli.main(["--project", str(project_copy), "dvc", "sync"]) == 0
    assert cli.main(["--project", str(project_copy), "dvc", "sync", "--check"]) == 0
    after = yaml.safe_load((project_copy / "params.yaml").read_text())
    assert after["backfill"]["start"] == "2005-01-01"  # kept
    assert after["backfill"]["end"] == params["backfill"]["end"]  # kept: the user's file now
    assert "obsolete" not in after["backfill"] and after["mine"] == {"keep": True}

    (project_copy / "params.yaml").unlink()
    report = dvcsync.sync(Registry.load(Config.load(project_copy)), check=True)
    assert not report.in_step and report.missing_params == ["backfill"]


def _registry(project, order: list[str]):
    cols = {"k": "int64"}
    for t in ("raw.a", "raw.b", "mid.c", "out.d"):
        project.table(t, cols)
    specs = {
        "load_a": dict(outputs=["raw.a"]),
        "load_b": dict(outputs=["raw.b"], parameters={"window": 5}),
        "join": dict(inputs=["raw.a", "raw.b"], outputs=["mid.c"]),
        "report": dict(inputs=["mid.c"], outputs=["out.d"]),
        "orphan": dict(inputs=["raw.a"]),
    }
    for name in order:
        project.stage(name, 'start = "2020-01-01"\nwindow = 3', **specs[name])
    project.flow("zeta", ["load_a", "load_b", "join", "report"], parameters={"start": "2021-01-01"})
    project.flow("alpha", ["load_b"])
    shutil.rmtree(project.root / "pipelines")
    project.root.joinpath("pipelines").mkdir()
    project.save()
    return Registry.load(Config.load(project.root))


def test_render_is_deterministic_and_its_edges_are_the_registry_edges(project):
    names = ["report", "join", "orphan", "load_b", "load_a"]
    registry = _registry(project, names)
    text = dvcsync.render(registry)
    assert text == dvcsync.render(_registry(project, list(reversed(names))))  # YAML order is irrelevant
    stages = yaml.safe_load(text)["stages"]
    assert list(stages) == ["load_a", "load_b", "join", "report"]  # topological, ties by name
    assert "orphan" not in stages  # in no flow: `qsdk run` cannot run it either
    union = {(up, s) for f in registry.flows.values() for s, ups in f.dependencies().items() for up in ups}
    deps = {(m.split("/")[-1].removesuffix(".json"), s) for s, e in stages.items() for m in e["deps"]
            if m.startswith(".qsdk/dvc/")}
    assert deps == dvcsync.edges(registry) - {("load_a", "orphan")} == union
    assert stages["join"]["outs"] == [{".qsdk/dvc/join.json": {"cache": False}}]
    assert all(not o_path.startswith(("lakehouse", "raw", "mid")) for e in stages.values()
               for out in e["outs"] for o_path in out)  # never a Delta table
    # load_b is in two flows: it runs in the first by name; its registry default becomes a param,
    # declared for DVC but read by the command itself: no value is ever templated into a command
    assert stages["load_b"]["cmd"] == "qsdk dvc run alpha load_b"
    assert stages["load_a"]["cmd"] == "qsdk dvc run zeta load_a"
    assert stages["load_a"]["params"] == ["zeta.start"] and stages["load_b"]["params"] == ["alpha.load_b.window"]
    assert dvcsync.default_params(registry) == {"alpha": {"load_b": {"window": 5}}, "zeta": {"start": "2021-01-01"}}


def test_a_stage_reads_its_params_yaml_values_as_literal_text(project):
    registry = _registry(project, ["load_a", "load_b", "join", "report"])
    dvcsync.sync(registry)
    assert dvcsync.dvc_params(registry, "zeta", "load_a") == {"start": "2021-01-01"}
    values = {"zeta": {"start": "$(touch pwned) `touch pwned`; rm -rf x"}, "alpha": {"load_b": {"window": 7}}}
    (project.root / "params.yaml").write_text(yaml.safe_dump(values))
    assert dvcsync.dvc_params(registry, "zeta", "load_a") == {"start": "$(touch pwned) `touch pwned`; rm -rf x"}
    assert dvcsync.dvc_params(registry, "alpha", "load_b") == {"load_b.window": "7"}
    (project.root / "params.yaml").write_text(yaml.safe_dump({"zeta": {}}))
    with pytest.raises(VersioningError, match=r"no value for 'zeta.start' .* run `qsdk dvc sync`"):
        dvcsync.dvc_params(registry, "zeta", "load_a")


def test_snapshot_is_a_run_option_not_a_stage_parameter(project):
    import inspect

    project.table("raw.a", {"k": "int64"})
    project.stage("s", "start = 1\nsnapshot = ''", outputs=["raw.a"])
    project.stage("t", "start = 1", inputs=["raw.a"])
    project.flow("f", ["s", "t"]).flow("g", ["t"]).save()
    sdk = project.sdk()
    option = inspect.signature(type(sdk).run_pipeline).parameters["snapshot"]
    assert option.kind is inspect.Parameter.KEYWORD_ONLY and option.default is None
    with pytest.raises(ParameterError, match=r"run option: run_pipeline\(\.\.\., snapshot=NAME\)"):
        sdk.run_pipeline("g", params={"start": 2, "snapshot": "gold"}, track=False)  # before any kernel
    assert not (project.root / "runs").exists()
    # a stage may still declare a parameter of that name: then it is that stage's
    assert sdk.registry.flow("f").resolve({"snapshot": "gold"})["s"]["snapshot"] == "gold"
