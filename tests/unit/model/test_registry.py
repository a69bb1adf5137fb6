from pathlib import Path

import pytest

from qsdk.errors import FlowCycleError, ParameterError, RegistryError, UnknownNameError

COLS = {"k": "int64", "v": "float64"}


def test_dag_follows_declared_tables(project):
    (project.table("bronze.a", COLS).table("silver.b", COLS).table("gold.c", COLS)
     .stage("third", "x: int = 1", inputs=["silver.b", "bronze.a"], outputs=["gold.c"])
     .stage("first", "x: int = 1", outputs=["bronze.a"])
     .stage("second", "x: int = 1", inputs=["bronze.a"], outputs=["silver.b"])
     .flow("f", ["third", "first", "second"]))
    flow = project.sdk().registry.flow("f")
    assert flow.order() == ["first", "second", "third"]
    assert flow.dependencies()["third"] == {"first", "second"}
    assert [s.name for s in flow.select(from_=["second"]).stages] == ["third", "second"]
    assert [s.name for s in flow.select(only=["first"]).stages] == ["first"]


def test_cycle_is_an_error_naming_the_loop(project):
    (project.table("bronze.a", COLS).table("silver.b", COLS)
     .stage("one", "x = 1", inputs=["silver.b"], outputs=["bronze.a"])
     .stage("two", "x = 1", inputs=["bronze.a"], outputs=["silver.b"])
     .flow("f", ["one", "two"]))
    with pytest.raises(FlowCycleError) as info:
        project.sdk().registry.flow("f")
    assert set(info.value.cycle) >= {"one", "two"}
    assert "cycle" in str(info.value)


def test_two_writers_of_one_table(project):
    (project.table("bronze.a", COLS)
     .stage("one", "x = 1", outputs=["bronze.a"]).stage("two", "x = 1", outputs=["bronze.a"]))
    registry = project.sdk().registry
    for name in ("one", "two"):  # both are broken: which one is right is not the registry's to guess
        with pytest.raises(RegistryError, match="written by two stages"):
            registry.stage(name)


def test_missing_notebook(project):
    project.table("bronze.a", COLS).save()
    project.doc["stages"]["ghost"] = {"notebook": "notebooks/nope.ipynb", "outputs": ["bronze.a"]}
    with pytest.raises(RegistryError, match="nope.ipynb does not exist"):
        project.sdk().registry.stage("ghost")


def test_undeclared_table_and_bad_types(project):
    project.stage("s", "x = 1", outputs=["silver.nope"])
    with pytest.raises(RegistryError, match="'silver.nope' is not declared"):
        project.sdk().registry.stage("s")
    project.doc["stages"].clear()
    project.table("silver.t", {"a": "decimal"})
    with pytest.raises(RegistryError, match="unknown type 'decimal'"):
        project.sdk().registry.table("silver.t")


@pytest.mark.parametrize("name", ["../etc", "silver/prices", "/abs.path", "Silver.Prices", "a.b.c", "a..b"])
def test_table_names_with_path_tricks_are_refused(project, name):
    project.table(name, COLS)
    with pytest.raises(RegistryError, match="invalid table name"):
        project.sdk().registry.table(name)


def test_stage_defaults_are_validated_at_load(project):
    project.table("bronze.a", COLS).stage("s", "n: int = 1", outputs=["bronze.a"], parameters={"n": "many"})
    with pytest.raises(RegistryError, match="parameter 'n': expected int"):
        project.sdk().registry.stage("s")


def test_flow_parameters_route_to_stages_and_reject_unknown(project):
    (project.table("bronze.a", COLS).table("silver.b", COLS)
     .stage("one", 'start: "date" = "2020-01-01"\nend: "date" = "2020-12-31"', outputs=["bronze.a"],
            partition={"by": "month"})
     .stage("two", "n: int = 1", inputs=["bronze.a"], outputs=["silver.b"])
     .flow("f", ["one", "two"]))
    flow = project.sdk().registry.flow("f")
    resolved = flow.resolve({"start": "2020-03-15", "end": "2020-05-02", "two.n": "5"})
    assert resolved == {"one": {"start": "2020-03-15", "end": "2020-05-02"}, "two": {"n": 5}}
    parts = flow.stage("one").partitions(resolved["one"])
    assert [k for k, _ in parts] == ["2020-03-15_2020-03-31", "2020-04-01_2020-04-30", "2020-05-01_2020-05-02"]
    with pytest.raises(ParameterError, match="no stage declares parameter 'stat'; did you mean 'start'"):
        flow.resolve({"stat": "x"})
    with pytest.raises(ParameterError, match="is after"):
        flow.resolve({"start": "2021-01-01", "end": "2020-01-01"})
    with pytest.raises(UnknownNameError, match="has no stage 'three'"):
        flow.resolve({"three.n": 1})


