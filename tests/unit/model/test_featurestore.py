"""Feature views: registry validation, references, and the point-in-time join through
``DataLoader.training_set`` on real Delta tables."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from qsdk.errors import ContractViolation, RegistryError, UnknownNameError
from qsdk.execution.context import new_context
from qsdk.lakehouse.loader import DataLoader
from qsdk.model.featurestore import FeatureView, format_ttl, parse_ttl, resolve

FEATURE_COLUMNS = {"date": "date", "symbol": "string", "event_time": "timestamp", "known_time": "timestamp",
                   "mom": "float64", "vol": "float64"}


def _project(project, views: dict) -> None:
    project.table("gold.feats", FEATURE_COLUMNS, primary_key=["symbol", "date", "known_time"])
    project.table("gold.other", {"date": "date", "symbol": "string", "ts": "timestamp", "x": "string"})
    project.doc["features"] = views


def test_views_load_from_the_registry_with_defaults(project):
    _project(project, {"prices": {"table": "gold.feats", "ttl": "10d", "features": ["mom", "vol"],
                                  "description": "d"}})
    view = project.sdk().registry.feature_view("prices")
    assert view == FeatureView(name="prices", table="gold.feats", features=("mom", "vol"),
                               ttl=dt.timedelta(days=10), description="d")
    assert view.columns(["vol"]) == ["symbol", "event_time", "known_time", "vol"]
    assert view.to_dict()["ttl"] == "10d"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"table": "gold.nope", "features": ["mom"]}, "is not declared under tables"),
        ({"table": "gold.feats", "features": ["momentum"]}, "column 'momentum' is not in table gold.feats"),
        ({"table": "gold.feats", "features": []}, "non-empty list"),
        ({"table": "gold.feats", "features": ["mom"], "ttl": "soon"}, "is not a duration"),
        ({"table": "gold.feats", "features": ["mom"], "ttl": -5}, "must be positive"),
        ({"table": "gold.feats", "features": ["mom"], "colour": "red"}, "unknown key"),
        ({"table": "gold.other", "features": ["x"], "event_time": "ts", "known_time": "ts"}, "'x' of gold.other is string"),
        ({"table": "gold.other", "features": ["ts"], "event_time": "date", "known_time": "ts"},
         "'date' of gold.other is date; it must be timestamp"),
        ({"table": "gold.feats", "features": ["mom", "mom"]}, "twice"),
    ],
)
def test_invalid_views_are_rejected_on_load(project, spec, match):
    _project(project, {"bad": spec})
    with pytest.raises(RegistryError, match=match):
        project.sdk().registry.feature_view("bad")


def test_ttl_parsing_and_formatting():
    assert parse_ttl("36h") == dt.timedelta(hours=36)
    assert parse_ttl("2 weeks") == dt.timedelta(days=14)
    assert parse_ttl(90) == dt.timedelta(seconds=90)
    assert parse_ttl(None) is None
    assert [format_ttl(parse_ttl(v)) for v in ("10d", "36h", "90min", "2w")] == ["10d", "36h", "90m", "2w"]


def test_references_resolve_to_views_and_columns():
    views = {"a": FeatureView("a", "gold.a", ("x", "y")), "b": FeatureView("b", "gold.b", ("y", "z"))}
    assert [(v.name, cols) for v, cols in resolve(["a", "b:z"], views)] == [("a", ["x", "y"]), ("b", ["z"])]
    assert [(v.name, cols) for v, cols in resolve("b", views)] == [("b", ["y", "z"])]
    with pytest.raises(UnknownNameError, match="known views: a, b"):
        resolve(["c"], views)
    with pytest.raises(UnknownNameError, match="has no feature 'q'; its features: x, y"):
        resolve(["a:q"], views)
    with pytest.raises(UnknownNameError, match="'y' is in both 'a' and 'b'"):
        resolve(["a", "b"], views)


# ------------------------------------------------------------------ training_set on real Delta

CLOSE = pd.Timestamp("2021-03-01 21:00", tz="UTC")
VIEW = {"prices": {"table": "gold.feats", "ttl": "3d", "features": ["mom", "vol"]}}


def _write_features(sdk) -> None:
    """AAPL: value as of day 0 published at its close, restated the next day; a value as of day 1
    published only two days later (a late vendor). MSFT: one stale value."""
    rows = [
        ("AAPL", CLOSE, CLOSE, 1.0, 10.0),
        ("AAPL", CLOSE, CLOSE + pd.Timedelta(days=1), 1.5, 15.0),  # restatement of day 0
        ("AAPL", CLOSE + pd.Timedelta(days=1), CLOSE + pd.Timedelta(days=3), 2.0, 20.0),  # late
        ("MSFT", CLOSE - pd.Timedelta(days=10), CLOSE - pd.Timedelta(days=10), 9.0, 90.0),
    ]
    frame = pd.DataFrame(rows, columns=["symbol", "event_time", "known_time", "mom", "vol"])
    frame.insert(0, "date", frame["event_time"].dt.date)
    sdk.lakehouse.write("gold.feats", frame, mode="append")


def _loader(sdk, inputs=("gold.feats",)) -> DataLoader:
    ctx = new_context(sdk.registry, run_id="t", stage="alpha", lakehouse_root=sdk.config.lakehouse_root,
                      inputs=inputs, outputs=[])
    return DataLoader(context=ctx)


def test_training_set_never_returns_a_value_published_after_the_query(project, monkeypatch):
    _project(project, VIEW)
    sdk = project.sdk()
    _write_features(sdk)
    monkeypatch.setenv("QSDK_PROJECT", str(project.root))  # the loader finds the views here
    queries = pd.DataFrame({
        "symbol": ["AAPL", "AAPL", "AAPL", "AAPL", "AAPL", "MSFT", "IBM"],
        "timestamp": [CLOSE - pd.Timedelta(minutes=1), CLOSE, CLOSE + pd.Timedelta(days=1),
                      CLOSE + pd.Timedelta(days=2), CLOSE + pd.Timedelta(days=3), CLOSE, CLOSE],
        "label": range(7),
    })
    out = _loader(sdk).training_set(queries, ["prices"])
    assert list(out.columns) == ["symbol", "timestamp", "label", "mom", "vol"]
    assert list(out["label"]) == list(range(7))  # same rows, same order
    # before the first close: nothing known; at the close: the original; a day later the
    # restatement; the day-1 value only once published (day 3), never at day 2
    assert out["mom"].tolist()[1:5] == [1.0, 1.5, 1.5, 2.0]
    assert out["vol"].tolist()[1:5] == [10.0, 15.0, 15.0, 20.0]
    # MSFT's only value is 10 days old: beyond the 3-day ttl. IBM has none.
    assert out["mom"].iloc[5:].isna().all() and out["mom"].iloc[0:1].isna().all()
    only_vol = _loader(sdk).training_set(queries.iloc[:2], ["prices:vol"])
    assert "mom" not in only_vol.columns and only_vol["vol"].tolist()[1] == 10.0


def test_training_set_reads_through_the_stage_contract(project, monkeypatch):
    _project(project, VIEW)
    sdk = project.sdk()
    _write_features(sdk)
    monkeypatch.setenv("QSDK_PROJECT", str(project.root))
    queries = pd.DataFrame({"symbol": ["AAPL"], "timestamp": [CLOSE]})
    with pytest.raises(ContractViolation, match="read undeclared table 'gold.feats'"):
        _loader(sdk, inputs=("gold.other",)).training_set(queries, ["prices"])
    with pytest.raises(ContractViolation, match="lacks column"):
        _loader(sdk).training_set(queries.rename(columns={"timestamp": "ts"}), ["prices"])
    # naive query times are UTC; a view passed explicitly needs no registry
    naive = pd.DataFrame({"symbol": ["AAPL"], "when": [CLOSE.tz_localize(None)]})
    views = {"p": FeatureView("p", "gold.feats", ("mom",))}
    out = _loader(sdk).training_set(naive, ["p"], timestamp="when", views=views)
    assert out["mom"].tolist() == [1.0] and str(out["when"].dt.tz) == "UTC"


def test_training_set_joins_the_views_the_stage_context_carries_without_loading_the_registry(
        project, monkeypatch):
    from qsdk.model.registry import Registry

    _project(project, VIEW)
    sdk = project.sdk()
    _write_features(sdk)
    loader = _loader(sdk)
    assert FeatureView.from_dict(loader.context.features["prices"]) == sdk.registry.features["prices"]

    def no_registry(*args, **kwargs):
        raise AssertionError("the kernel loaded the registry")

    monkeypatch.setattr(Registry, "load", no_registry)
    queries = pd.DataFrame({"symbol": ["AAPL"], "timestamp": [CLOSE]})
    assert loader.training_set(queries, ["prices"])["mom"].tolist() == [1.0]


def test_cli_lists_feature_views(project, capsys):
    from qsdk.cli import main

    _project(project, VIEW)
    project.save()
    assert main(["--project", str(project.root), "features", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"name": "prices", "table": "gold.feats", "entity": "symbol", "event_time": "event_time",
                     "known_time": "known_time", "ttl": "3d", "features": ["mom", "vol"], "description": ""}]
    assert main(["--project", str(project.root), "features"]) == 0
    assert "gold.feats" in capsys.readouterr().out
