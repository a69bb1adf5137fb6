"""Data checks declared with a table: parsed at registry load, evaluated on Arrow data."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from qsdk.errors import CheckFailed, RegistryError
from qsdk.lakehouse import checks
from qsdk.lakehouse.contract import TableSpec
from qsdk.lakehouse.tables import Lakehouse

COLUMNS = {"date": "date", "symbol": "string", "open": "float64", "high": "float64", "low": "float64",
           "close": "float64", "volume": "int64"}
DECLARED = [
    {"column": "close", "greater_than": 0},
    {"column": "volume", "at_least": 0},
    {"column": "close", "between": [0.001, 1000], "name": "close_range"},
    {"columns": ["open", "high", "low", "close"], "not_null": True},
    {"expression": "low <= least(open, close) and high >= greatest(open, close)", "name": "ohlc_consistent"},
    {"sessions": "XNYS", "complete": True},
    {"row_count_change": {"max_drop": 0.5}},
    {"null_fraction": {"column": "open", "at_most": 0.2}, "severity": "warn"},
]


def _spec(declared=DECLARED) -> TableSpec:
    return TableSpec("silver.prices", COLUMNS, primary_key=("symbol", "date"),
                     checks=checks.parse_checks("silver.prices", COLUMNS, declared))


def _bars(days: list[dt.date], symbols=("AAA", "BBB"), override=None) -> pa.Table:
    rows = [{"date": d, "symbol": s, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100}
            for s in symbols for d in days]
    for (i, col), value in (override or {}).items():
        rows[i][col] = value
    return pa.Table.from_pylist(rows, schema=TableSpec("x.y", COLUMNS).arrow_schema())


JAN = [dt.date(2020, 1, d) for d in (2, 3, 6, 7, 8, 9, 10)]  # XNYS sessions 2020-01-02..10


def _by_name(results):
    return {r.check: r for r in results}


def test_clean_data_passes_every_check():
    spec = _spec()
    results = checks.evaluate(spec.name, spec.checks, _bars(JAN), spec.columns, replaced_rows=14)
    assert [r.check for r in results if not r.passed] == []
    assert len(results) == len(DECLARED)


def test_each_kind_of_check_names_failing_rows_and_examples():
    spec = _spec()
    bad = _bars(JAN[:3] + JAN[4:], override={(0, "close"): 0.0, (1, "volume"): -1, (2, "high"): 1.0,
                                      (3, "open"): None, (4, "open"): None})
    results = _by_name(checks.evaluate(spec.name, spec.checks, bad, spec.columns, replaced_rows=40))
    assert results["close > 0"].failing_rows == 1
    assert results["close > 0"].examples[0]["close"] == 0.0
    assert results["volume >= 0"].failing_rows == 1
    assert results["ohlc_consistent"].failing_rows == 2  # close 0 < low, and high 1.0 < close
    assert results["not_null open,high,low,close"].failing_rows == 2
    sessions = results["sessions XNYS complete"]
    assert sessions.failing_rows == 2 and sessions.examples[0]["date"] == "2020-01-07"  # one day, two symbols
    assert not results["row_count_change max_drop 0.5"].passed  # 12 rows replace 40
    assert results["null_fraction open <= 0.2"].passed  # 2 of 12 = 0.17
    with pytest.raises(CheckFailed) as err:
        checks.raise_for(list(results.values()))
    assert "silver.prices check 'close > 0' (error): 1 of 12 row(s) fail" in str(err.value)
    assert err.value.fields["table"] == "silver.prices"


def test_nan_counts_as_null_and_value_checks_skip_it():
    spec = _spec([{"column": "close", "greater_than": 0}, {"null_fraction": {"column": "close", "at_most": 0.1}}])
    results = _by_name(checks.evaluate(spec.name, spec.checks, _bars(JAN, override={(0, "close"): float("nan")}),
                                       spec.columns))
    assert results["close > 0"].passed
    assert results["null_fraction close <= 0.1"].failing_rows == 1


def test_except_ignores_exactly_the_named_rows():
    declared = [{"column": "close", "greater_than": 0, "except": "symbol = 'AAA' and date = DATE '2020-01-02'"}]
    spec = _spec(declared)
    bad = _bars(JAN, override={(0, "close"): 0.0, (1, "close"): 0.0})
    result = checks.evaluate(spec.name, spec.checks, bad, spec.columns)[0]
    assert result.failing_rows == 1 and result.examples[0]["date"] == "2020-01-03"


@pytest.mark.parametrize(("declared", "says"), [
    ([{"column": "nope", "greater_than": 0}], "unknown column(s) ['nope']"),
    ([{"column": "symbol", "greater_than": 0}], "value bounds apply to numeric columns"),
    ([{"column": "close", "between": [5, 1]}], "LOW <= HIGH"),
    ([{"column": "close", "greater_than": 0, "severity": "fatal"}], "severity 'fatal'"),
    ([{"expression": "close >", "name": "broken"}], "check 'broken': invalid SQL"),
    ([{"expression": "closing > 0", "name": "typo"}], "check 'typo': invalid SQL"),
    ([{"expression": "close > 0"}], "needs a name"),
    ([{"sessions": "NOPE", "complete": True}], "unknown exchange calendar 'NOPE'"),
    ([{"row_count_change": {"max_drop": 2}}], "max_drop in [0, 1]"),
    ([{"colum": "close", "greater_than": 0}], "unexpected key(s) ['colum']"),
    ([{"column": "close", "greater_than": 0}, {"column": "close", "greater_than": 0}], "two checks are named"),
])
def test_a_bad_check_is_a_registry_error_naming_table_and_check(declared, says):
    with pytest.raises(RegistryError) as err:
        checks.parse_checks("silver.prices", COLUMNS, declared)
    assert "silver.prices" in str(err.value) and says in str(err.value)


def test_the_expensive_validation_runs_once_per_declaration_and_never_remembers_a_failure(
        tmp_path, monkeypatch):
    """Binding SQL and loading calendars is remembered per declaration, so a registry load of an
    unchanged project imports neither DuckDB nor exchange_calendars; any change validates again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls: list[str] = []
    real = checks._validate_sql
    monkeypatch.setattr(checks, "_validate_sql", lambda t, c, ch: (calls.append(t), real(t, c, ch)))
    checks.parse_checks("silver.prices", COLUMNS, DECLARED)
    checks.parse_checks("silver.prices", COLUMNS, DECLARED)
    assert calls == ["silver.prices"]  # the second load found the marker
    assert len(list((tmp_path / "qsdk" / "validated-checks").iterdir())) == 1
    changed = [*DECLARED[:4], {"expression": "low <= high", "name": "ohlc_consistent"}]
    checks.parse_checks("silver.prices", COLUMNS, changed)
    assert calls == ["silver.prices"] * 2  # a changed expression is bound again
    broken = [{"expression": "lowest <= high", "name": "typo"}]
    for _ in range(2):  # a failure is not remembered: it fails on every load
        with pytest.raises(RegistryError, match="invalid SQL"):
            checks.parse_checks("silver.prices", COLUMNS, broken)
    assert len(list((tmp_path / "qsdk" / "validated-checks").iterdir())) == 2


