"""The contract and the Delta layer, on real Delta tables (no kernels)."""

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from qsdk.errors import ContractViolation, TableNameError
from qsdk.lakehouse import Lakehouse, TableSpec
from qsdk.lakehouse.contract import conform

SPEC = TableSpec("silver.t", {"date": "date", "symbol": "string", "x": "float64", "n": "int64"},
                 primary_key=("symbol", "date"))


@pytest.fixture
def lake(tmp_path):
    return Lakehouse(tmp_path / "lake", {SPEC.name: SPEC})


def frame(**over):
    base = {"date": pd.to_datetime(["2020-01-01", "2020-01-02"]), "symbol": ["A", "B"], "x": [1.0, 2.0], "n": [1, 2]}
    return pd.DataFrame({**base, **over})


def test_append_creates_table_readable_by_deltalake(lake, tmp_path):
    assert lake.write("silver.t", frame(), mode="append") == 0
    dt = DeltaTable(str(tmp_path / "lake" / "silver" / "t"))
    assert dt.version() == 0
    assert sorted(dt.to_pandas()["symbol"]) == ["A", "B"]
    assert lake.info("silver.t").rows == 2


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (frame(n=[2.7, 1.0]), "column 'n' has type double, the contract says int64"),
        (frame(x=["7", "8"]), "column 'x' has type large_string, the contract says float64"),
        (frame().assign(extra=1), "columns not in the contract ['extra']"),
        (frame().drop(columns="x"), "missing columns ['x']"),
        (frame(symbol=["A", "A"], date=pd.to_datetime(["2020-01-01"] * 2)), "duplicate primary key"),
        (frame(symbol=["A", None]), "primary-key column 'symbol' has 1 null"),
        (frame(date=pd.to_datetime(["2020-01-01 10:30", "2020-01-02 00:00"])), "column 'date' has type timestamp"),
    ],
)
def test_contract_violations_leave_table_untouched(lake, data, needle):
    lake.write("silver.t", frame(), mode="append")
    before = lake.read("silver.t")
    with pytest.raises(ContractViolation) as info:
        lake.write("silver.t", data, mode="merge")
    assert needle in str(info.value)
    assert lake.version("silver.t") == 0
    assert lake.read("silver.t").equals(before)


@pytest.mark.parametrize(("symbols", "days", "unique"), [
    (["A", "A", "B", "B"], [1, 2, 1, 2], True),  # sorted by the key: the one-pass check decides
    (["A", "B", "A", "B"], [1, 1, 2, 2], True),  # sorted by the key columns reversed
    (["B", "A", "B", "A"], [2, 1, 1, 2], True),  # no order: the hash check decides
    (["A", "A", "B", "B"], [1, 2, 2, 2], False),  # sorted, a repeat next to its twin
    (["A", "B", "A", "B"], [1, 1, 1, 2], False),  # sorted by the reversed key, a repeat
    (["B", "A", "B", "A"], [2, 1, 1, 1], False),  # no order, a repeat far from its twin
])
def test_primary_key_uniqueness_whatever_the_row_order(symbols, days, unique):
    data = pa.table({"date": pa.array([pd.Timestamp(2020, 1, d).date() for d in days], pa.date32()),
                     "symbol": symbols, "x": [1.0] * 4, "n": [1] * 4})
    if unique:
        assert conform(data, SPEC).num_rows == 4
    else:
        with pytest.raises(ContractViolation, match="1 duplicate primary key"):
            conform(data, SPEC)


def test_rows_conformed_once_are_not_key_checked_again_but_their_columns_are():
    """A staged write's rows passed ``conform`` in the kernel (duplicates fail there:
    tests/integration/test_stage_contract.py); the commit checks their columns again, not the key."""
    twice = pa.table({"date": pa.array([pd.Timestamp(2020, 1, 1).date()] * 2, pa.date32()),
                      "symbol": ["A", "A"], "x": [1.0, 2.0], "n": [1, 2]})
    with pytest.raises(ContractViolation, match="1 duplicate primary key"):
        conform(twice, SPEC)
    assert conform(twice, SPEC, key_checked=True).num_rows == 2  # not hashed a second time
    with pytest.raises(ContractViolation, match="column 'n' has type string"):
        conform(twice.set_column(3, "n", pa.array(["1", "2"])), SPEC, key_checked=True)


def test_primary_key_of_rows_in_key_order_is_checked_without_hashing(monkeypatch):
    """Rows in strict key order (built by a sort, a range, a date loop) cannot repeat a key: one
    vectorised comparison of neighbours decides, and the hash aggregation (about a second per
    million rows) runs only for rows out of order, where it finds the duplicates."""
    import numpy as np

    from qsdk.lakehouse import contract

    hashed: list[int] = []
    real = contract._duplicate_keys
    monkeypatch.setattr(contract, "_duplicate_keys", lambda t, k: hashed.append(t.num_rows) or real(t, k))
    spec = TableSpec("silver.big", {"k": "int64", "v": "float64"}, primary_key=("k",))
    ordered = pa.table({"k": np.arange(2_000_000, dtype=np.int64), "v": np.zeros(2_000_000)})
    conform(ordered, spec)
    assert hashed == []
    dup = pa.table({"k": np.append(ordered.column("k").to_numpy(), 0), "v": np.zeros(2_000_001)})
    with pytest.raises(ContractViolation, match=r"1 duplicate primary key\(s\) \['k'\], for example \{'k': 0\}"):
        conform(dup, spec)
    assert hashed == [2_000_001]
    shuffled = ordered.take(np.random.default_rng(0).permutation(2_000_000))
    conform(shuffled, spec)  # out of order, no duplicate: hashed, accepted
    assert hashed == [2_000_001, 2_000_000]


