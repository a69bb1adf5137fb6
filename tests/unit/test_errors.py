"""qsdk's errors: one module, declared fields, and pickling that keeps them (a stage failure on a
Ray worker reaches the driver whole)."""

from __future__ import annotations

import ast
import inspect
import pickle
from pathlib import Path

import pytest
from ray import cloudpickle

from qsdk import errors
from qsdk.errors import FlowCycleError, QsdkError, SnapshotConflict, SnapshotCorrupted, StageFailed

QSDK = Path(errors.__file__).parent

EVERY_FIELD = dict(
    stage="features", partition="2021-01", notebook="/runs/r1/features/2021-01.ipynb", reason="check_failed",
    cell_index=3, exec_count=4, ename="CheckFailed", evalue="2 rows are negative", table="silver.prices",
    check="positive_prices", failing_rows=2, examples='[{"px": -1}]', tables=["bronze.a", "bronze.b"],
    commits={"silver.prices": [7, 8]},
)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "ray-cloudpickle"])
def test_stage_failed_pickles_round_trip_with_every_field(dumps):
    err = StageFailed("a data check failed", **EVERY_FIELD)
    back = pickle.loads(dumps(err))
    assert type(back) is StageFailed and str(back) == str(err) and back.detail == "a data check failed"
    assert back.fields == err.fields == EVERY_FIELD
    for name, value in EVERY_FIELD.items():
        assert getattr(back, name) == value, name


def test_stage_failed_builds_its_message_from_its_fields():
    err = StageFailed("cell 2 raised KeyError: 'px'", stage="clean", partition="2021-01", notebook="/runs/x.ipynb")
    assert str(err) == "stage clean[2021-01] failed: cell 2 raised KeyError: 'px' (executed notebook: /runs/x.ipynb)"
    assert err.reason == "error" and err.cell_index is None and err.ename is None
    assert err.fields == {"stage": "clean", "partition": "2021-01", "notebook": "/runs/x.ipynb", "reason": "error",
                          "cell_index": None, "ename": None, "evalue": None}  # the optional ones only when set
    assert str(StageFailed("no kernel", stage="load")) == "stage load failed: no kernel"
    with pytest.raises(TypeError):  # a field that is not declared is refused, not set on the fly
        StageFailed("x", stage="s", colour="red")  # type: ignore[call-arg]


@pytest.mark.parametrize("err", [
    QsdkError("plain", table="a.b"),
    FlowCycleError("cycle", flow="f", cycle=["a", "b"]),
    SnapshotConflict("changed", snapshot="gold", tables=["a.b"]),
    SnapshotCorrupted("bad", snapshot="gold", problems=[{"file": "x"}]),
    errors.CheckFailed("failed", table="a.b", check="c", failing_rows=1, examples="[]", failed=["a.b:c"]),
], ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_fields(err):
    back = pickle.loads(cloudpickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and back.fields == err.fields
    for name in ("cycle", "tables", "problems"):
        assert getattr(back, name, None) == getattr(err, name, None)


def test_every_qsdk_error_is_declared_in_errors_py_and_none_sets_fields_dynamically():
    roots = {name for name, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, Exception)}
    roots |= {"Exception", "ValueError", "RuntimeError", "KeyError", "TypeError"}
    elsewhere = []
    for path in sorted(QSDK.rglob("*.py")):
        if path.name == "errors.py" and path.parent == QSDK:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                         for b in node.bases}
                if bases & roots:
                    elsewhere.append(f"{path.relative_to(QSDK.parent)}:{node.name}")
    assert elsewhere == [], "error classes outside qsdk/errors.py"
    assert "setattr" not in (QSDK / "errors.py").read_text()