def test_unknown_flow_lists_known(project):
    project.table("bronze.a", COLS).stage("s", "x = 1", outputs=["bronze.a"]).flow("real", ["s"])
    with pytest.raises(UnknownNameError, match="known flows: real"):
        project.sdk().registry.flow("fake")


def test_repository_registry_loads():
    from qsdk.config import Config
    from qsdk.model.registry import Registry
    from tests.conftest import REPO

    reg = Registry.load(Config.load(REPO))
    assert "backfill" in reg.flows
    order = reg.flow("backfill").order()
    assert order.index("ingest_prices") < order.index("clean_prices")


def test_preload_defaults_to_the_notebooks_leading_imports_and_can_be_set_or_turned_off(project):
    cells = ("import pandas as pd\nfrom qsdk.quant import features as F\nimport qsdk", "x = 1\nimport scipy")
    (project.table("bronze.a", COLS).table("bronze.b", COLS).table("bronze.c", COLS)
     .stage("auto", "n: int = 1", *cells, outputs=["bronze.a"])
     .stage("off", "n: int = 1", *cells, outputs=["bronze.b"], preload=False)
     .stage("listed", "n: int = 1", *cells, outputs=["bronze.c"], preload=["numpy", "qsdk.quant.alpha"]))
    stages = project.sdk().registry.stages
    assert stages["auto"].preload == ("pandas", "qsdk.quant", "qsdk.quant.features", "qsdk",
                                      "qsdk.lakehouse.loader")  # scipy follows code: not preloaded
    assert stages["off"].preload == ()
    assert stages["listed"].preload == ("numpy", "qsdk.quant.alpha")


def test_preload_leaves_out_modules_beside_the_notebook(project):
    (project.root / "notebooks").mkdir(parents=True, exist_ok=True)
    (project.root / "notebooks" / "helpers.py").write_text("X = 1\n")
    (project.root / "notebooks" / "lib").mkdir()
    project.table("bronze.a", COLS).stage("s", "n: int = 1", "import helpers, lib.util, pandas", outputs=["bronze.a"])
    assert project.sdk().registry.stages["s"].preload == ("pandas",)


@pytest.mark.parametrize("value", ["yes", ["os; rm -rf /"], [1]])
def test_preload_must_be_auto_false_or_module_names(project, value):
    project.table("bronze.a", COLS).stage("s", "n: int = 1", outputs=["bronze.a"], preload=value)
    with pytest.raises(RegistryError, match="preload must be 'auto', false or a list of module names"):
        project.sdk().registry.stage("s")


def test_partitions_of_several_years_are_aligned_blocks(project):
    (project.table("bronze.a", COLS)
     .stage("s", 'start: "date" = "2020-01-01"\nend: "date" = "2020-12-31"', outputs=["bronze.a"],
            partition={"by": "year", "every": 5}))
    stage = project.sdk().registry.stages["s"]
    parts = stage.partitions(stage.resolve({"start": "2003-06-01", "end": "2011-03-31"}))
    assert [k for k, _ in parts] == ["2003-06-01_2004-12-31", "2005-01-01_2009-12-31", "2010-01-01_2011-03-31"]
    assert parts[1][1] == {"start": "2005-01-01", "end": "2009-12-31"}


def test_quarterly_partitions_and_a_bad_every_is_refused(project):
    from qsdk.model.stage import PartitionSpec

    assert PartitionSpec("month", every=3).split("2020-02-10", "2020-07-15") == [
        ("2020-02-10", "2020-03-31"), ("2020-04-01", "2020-06-30"), ("2020-07-01", "2020-07-15")]
    project.table("bronze.a", COLS).stage("s", 'start: "date" = "2020-01-01"\nend: "date" = "2020-12-31"',
                                          outputs=["bronze.a"], partition={"by": "year", "every": 0})
    with pytest.raises(RegistryError, match="partition.every must be a whole number of years >= 1, got 0"):
        project.sdk().registry.stage("s")


