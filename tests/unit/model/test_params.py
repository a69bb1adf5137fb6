import pytest

from qsdk.errors import ParameterError, RegistryError
from qsdk.model import params as P

CELL = '''
from typing import Literal
start: "date" = "2010-01-01"  # first day
end: "date"
n: int = 3
ratio = 0.5
flag: bool = False
universe: list[str] = ["AAPL", "MSFT"]  # tickers
mode: Literal["month", "year"] = "year"
note: str | None = None
'''


@pytest.fixture
def specs():
    return P.parse_parameters_source(CELL)


def test_parses_types_defaults_help_and_required(specs):
    assert list(specs) == ["start", "end", "n", "ratio", "flag", "universe", "mode", "note"]
    assert specs["start"].type.kind == "date" and specs["start"].default == "2010-01-01"
    assert specs["start"].help == "first day"
    assert specs["end"].required and not specs["n"].required
    assert specs["ratio"].type.kind == "float"
    assert specs["universe"].type.kind == "list" and specs["universe"].type.item.kind == "str"
    assert specs["mode"].type.choices == ("month", "year")
    assert specs["note"].type.optional and specs["note"].default is None


def test_validate_coerces_strings_from_the_command_line(specs):
    out = P.validate(specs, {"end": "2011-02-03", "n": "7", "flag": "yes", "universe": "IBM, GOOG",
                             "ratio": "1e-3", "mode": "month"}, stage="s")
    assert out == {"start": "2010-01-01", "end": "2011-02-03", "n": 7, "ratio": 0.001, "flag": True,
                   "universe": ["IBM", "GOOG"], "mode": "month", "note": None}


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"end": "2011-13-01"}, "parameter 'end': expected date (YYYY-MM-DD)"),
        ({"end": "2011-01-01", "n": "three"}, "parameter 'n': expected int"),
        ({"end": "2011-01-01", "n": 2.5}, "parameter 'n': expected int"),
        ({"end": "2011-01-01", "flag": "maybe"}, "parameter 'flag': expected bool"),
        ({"end": "2011-01-01", "mode": "week"}, "expected one of 'month', 'year'"),
        ({"end": "2011-01-01", "strat": "2010-01-01"}, "did you mean 'start'"),
        ({}, "parameter 'end' is required"),
    ],
)
def test_bad_values_name_stage_parameter_and_expectation(specs, values, needle):
    with pytest.raises(ParameterError) as info:
        P.validate(specs, values, stage="ingest")
    assert needle in str(info.value)
    assert "ingest" in str(info.value)


def test_a_name_that_is_code_is_rejected_as_unknown(specs):
    with pytest.raises(ParameterError, match="has no parameter"):
        P.validate(specs, {"end": "2011-01-01", "x\nimport os": 1}, stage="s")


def test_code_like_values_stay_literal_strings():
    specs = P.parse_parameters_source('label: str = "x"')
    evil = '"); import os; os.system("touch /tmp/pwned'
    assert P.validate(specs, {"label": evil}, stage="s") == {"label": evil}


def test_parameters_cell_must_be_assignments():
    with pytest.raises(RegistryError, match="not a simple"):
        P.parse_parameters_source("x = 1\nfor i in range(3): pass")
    with pytest.raises(RegistryError, match="unsupported annotation"):
        P.parse_parameters_source("x: dict = {}")


def test_default_must_match_annotation():
    with pytest.raises(ParameterError, match="expected int"):
        P.parse_parameters_source('n: int = "three"')


COMPUTED = '''
import os
x: int = 1
out_dir = os.path.join("a", "b")  # where to write
y = x * 2
limit: int = x + 10
'''


def test_computed_defaults_are_typed_and_derived_in_the_kernel_unless_given():
    specs = P.parse_parameters_source(COMPUTED)
    assert specs["out_dir"].computed == "os.path.join('a', 'b')" and specs["out_dir"].type.kind == "str"
    assert specs["out_dir"].help == "where to write" and not specs["out_dir"].required
    assert specs["y"].type.kind == "str" and specs["y"].uses == ("x",)
    assert specs["limit"].type.kind == "int" and specs["limit"].uses == ("x",)
    assert specs["out_dir"].to_dict()["default"] is None and specs["out_dir"].to_dict()["computed"]
    # not given: left out, so papermill injects nothing and the notebook computes it
    assert P.validate(specs, {}, stage="s") == {"x": 1}
    # given: coerced to its type like any parameter
    assert P.validate(specs, {"out_dir": "c/d", "limit": "7"}, stage="s") == {"x": 1, "out_dir": "c/d", "limit": 7}
    with pytest.raises(ParameterError, match="parameter 'limit': expected int"):
        P.validate(specs, {"limit": "many"}, stage="s")


def test_a_computed_default_that_reads_a_given_parameter_must_be_given_too():
    specs = P.parse_parameters_source(COMPUTED)
    with pytest.raises(ParameterError) as info:
        P.validate(specs, {"x": "5", "limit": "3"}, stage="s")
    assert "parameter 'y' is computed in the parameters cell (`y = x * 2`) from x" in str(info.value)
    assert "-p y=..." in str(info.value)
    assert P.validate(specs, {"x": "5", "y": "10", "limit": "3"}, stage="s") == {"x": 5, "y": "10", "limit": 3}
    assert P.validate(specs, {"x": "1"}, stage="s") == {"x": 1}  # x at its default: y and limit are right
    with pytest.raises(ParameterError, match="'y' is computed"):  # set later, as a partition's dates are
        P.validate(specs, {"limit": "3"}, stage="s", overridden=("x",))


def test_none_comes_only_from_the_none_token_and_only_for_optional_types():
    specs = P.parse_parameters_source('label: str = "none"\nnote: str | None = "x"\nn: int | None = 1\nk: int = 1')
    assert specs["label"].default == "none"  # a str default of "none" is a string
    for text in ("none", "null", "NULL", "Null"):
        assert P.validate(specs, {"label": text, "note": text}, stage="s")["label"] == text
        assert P.validate(specs, {"note": text}, stage="s")["note"] == text
    assert P.validate(specs, {"label": "None"}, stage="s")["label"] == "None"  # not optional: a string
    assert P.validate(specs, {"note": "None", "n": "None"}, stage="s") | {"label": "none"} == {
        "label": "none", "note": None, "n": None, "k": 1}
    assert P.validate(specs, {"note": None}, stage="s")["note"] is None  # YAML null
    with pytest.raises(ParameterError, match="only a parameter typed `X \\| None` takes None"):
        P.validate(specs, {"k": "None"}, stage="s")
    with pytest.raises(ParameterError, match="only a parameter typed `X \\| None` takes None"):
        P.validate(specs, {"label": None}, stage="s")
    with pytest.raises(ParameterError, match="expected int or None"):
        P.validate(specs, {"n": "null"}, stage="s")
