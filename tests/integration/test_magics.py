"""``%load_ext qsdk`` in a real IPython kernel: stage contract, parameters, sandbox, SQL.

One kernel serves the module (kernels are slow to start); each test sets the session state it
needs (``%qsdk stage`` / ``%qsdk unstage``) instead of relying on test order.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from jupyter_client.manager import KernelManager

from qsdk.lakehouse.tables import Lakehouse
from qsdk.sdk import QuantSDK
from tests.conftest import Project

PARAMS = '''from typing import Literal

start: "date" = "2020-01-01"  # first day
end: "date" = "2020-01-31"  # last day
window: int = 5  # rolling window
method: Literal["simple", "log"] = "simple"
'''
PRICES = pd.DataFrame({
    "date": [dt.date(2020, 1, d) for d in (1, 2, 1, 2)] + [dt.date(2019, 12, 31)],
    "symbol": ["AAA", "AAA", "BBB", "BBB", "BBB"],
    "close": [10.0, 11.0, 20.0, 19.0, 18.0],
})


class Session:
    """Runs code in the kernel; collects stdout, the last result and the error, if any."""

    def __init__(self, kc: Any) -> None:
        self.kc = kc

    def run(self, code: str, *, timeout: float = 180) -> dict[str, Any]:
        out: dict[str, Any] = {"stdout": "", "result": None, "error": None}

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                out["stdout"] += content["text"]
            elif kind == "execute_result":
                out["result"] = content["data"].get("text/plain")
            elif kind == "error":
                out["error"] = (content["ename"], content["evalue"])

        self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        return out

    def ok(self, code: str) -> dict[str, Any]:
        out = self.run(code)
        assert out["error"] is None, f"{code!r} raised {out['error']}"
        return out

    def json(self, code: str) -> Any:
        """Run ``code``; its last line must print one JSON document."""
        return json.loads(self.ok(code)["stdout"].strip().splitlines()[-1])


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("magics")
    project = Project(root / "proj")
    project.table("bronze.prices", {"date": "date", "symbol": "string", "close": "float64"},
                  primary_key=["symbol", "date"])
    project.table("bronze.secret", {"id": "int64"})
    project.table("silver.returns", {"date": "date", "symbol": "string", "ret": "float64"},
                  primary_key=["symbol", "date"],
                  checks=[{"column": "ret", "between": [-0.9, 10]},
                          {"null_fraction": {"column": "ret", "at_most": 0.0}, "severity": "warn"}])
    project.stage("returns", PARAMS, "pass", inputs=["bronze.prices"], outputs=["silver.returns"],
                  partition={"by": "month"})
    project.flow("daily", ["returns"], description="returns from prices")
    sdk: QuantSDK = project.sdk()
    sdk.lakehouse.write("bronze.prices", PRICES, mode="append")
    sdk.lakehouse.write("bronze.secret", pd.DataFrame({"id": [1, 2]}), mode="append")
    return {"root": project.root, "lake": project.root / "lakehouse"}


@pytest.fixture(scope="module")
def session(env):
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(env["root"]), extra_arguments=["--IPKernelApp.log_level=ERROR"], env={
        **os.environ, "QSDK_PROJECT": str(env["root"]), "QSDK_LAKEHOUSE": str(env["lake"]),
        "QSDK_RUNS": str(env["root"] / "runs"), "QSDK_USER": "tester",
        "MLFLOW_TRACKING_URI": f"sqlite:///{env['root'] / 'mlflow.db'}",
    })
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=180)
        s = Session(kc)
        s.ok("%load_ext qsdk")
        yield s
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_flows_and_tables_list_the_registry_and_lakehouse(session: Session) -> None:
    session.ok("%qsdk unstage")
    flows = session.json("f = %qsdk flows\nprint(f.to_json(orient='records'))")
    assert flows == [{"flow": "daily", "stages": "returns", "parameters": "start, end, window, method",
                      "description": "returns from prices"}]
    tables = {t["name"]: t for t in session.json("t = %qsdk tables\nprint(t.to_json(orient='records'))")}
    assert tables["bronze.prices"]["version"] == 0 and tables["bronze.prices"]["rows"] == 5
    assert tables["silver.returns"]["version"] is None  # declared, never written


def test_read_and_sql_outside_a_stage(session: Session) -> None:
    session.ok("%qsdk unstage")
    frame = session.json("df = %qsdk read bronze.prices --columns symbol,close\n"
                         "print(df.to_json(orient='split', index=False))")
    assert frame["columns"] == ["symbol", "close"] and len(frame["data"]) == 5
    session.ok("%%qsdk sql -o agg\n"
               "SELECT symbol, count(*) AS n, sum(close) AS total FROM bronze_prices GROUP BY symbol ORDER BY symbol")
    assert session.json("print(agg.to_json(orient='records'))") == [
        {"symbol": "AAA", "n": 2, "total": 21.0}, {"symbol": "BBB", "n": 3, "total": 57.0}]
    # the three spellings of a table name, and a table the query does not name is not read
    session.ok('%%qsdk sql -o names\n'
               'SELECT (SELECT count(*) FROM "bronze.prices") AS quoted, (SELECT count(*) FROM bronze.prices) '
               'AS dotted, (SELECT count(*) FROM bronze_secret) AS flat')
    assert session.json("print(names.to_json(orient='records'))") == [{"quoted": 5, "dotted": 5, "flat": 2}]


def test_stage_puts_validated_parameters_in_the_namespace(session: Session) -> None:
    out = session.ok("%qsdk stage returns -p window=10 -p start=2020-01-02")
    assert "exploring stage 'returns'" in out["stdout"]
    values = session.json("import json; print(json.dumps(dict(start=start, end=end, window=window, method=method)))")
    assert values == {"start": "2020-01-02", "end": "2020-01-31", "window": 10, "method": "simple"}
    bad = session.run("%qsdk stage returns -p window=ten")
    assert bad["error"][0] == "ParameterError" and "'window'" in bad["error"][1]
    bad = session.run("%qsdk stage returns -p method=cubic")
    assert bad["error"][0] == "ParameterError" and "one of 'simple', 'log'" in bad["error"][1]
    bad = session.run("%qsdk stage returns -p start=2020-02-15")  # after end: the run's own check
    assert bad["error"][0] == "ParameterError" and "swap them" in bad["error"][1]
    assert session.json("print(json.dumps(window))") == 10  # a refused stage left the namespace alone
    # stage parameters bind as $name in SQL
    session.ok("%%qsdk sql -o recent\nSELECT count(*) AS n FROM bronze_prices WHERE date >= $start")
    assert session.json("print(int(recent.n[0]))") == 2


def test_stage_contract_limits_reads_including_sql(session: Session) -> None:
    session.ok("%qsdk stage returns")
    assert session.json("df = %qsdk read bronze.prices\nprint(len(df))") == 5
    denied = session.run("%qsdk read bronze.secret")
    assert denied["error"][0] == "ContractViolation" and "undeclared table 'bronze.secret'" in denied["error"][1]
    denied = session.run("%%qsdk sql\nSELECT count(*) FROM bronze_secret")
    assert denied["error"][0] == "ContractViolation"
    access = session.json("t = %qsdk tables\nprint(json.dumps(dict(zip(t.name, t.access))))")
    assert access == {"bronze.prices": "read", "bronze.secret": "-", "silver.returns": "write"}
    session.ok("%qsdk unstage")
    assert session.json("df = %qsdk read bronze.secret\nprint(len(df))") == 2  # unrestricted again


def test_sql_reaches_no_file_and_no_setting_only_the_tables_it_names(session: Session, env) -> None:
    session.ok("%qsdk stage returns")  # may read bronze.prices, not bronze.secret
    lake, root = env["lake"], env["root"]
    secret = next((lake / "bronze" / "secret").glob("*.parquet"))
    attempts = {
        "read_parquet": f"SELECT * FROM read_parquet('{secret}')",
        "a file as a table": f"SELECT * FROM '{secret}'",
        "a Delta log as text": f"SELECT * FROM read_text('{lake}/bronze/secret/_delta_log/*.json')",
        "glob": f"SELECT * FROM glob('{lake}/*/*')",
        "COPY TO": f"COPY (SELECT * FROM bronze_prices) TO '{lake}/bronze/prices/evil.parquet' (FORMAT parquet)",
        "ATTACH": f"ATTACH '{root}/side.duckdb' AS side",
        "EXPORT": f"EXPORT DATABASE '{root}/exported'",
        "INSTALL": "INSTALL httpfs",
        "LOAD": "LOAD httpfs",
        "SET": "SET enable_external_access = true",
        "RESET": "RESET lock_configuration",
    }
    for what, sql in attempts.items():
        out = session.run(f"%%qsdk sql\n{sql}")
        assert out["error"] is not None and out["error"][0] == "SqlAccessDenied", (what, out)
        assert "sees only the lakehouse tables the query names" in out["error"][1], what
        assert "Name the table instead of its files" in out["error"][1], what
    assert not (lake / "bronze" / "prices" / "evil.parquet").exists()
    assert not (root / "side.duckdb").exists() and not (root / "exported").exists()
    session.ok("%%qsdk sql -o n\nSELECT count(*) AS n FROM bronze_prices")  # what it names still works
    assert session.json("print(int(n.n[0]))") == 5
    session.ok("%qsdk unstage")


def test_interactive_writes_go_to_the_sandbox_until_promoted(session: Session, env) -> None:
    production = Lakehouse(env["lake"])
    prices_version = production.version("bronze.prices")
    session.ok("%qsdk stage returns")
    out = session.ok(
        "import qsdk, pandas as pd\n"
        "px = qsdk.DataLoader().read('bronze.prices').sort_values(['symbol', 'date'])\n"
        "px['ret'] = px.groupby('symbol').close.pct_change().fillna(0.0)\n"
        "print(repr(qsdk.write_table('silver.returns', px[['date', 'symbol', 'ret']])))")
    assert "sandbox version 0" in out["stdout"]
    assert not production.exists("silver.returns")  # production untouched
    assert production.version("bronze.prices") == prices_version
    sandbox = Lakehouse(env["lake"] / "_sandbox" / "tester")
    assert sandbox.read("silver.returns").num_rows == 5
    assert "_sandbox" not in " ".join(production.list_tables())
    # the session reads back its own sandbox write
    assert session.json("df = %qsdk read silver.returns\nprint(len(df))") == 5
    # a stage still may not write what it does not declare, sandbox or not
    denied = session.run("qsdk.write_table('bronze.secret', pd.DataFrame({'id': [3]}))")
    assert denied["error"][0] == "ContractViolation"
    assert production.read("bronze.secret").num_rows == 2
    # promotion copies the sandbox table into production through the contract
    session.ok("%qsdk promote silver.returns")
    assert production.read("silver.returns").num_rows == 5
    meta = production.commit_metadata("silver.returns", 0)
    assert meta["qsdk.promoted_from"].endswith("_sandbox/tester/silver/returns")
    again = session.run("%qsdk promote silver.returns")  # append refuses the now existing keys
    assert again["error"][0] == "ContractViolation" and "duplicate" in again["error"][1]


def test_checks_run_on_sandbox_writes_and_on_promote(session: Session, env) -> None:
    from qsdk.lakehouse import check_results

    user = "checker"
    session.ok(f"import os; os.environ['QSDK_USER'] = {user!r}")
    session.ok("%qsdk stage returns")
    try:
        bad = session.run(
            "import qsdk, pandas as pd, datetime as dt\n"
            "bad = pd.DataFrame({'date': [dt.date(2020, 1, 1), dt.date(2020, 1, 2)], 'symbol': ['AAA', 'AAA'],"
            " 'ret': [0.1, 50.0]})\n"
            "qsdk.write_table('silver.returns', bad)")
        assert bad["error"][0] == "CheckFailed"
        assert "silver.returns check 'ret between -0.9 and 10' (error): 1 of 2 row(s) fail" in bad["error"][1]
        sandbox = env["lake"] / "_sandbox" / user
        assert not Lakehouse(sandbox).exists("silver.returns")  # nothing written
        warned = session.ok("qsdk.write_table('silver.returns', bad.assign(ret=[0.1, None]))")
        assert "warning: silver.returns check 'null_fraction ret <= 0.0' (warn)" in warned["stdout"]
        assert Lakehouse(sandbox).read("silver.returns").num_rows == 2  # a warning commits
        recorded = check_results.latest(sandbox, "silver.returns").to_pylist()
        assert {(r["check"], r["passed"], r["source"]) for r in recorded} == {
            ("ret between -0.9 and 10", True, "sandbox"), ("null_fraction ret <= 0.0", False, "sandbox")}
        # promote runs the same checks against production: a bad row put in the sandbox around qsdk is refused
        Lakehouse(sandbox, {"silver.returns": _plain_spec()}).write(
            "silver.returns", pd.DataFrame({"date": [dt.date(2020, 2, 3)], "symbol": ["ZZZ"], "ret": [99.0]}),
            mode="append")
        before = Lakehouse(env["lake"]).version("silver.returns")
        refused = session.run("%qsdk promote silver.returns")
        assert refused["error"][0] == "CheckFailed" and "'ret between -0.9 and 10'" in refused["error"][1]
        assert Lakehouse(env["lake"]).version("silver.returns") == before
        assert any(r["source"] == "promote" and not r["passed"]
                   for r in check_results.latest(env["lake"], "silver.returns").to_pylist())
    finally:
        session.ok("%qsdk unstage")
        session.ok("os.environ['QSDK_USER'] = 'tester'")


def _plain_spec():
    from qsdk.lakehouse.contract import TableSpec

    return TableSpec("silver.returns", {"date": "date", "symbol": "string", "ret": "float64"},
                     primary_key=("symbol", "date"))


def test_stage_magics_change_nothing_inside_a_flow_run(session: Session, env) -> None:
    """A notebook that calls ``%qsdk stage`` behaves in a run like any stage notebook."""
    from qsdk.execution.context import StageContext

    context = StageContext(run_id="run-1", stage="returns", lakehouse_root=str(env["lake"]),
                           inputs=["bronze.prices"], outputs=["silver.returns"], tables={},
                           staging_dir=str(env["root"] / "staging"))
    path = context.save(env["root"] / "staging" / "context.json")
    session.ok(f"%qsdk unstage\nimport os, json, qsdk.execution.context\nos.environ['QSDK_CONTEXT'] = {str(path)!r}\n"
               "window = 7  # as papermill would inject it")
    try:
        out = session.ok("%qsdk stage returns -p window=99")
        assert "running as stage 'returns' of run run-1" in out["stdout"]
        session.ok("%qsdk unstage")
        state = session.json("c = qsdk.execution.context.current()\n"
                             "print(json.dumps([window, c.run_id, c.staging_dir, c.extra.get('interactive')]))")
        assert state == [7, "run-1", str(env["root"] / "staging"), None]
    finally:
        session.ok("del os.environ['QSDK_CONTEXT']\nqsdk.execution.context.activate(None)")