def broken_project(project):
    """One valid flow beside a broken stage of each kind, each in a flow of its own."""
    (project.table("bronze.a", COLS).table("bronze.b", COLS).table("bronze.c", COLS).table("bronze.d", COLS)
     .table("bronze.e", COLS)
     .stage("good", "x: int = 1", outputs=["bronze.a"])
     .stage("computed", 'import os\nx: int = 1\nout_dir = os.path.join("a", "b")\ny = x * 2', outputs=["bronze.e"])
     .stage("notag", "x: int = 1", outputs=["bronze.b"])
     .stage("badentry", "x: int = 1", outputs=["bronze.c"], colour="red")
     .flow("ok", ["good"]).flow("comp", ["computed"]).flow("f_notag", ["notag", "good"])
     .flow("f_bad", ["badentry"]).flow("f_ghost", ["ghost"]).save())
    project.doc["stages"]["ghost"] = {"notebook": "notebooks/nope.ipynb", "outputs": ["bronze.d"]}
    nb = project.root / "notebooks" / "notag.ipynb"
    nb.write_text(nb.read_text().replace('"parameters"', '"not-parameters"'))
    (project.root / "pipelines" / "zz_extra.yaml").write_text("stages: [unclosed\n")
    return project


def test_a_broken_entry_breaks_only_what_needs_it(project):
    registry = broken_project(project).sdk().registry
    assert sorted(registry.flows) == ["comp", "ok"]
    assert registry.flow("ok").order() == ["good"]
    assert registry.flow("comp").resolve({}) == {"computed": {"x": 1}}  # computed defaults: not broken
    problems = {(p.kind, p.name): p.message for p in registry.problems}
    assert "no parameters cell" in problems[("stage", "notag")]
    assert "unknown key(s) ['colour']" in problems[("stage", "badentry")]
    assert "nope.ipynb does not exist" in problems[("stage", "ghost")]
    assert "invalid YAML" in problems[("file", "zz_extra.yaml")]
    for flow, stage in (("f_notag", "notag"), ("f_bad", "badentry"), ("f_ghost", "ghost")):
        with pytest.raises(RegistryError, match=f"flow '{flow}' needs stage '{stage}', which is broken"):
            registry.flow(flow)
    assert registry.problem("flow", "f_notag").stages == ("notag", "good")
    assert registry.flow_names() == ["ok", "comp", "f_notag", "f_bad", "f_ghost"]


def test_a_name_declared_in_two_files_is_broken_naming_both(project):
    project.table("bronze.a", COLS).stage("s", "x: int = 1", outputs=["bronze.a"]).flow("f", ["s"]).save()
    (project.root / "pipelines" / "other.yaml").write_text("flows:\n  f:\n    stages: [s]\n")
    registry = project.sdk().registry
    with pytest.raises(RegistryError, match="flow 'f' is declared twice: in other.yaml and registry.yaml"):
        registry.flow("f")
    assert registry.stage("s").name == "s"


def test_flow_parameters_are_one_list_every_front_end_shows():
    """Flow.parameters(): the launcher's fields, %qsdk flows, `qsdk show` and dvc sync's
    params.yaml keys all come from it."""
    from qsdk.sdk import QuantSDK

    registry = QuantSDK(Path(__file__).resolve().parents[3]).registry
    daily = registry.flow("daily")
    params = {p.name: p for p in daily.parameters()}
    assert list(params)[0] == "date"  # the binding first, replacing what it sets
    date = params["date"]
    assert (date.kind, date.required, date.sets) == ("date", True, ("start", "end"))
    assert "start" not in params and "end" not in params
    source = params["source"]  # declared by several stages: one entry, all of them listed
    assert source.choices == ("bokeh", "synthetic") and len(source.stages) >= 1
    assert set(daily.parameter_names()) - {"start", "end"} == set(params) - {"date"}
    for p in daily.parameters():
        if p.default_from == "flow":
            assert p.default == daily.defaults[p.name]
        assert p.to_dict()["name"] == p.name
    backfill = {p.name: p for p in registry.flow("backfill").parameters()}
    assert backfill["start"].default_from in ("flow", "stage") and not backfill["start"].required
    assert [p.name for p in registry.flow("backfill").parameters()] == [
        p.name for p in registry.flow("backfill").parameters()]  # a stable order (run order)