def test_checks_are_part_of_the_contract_dict_and_survive_the_round_trip():
    spec = _spec()
    again = TableSpec.from_dict(spec.to_dict())
    assert [c.to_dict() for c in again.checks] == [c.to_dict() for c in spec.checks]
    plain = TableSpec("silver.prices", COLUMNS)
    assert "checks" not in plain.to_dict()  # tables without checks keep their old contract hash
    from qsdk.cache import contract_hash

    hashes = {contract_hash(s.to_dict()) for s in (spec, _spec(DECLARED[:-1]), plain)}
    assert len(hashes) == 3  # a changed check changes the contract the cache keys on


def test_row_count_change_compares_with_the_slice_the_overwrite_replaces(tmp_path):
    spec = _spec([{"row_count_change": {"max_drop": 0.5}}])
    lake = Lakehouse(tmp_path, {spec.name: spec})
    lake.write(spec.name, _bars(JAN, symbols=[f"S{i}" for i in range(4)]), mode="overwrite")
    where = "date >= '2020-01-06'"
    fine = checks.check_write(lake, spec.name, _bars(JAN[2:], symbols=["S0", "S1"]), mode="overwrite",
                              predicate=where)
    assert fine[0].passed and fine[0].table_version == 0  # 10 rows replace 20: a drop of exactly half
    bad = checks.check_write(lake, spec.name, _bars(JAN[2:], symbols=["S0"]), mode="overwrite", predicate=where)
    assert not bad[0].passed and bad[0].failing_rows == 15 and "5 row(s) replace 20" in bad[0].message


def test_injected_faults_land_where_documented_and_only_there():
    from qsdk.quant import sources
    from qsdk.quant.synthetic import NAN_BURST, inject_faults

    clean = sources.load("synthetic", start="2010-01-01", end="2010-03-31", n_symbols=6)
    bad = sources.load("synthetic", start="2010-01-01", end="2010-03-31", n_symbols=6,
                       faults=["zero_price", "negative_price", "nan_burst", "missing_session"])
    assert (bad.close == 0).sum() == 1 and (bad.close < 0).sum() == 1
    assert bad.close.isna().sum() == NAN_BURST
    assert len(clean) - len(bad) == clean.symbol.nunique() // 2  # one session, half the symbols
    assert inject_faults(clean, []).equals(clean.sort_values(["symbol", "date"]).reset_index(drop=True))
    with pytest.raises(ValueError, match="unknown fault"):
        inject_faults(clean, ["typo"])
    with pytest.raises(ValueError, match="synthetic data only"):
        sources.load("bokeh", start="2010-01-01", end="2010-03-31", faults=["zero_price"])