def test_lossless_representations_are_accepted(lake):
    data = pa.table({"date": pa.array([pd.Timestamp("2020-01-01")], pa.timestamp("ns")),
                     "symbol": pa.array(["A"], pa.large_string()),
                     "x": pa.array([1.5], pa.float32()), "n": pa.array([3], pa.int32())})
    lake.write("silver.t", data, mode="append")
    got = lake.read("silver.t").to_pylist()[0]
    assert got["n"] == 3 and got["x"] == 1.5 and str(got["date"]) == "2020-01-01"


def test_integers_widen_into_a_float_column_only_when_exact(lake):
    lake.write("silver.t", frame(x=[3, -(2**53)]), mode="append")  # int64 data, float64 column
    assert lake.read("silver.t").column("x").to_pylist() == [3.0, -(2.0**53)]
    with pytest.raises(ContractViolation, match="'x' holds integers that float64 cannot represent exactly "
                                                "\\(for example 9007199254740993\\)"):
        lake.write("silver.t", frame(x=[1, 2**53 + 1]), mode="merge")
    with pytest.raises(ContractViolation, match="column 'n' has type double, the contract says int64"):
        lake.write("silver.t", frame(n=[1.0, 2.0]), mode="merge")  # floats into an int column: refused
    assert lake.version("silver.t") == 0


def test_append_of_existing_keys_is_refused_merge_upserts(lake):
    lake.write("silver.t", frame(), mode="append")
    with pytest.raises(ContractViolation, match="would duplicate 2 existing primary key"):
        lake.write("silver.t", frame(), mode="append")
    v = lake.write("silver.t", frame(x=[10.0, 20.0]), mode="merge")
    assert v == 1
    assert sorted(lake.read("silver.t").column("x").to_pylist()) == [10.0, 20.0]
    assert lake.info("silver.t").rows == 2


def test_partition_overwrite_replaces_only_its_slice(lake):
    lake.write("silver.t", frame(), mode="append")
    lake.write("silver.t", frame().iloc[:1].assign(x=9.0), mode="overwrite", predicate="date = '2020-01-01'")
    rows = {r["symbol"]: r["x"] for r in lake.read("silver.t").to_pylist()}
    assert rows == {"A": 9.0, "B": 2.0}
    with pytest.raises(ContractViolation, match="fall outside the predicate"):
        lake.write("silver.t", frame(), mode="overwrite", predicate="date = '2020-01-01'")
    assert lake.version("silver.t") == 1


def test_application_transaction_makes_a_retried_commit_a_no_op(lake):
    v1 = lake.write("silver.t", frame(), mode="merge", app_id="run1:stage:p", app_version=1)
    v2 = lake.write("silver.t", frame(x=[5.0, 5.0]), mode="merge", app_id="run1:stage:p", app_version=1)
    assert v1 == v2 == 0
    assert lake.read("silver.t").column("x").to_pylist() == [1.0, 2.0]


def test_commit_metadata_and_time_travel(lake):
    lake.write("silver.t", frame(), mode="append", metadata={"qsdk.stage": "s1", "qsdk.run_id": "r1"})
    lake.write("silver.t", frame(x=[3.0, 4.0]), mode="merge", metadata={"qsdk.stage": "s2"})
    assert lake.commit_metadata("silver.t", 0)["qsdk.stage"] == "s1"
    assert lake.commit_metadata("silver.t", 1)["qsdk.stage"] == "s2"
    assert lake.read("silver.t", version=0).column("x").to_pylist() == [1.0, 2.0]


def test_filters_and_columns_are_pushed_down(lake):
    lake.write("silver.t", frame(), mode="append")
    got = lake.read("silver.t", columns=["symbol"], filters=[("date", ">=", "2020-01-02"), ("symbol", "in", ["B"])])
    assert got.column_names == ["symbol"] and got.column("symbol").to_pylist() == ["B"]
    with pytest.raises(ContractViolation, match="unknown column"):
        lake.read("silver.t", filters=[("nope", "=", 1)])


@pytest.mark.parametrize("name", ["../x", "silver/../../etc", "/etc.passwd", "silver.t;rm", "", None])
def test_path_tricks_never_reach_the_filesystem(lake, name):
    with pytest.raises(TableNameError):
        lake.path(name)


def test_write_to_undeclared_table(lake):
    with pytest.raises(ContractViolation, match="has no contract"):
        lake.write("silver.other", frame(), mode="append")
