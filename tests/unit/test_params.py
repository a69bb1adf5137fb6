import pytest

from qsdk import params as P
from qsdk.errors import ParameterError, RegistryError

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
    with pytest.raises(RegistryError, match="must be a literal"):
        P.parse_parameters_source("x = compute()")
    with pytest.raises(RegistryError, match="unsupported annotation"):
        P.parse_parameters_source("x: dict = {}")


def test_default_must_match_annotation():
    with pytest.raises(ParameterError, match="expected int"):
        P.parse_parameters_source('n: int = "three"')
