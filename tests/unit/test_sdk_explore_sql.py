"""QuantSDK.explore and QuantSDK.sql directly (the magics call them; tests/integration/test_magics.py
drives them through a kernel): a stage's contract in this process, writes to the sandbox, SQL over
the tables a query names with $variables bound, and nothing beyond those tables."""

from __future__ import annotations

import pandas as pd
import pytest

import qsdk
from qsdk.errors import ContractViolation, ParameterError, SqlAccessDenied
from qsdk.lakehouse import stagecontext
from qsdk.sdk import sql_mentions, sql_variables

PARAMS = 'start: "date" = "2020-01-01"\nwindow: int = 5\n'
PRICES = pd.DataFrame({"date": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]).date,
                       "symbol": ["A", "A", "B"], "close": [1.0, 2.0, 4.0]})


@pytest.fixture
def sdk(project, monkeypatch):
    monkeypatch.setenv("QSDK_USER", "tester")
    monkeypatch.delenv(stagecontext.ENV_CONTEXT, raising=False)
    (project.table("bronze.prices", {"date": "date", "symbol": "string", "close": "float64"})
     .table("bronze.other", {"k": "int64"})
     .table("silver.out", {"symbol": "string", "n": "int64"})
     .stage("summarise", PARAMS, "pass", inputs=["bronze.prices"], outputs=["silver.out"]))
    sdk = project.sdk()
    sdk.lakehouse.write("bronze.prices", PRICES, mode="overwrite")
    sdk.lakehouse.write("bronze.other", pd.DataFrame({"k": [1]}), mode="overwrite")
    yield sdk
    stagecontext.activate(None)


def test_explore_validates_parameters_and_puts_the_stage_contract_in_force(sdk):
    with pytest.raises(ParameterError, match="window"):
        sdk.explore("summarise", {"window": "ten"})
    assert stagecontext.current() is None  # nothing activated by a refused call
    found = sdk.explore("summarise", {"window": "10"})
    assert found.parameters == {"start": "2020-01-01", "window": 10}
    ctx = stagecontext.current()
    assert ctx is found.context and ctx.stage == "summarise" and ctx.extra["interactive"]
    assert "bronze.prices" in found.describe() and str(found.sandbox) in found.describe()
    assert found.sandbox == sdk.config.lakehouse_root.resolve() / "_sandbox" / "tester"
    assert qsdk.DataLoader().read("bronze.prices").shape == (3, 3)
    with pytest.raises(ContractViolation, match="undeclared table 'bronze.other'"):
        qsdk.DataLoader().read("bronze.other")
    receipt = qsdk.write_table("silver.out", pd.DataFrame({"symbol": ["A"], "n": [2]}))
    assert receipt.sandbox == str(found.sandbox) and not sdk.lakehouse.exists("silver.out")  # not production
    assert sdk.explore("summarise").context.read_roots == {"silver.out": str(found.sandbox)}  # its own writes
    assert sdk.unexplore() == "summarise" and stagecontext.current() is None


def test_sql_binds_variables_reads_what_the_query_names_and_nothing_else(sdk):
    frame = sdk.sql("SELECT symbol, sum(close) AS total FROM bronze_prices WHERE date >= $start "
                    "GROUP BY symbol ORDER BY symbol", {"start": "2020-01-02", "unused": object()})
    assert frame.to_dict("records") == [{"symbol": "A", "total": 2.0}, {"symbol": "B", "total": 4.0}]
    assert sdk.sql('SELECT count(*) AS n FROM bronze.prices JOIN "bronze.other" ON true')["n"].tolist() == [3]
    with pytest.raises(ParameterError, match=r"\$since"):
        sdk.sql("SELECT * FROM bronze_prices WHERE date >= $since", {})
    with pytest.raises(SqlAccessDenied):
        sdk.sql(f"SELECT * FROM read_parquet('{sdk.config.lakehouse_root}/bronze/prices/*.parquet')")
    sdk.explore("summarise")  # in a stage, SQL goes through the stage's contract too
    with pytest.raises(ContractViolation, match="bronze.other"):
        sdk.sql("SELECT * FROM bronze_other")


def test_sql_finds_table_names_and_variables_by_their_written_forms():
    assert sql_variables("WHERE a >= $start AND b = $x1 AND c = '$$' AND $$d") == {"start", "x1"}
    for query in ("FROM bronze_prices", "FROM bronze . prices", 'FROM "bronze.prices"', "from BRONZE_PRICES"):
        assert sql_mentions(query, "bronze.prices"), query
    for query in ("FROM bronze_prices_raw", "FROM xbronze_prices", 'FROM "bronze_prices"x'):
        assert not sql_mentions(query, "bronze.prices"), query
