"""``qsdk import-script`` on small scripts: parameters, plumbing, I/O mapping, errors; ``qsdk check``'s
static guard on notebooks. The scripts are never run by the importer (one of them would fail)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from qsdk.cli import main
from qsdk.errors import MigrationError
from qsdk.migrate import import_script
from qsdk.model.params import read_parameters
from tests.conftest import write_notebook


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    (root / "pipelines" / "tables.yaml").write_text(yaml.safe_dump(
        {"tables": {"bronze.other": {"columns": {"x": "int64"}}}}))
    return root


def _script(root: Path, name: str, text: str) -> Path:
    path = root / "scripts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _code(root: Path, notebook: str) -> str:
    nb = nbformat.read(root / notebook, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))


ARGPARSE = '''
    """Clean one day of quotes."""
    import argparse
    import sys

    # a comment block about the method,
    # kept as markdown

    def build_parser():
        parser = argparse.ArgumentParser()
        parser.add_argument("day", help="the session")
        parser.add_argument("--venue", required=True, help="exchange code")
        parser.add_argument("--n-levels", type=int, default=5, help="book depth (default %(default)s)")
        parser.add_argument("--spread-cap", type=float, default=2, help="max spread in bps")
        parser.add_argument("--side", choices=["bid", "ask", "both"], default="both", help="which side")
        parser.add_argument("--symbols", nargs="+", default=["AAPL", "MSFT"], help="symbols")
        parser.add_argument("--exclude", nargs="*", help="symbols to drop")
        parser.add_argument("--dry-run", action="store_true", help="print only")
        parser.add_argument("--no-log", dest="log", action="store_false", help="silence")
        parser.add_argument("--label", help="free text")
        parser.add_argument("--since", default="2020-01-02", help="first day")
        return parser


    def main(args):
        total = args.n_levels * args.spread_cap
        if args.dry_run and args.log:
            print(args.day, args.venue, args.side, args.symbols, args.exclude, args.label, args.since, total)
        return 0


    if __name__ == "__main__":
        sys.exit(main(build_parser().parse_args()))
'''


def test_argparse_options_become_typed_parameters_and_the_plumbing_goes(proj: Path):
    script = _script(proj, "quotes.py", ARGPARSE)
    report = import_script(script, project_root=proj, stage="quotes")
    nb = proj / report.notebook
    specs = read_parameters(nb)  # the cell is valid qsdk parameter syntax
    assert list(specs) == ["day", "venue", "n_levels", "spread_cap", "side", "symbols", "exclude", "dry_run",
                           "log", "label", "since"]
    assert specs["day"].required and specs["venue"].required and specs["venue"].help == "exchange code"
    assert specs["n_levels"].type.kind == "int" and specs["n_levels"].default == 5
    assert specs["n_levels"].help == "book depth (default 5)"
    assert specs["spread_cap"].type.kind == "float" and specs["spread_cap"].default == 2.0
    assert specs["side"].type.choices == ("bid", "ask", "both") and specs["side"].default == "both"
    assert specs["symbols"].type.kind == "list" and specs["symbols"].default == ["AAPL", "MSFT"]
    assert specs["exclude"].type.kind == "list" and specs["exclude"].default == []
    assert specs["dry_run"].type.kind == "bool" and specs["dry_run"].default is False
    assert specs["log"].type.kind == "bool" and specs["log"].default is True
    assert specs["label"].type.optional and specs["label"].default is None
    assert specs["since"].type.kind == "date" and specs["since"].help == "first day"
    code = _code(proj, report.notebook)
    for gone in ("argparse", "__main__", "args.", "build_parser", "def main", "sys.exit"):
        assert gone not in code, gone
    assert "total = n_levels * spread_cap" in code and "if dry_run and log:" in code
    assert not code.rstrip().endswith("0")  # main()'s exit code is not left as a bare expression
    nb_doc = nbformat.read(nb, as_version=4)
    assert any(c.cell_type == "markdown" and "kept as markdown" in c.source for c in nb_doc.cells)
    assert nb_doc.cells[0].cell_type == "markdown" and "Clean one day of quotes." in nb_doc.cells[0].source
    compile(code, "nb", "exec")


CLICK = '''
    import click


    @click.command()
    @click.argument("universe")
    @click.option("--horizon", "-h", default=5, type=int, help="days ahead")
    @click.option("--model", type=click.Choice(["ols", "ridge"]), default="ridge", help="estimator")
    @click.option("--refit", is_flag=True, help="refit the model")
    @click.option("--feature", "features", multiple=True, help="features to use")
    @click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d"]), required=True, help="as-of date")
    def run(universe, horizon, model, refit, features, as_of):
        """Fit the model."""
        print(universe, horizon, model, refit, features, as_of)


    if __name__ == "__main__":
        run()
'''


def test_click_options_become_typed_parameters(proj: Path):
    report = import_script(_script(proj, "fit.py", CLICK), project_root=proj, stage="fit")
    specs = read_parameters(proj / report.notebook)
    assert list(specs) == ["universe", "horizon", "model", "refit", "features", "as_of"]
    assert specs["universe"].required
    assert specs["horizon"].type.kind == "int" and specs["horizon"].default == 5 and specs["horizon"].help == "days ahead"
    assert specs["model"].type.choices == ("ols", "ridge") and specs["model"].default == "ridge"
    assert specs["refit"].type.kind == "bool" and specs["refit"].default is False
    assert specs["features"].type.kind == "list" and specs["features"].default == []
    assert specs["as_of"].type.kind == "date" and specs["as_of"].required
    code = _code(proj, report.notebook)
    assert "click" not in code and "def run" not in code
    assert "print(universe, horizon, model, refit, features, as_of)" in code


CONSTANTS = '''
    import numpy as np

    LOOKBACK = 20  # sessions in the window
    # annualisation factor
    TRADING_DAYS = 252
    UNIVERSE = ["AAPL", "IBM"]
    START = "2010-01-04"
    THRESHOLD = 0.5
    lookback_note = "lower-case names are not parameters"
    TABLE = {"a": 1}  # not a plain value: stays a constant
    LIMIT = 1  # assigned twice: a variable
    LIMIT = LIMIT + 1

    def scale(x):
        return x * np.sqrt(TRADING_DAYS) / LOOKBACK

    print(scale(1.0), UNIVERSE, START, THRESHOLD, TABLE)
'''


def test_module_constants_become_parameters_and_their_uses_follow(proj: Path):
    report = import_script(_script(proj, "const.py", CONSTANTS), project_root=proj, stage="const")
    specs = read_parameters(proj / report.notebook)
    assert list(specs) == ["lookback", "trading_days", "universe", "start", "threshold"]
    assert specs["lookback"].default == 20 and specs["lookback"].help == "sessions in the window"
    assert specs["trading_days"].help == "annualisation factor"
    assert specs["universe"].type.kind == "list" and specs["universe"].default == ["AAPL", "IBM"]
    assert specs["start"].type.kind == "date" and specs["threshold"].type.kind == "float"
    code = _code(proj, report.notebook)
    assert "return x * np.sqrt(trading_days) / lookback" in code
    assert "LOOKBACK" not in code and "TABLE = {" in code and "LIMIT = 1" in code and "LIMIT = LIMIT + 1" in code


def test_an_unparseable_script_is_a_clear_error_and_writes_nothing(proj: Path):
    script = _script(proj, "py2.py", 'print "hello"\n')
    with pytest.raises(MigrationError, match=r"py2.py: not valid Python at line 1: .*never runs"):
        import_script(script, project_root=proj, stage="old")
    assert not (proj / "notebooks").exists()
    assert sorted(p.name for p in (proj / "pipelines").iterdir()) == ["tables.yaml"]
    assert main(["--project", str(proj), "import-script", str(script), "--stage", "old"]) == 2


UNMAPPABLE = '''
    import datetime
    import numpy as np
    import pandas as pd

    day = datetime.date.today().isoformat()
    quotes = pd.read_csv(f"/data/quotes/{day}.csv")
    np.save("weights.npy", quotes.values)
    with open("summary.txt", "w") as fh:
        fh.write(str(len(quotes)))
    pd.read_parquet("never_written.parquet").to_parquet(f"out/{day}.parquet")
'''


def test_io_that_cannot_be_mapped_is_reported_and_left_in_place_never_guessed(proj: Path, capsys):
    script = _script(proj, "daily.py", UNMAPPABLE)
    assert main(["--project", str(proj), "import-script", str(script), "--stage", "daily", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {(i["how"], i["direction"]): i["status"] for i in report["io"]}
    assert statuses == {("pd.read_csv", "read"): "todo", ("np.save", "write"): "todo", ("open", "write"): "todo",
                        ("pd.read_parquet", "read"): "todo", ("pd.read_parquet('never_written.parquet').to_parquet",
                                                              "write"): "todo"}
    assert len(report["needs_human"]) == 5 and report["tables"] == {}
    entry = yaml.safe_load((proj / report["registry_file"]).read_text())["stages"]["daily"]
    assert "inputs" not in entry and "outputs" not in entry
    code = _code(proj, report["notebook"])
    assert code.count("# qsdk: TODO") == 5  # one per call, above its statement
    assert 'pd.read_csv(f"/data/quotes/{day}.csv")' in code and 'np.save("weights.npy", quotes.values)' in code
    assert "import qsdk" not in code and "DataLoader()" not in code and "qsdk.write_table(" not in code


def test_a_file_written_becomes_a_table_with_the_contract_of_the_legacy_file(proj: Path):
    out = proj / "legacy" / "bars.parquet"
    out.parent.mkdir()
    frame = pd.DataFrame({"date": pd.to_datetime(["2020-01-02", "2020-01-03"]), "sym": ["A", "B"],
                          "px": [1.5, 2.0], "n": [3, 4]}).set_index("date")
    frame.to_parquet(out)
    script = _script(proj, "bars.py", '''
        import pandas as pd
        OUT = "legacy/bars.parquet"
        bars = pd.DataFrame({"sym": ["A"], "px": [1.0], "n": [1]}, index=pd.DatetimeIndex(["2020-01-02"], name="date"))
        bars.to_parquet(OUT)
    ''')
    reader = _script(proj, "use.py", '''
        import pandas as pd
        import pyarrow.parquet as pq
        bars = pd.read_parquet("legacy/bars.parquet", columns=["px"])
        print(bars, pq.read_table("legacy/bars.parquet").num_rows)
    ''')
    report = import_script(script, project_root=proj, stage="bars", flow="legacy", layer="bronze")
    assert report.tables == {"bronze.bars": {"description": "Migrated from legacy file legacy/bars.parquet",
                                             "columns": {"sym": "string", "px": "float64", "n": "int64",
                                                         "date": "date"}}}
    assert 'qsdk.write_table(\'bronze.bars\', bars.reset_index(), mode="overwrite")' in _code(proj, report.notebook)
    assert "out" not in read_parameters(proj / report.notebook)  # the path parameter became the table
    second = import_script(reader, project_root=proj, stage="use", flow="legacy")
    assert [(i.table, i.status) for i in second.io] == [("bronze.bars", "table")] * 2
    assert "qsdk.DataLoader().read_arrow('bronze.bars').num_rows" in _code(proj, second.notebook)
    assert ("qsdk.DataLoader().read('bronze.bars', columns=[\"px\"]).astype({'date': \"datetime64[ns]\"})"
            ".set_index(['date'])") in _code(proj, second.notebook)
    doc = yaml.safe_load((proj / "pipelines" / "legacy.yaml").read_text())
    assert doc["flows"]["legacy"]["stages"] == ["bars", "use"] and doc["stages"]["use"]["inputs"] == ["bronze.bars"]
    with pytest.raises(MigrationError, match="stage 'use' exists already"):
        import_script(reader, project_root=proj, stage="use")


def _stage_project(proj: Path, *cells: str, sources: list | None = None) -> Path:
    write_notebook(proj / "notebooks" / "s.ipynb", 'day: "date" = "2020-01-02"\nfile: str = "../data/in.csv"', *cells)
    entry = {"notebook": "notebooks/s.ipynb", "outputs": ["bronze.other"]}
    if sources:
        entry["sources"] = sources
    (proj / "pipelines" / "stages.yaml").write_text(yaml.safe_dump({"stages": {"s": entry}}))
    return proj


def test_check_flags_direct_io_script_imports_and_sys_path_with_file_cell_and_line(proj: Path, capsys):
    _stage_project(
        proj,
        "import pandas as pd\nimport qsdk",
        "df = qsdk.DataLoader().read('bronze.other')\nraw = pd.read_csv(file)\n%matplotlib inline\ndf.to_csv('x.csv')",
        "import sys\nsys.path.append('../scripts')\nfrom scripts.util import f",
        "with open('/tmp/w.txt', 'w') as fh:\n    fh.write('x')",
    )
    assert main(["--project", str(proj), "check", "--json"]) == 1
    found = [(p["rule"], p["cell"], p["line"]) for p in json.loads(capsys.readouterr().out)]
    assert found == [("direct_io", 2, 2), ("direct_io", 2, 4), ("sys_path", 3, 2), ("script_import", 3, 3),
                     ("direct_io", 4, 1)]
    assert main(["--project", str(proj), "check"]) == 1
    text = capsys.readouterr().out
    assert "notebook s: notebooks/s.ipynb, cell 2, line 2: pd.read_csv(...) reads a file directly" in text


def test_check_accepts_reads_of_declared_source_files_and_clean_notebooks(proj: Path, capsys):
    (proj / "data").mkdir()
    (proj / "data" / "in.csv").write_text("x\n1\n")
    _stage_project(proj, "import pandas as pd\nimport qsdk",
                   "raw = pd.read_csv(file)\nqsdk.write_table('bronze.other', raw)",
                   sources=[{"files": "data/*.csv"}])
    assert main(["--project", str(proj), "check"]) == 0, capsys.readouterr().out
    _stage_project(proj, "import pandas as pd", "raw = pd.read_csv('../data/other.csv')",
                   sources=[{"files": "data/in.csv"}])
    assert main(["--project", str(proj), "check"]) == 1  # a file the stage does not declare


def test_pair_writes_a_percent_script_that_check_holds_in_step_with_the_notebook(proj: Path, capsys):
    script = _script(proj, "const.py", CONSTANTS)
    assert main(["--project", str(proj), "import-script", str(script), "--stage", "const", "--pair"]) == 0
    text = proj / "notebooks" / "migrated" / "const.py"
    assert text.is_file() and "# %% tags=[\"parameters\"]" in text.read_text()
    capsys.readouterr()
    assert main(["--project", str(proj), "check"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    text.write_text(text.read_text().replace("print(scale(1.0)", "print(scale(2.0)"))  # edited on one side only
    assert main(["--project", str(proj), "check", "--json"]) == 1
    (problem,) = json.loads(capsys.readouterr().out)
    assert problem["rule"] == "pair_out_of_sync" and "jupytext --sync" in problem["error"]
    from jupytext.cli import jupytext

    jupytext(["--sync", str(text.with_suffix(".ipynb"))])  # its command line, in this process
    assert main(["--project", str(proj), "check"]) == 0
    assert "print(scale(2.0)" in _code(proj, "notebooks/migrated/const.ipynb")  # the newer side won


def test_a_main_that_parses_its_own_arguments_is_inlined_and_the_first_stage_needs_no_registry(tmp_path: Path):
    root = tmp_path / "fresh"
    (root / "pipelines").mkdir(parents=True)  # a project without any registry file yet
    script = _script(root, "job.py", '''
        import argparse


        def main():
            parser = argparse.ArgumentParser()
            parser.add_argument("--n", type=int, default=3)
            opts = parser.parse_args()
            total = sum(range(opts.n))
            # the result
            print(total)
            return total


        if __name__ == "__main__":
            raise SystemExit(main())
    ''')
    report = import_script(script, project_root=root, stage="job", flow="jobs")
    assert list(read_parameters(root / report.notebook)) == ["n"]
    code = _code(root, report.notebook)
    assert "total = sum(range(n))" in code and "# the result\nprint(total)\ntotal" in code
    assert "parser" not in code and "def main" not in code and "SystemExit" not in code
    assert yaml.safe_load((root / "pipelines" / "jobs.yaml").read_text())["flows"]["jobs"]["stages"] == ["job"]


def test_a_stage_joins_an_existing_flow_in_the_file_that_declares_it_comments_kept(proj: Path):
    write_notebook(proj / "notebooks" / "first.ipynb", "n: int = 1")
    flows = proj / "pipelines" / "flows.yaml"
    flows.write_text("# the nightly jobs\nstages:\n  first:\n    notebook: notebooks/first.ipynb  # kept\n"
                     "flows:\n  nightly:\n    stages: [first]\n    parameters: {n: 2}\n")
    before = yaml.safe_load(flows.read_text())
    report = import_script(_script(proj, "c.py", CONSTANTS), project_root=proj, stage="second", flow="nightly",
                           )
    assert report.registry_file == "pipelines/flows.yaml" and report.notebook == "notebooks/nightly/second.ipynb"
    text = flows.read_text()
    assert text.startswith("# the nightly jobs\n") and "notebook: notebooks/first.ipynb  # kept" in text
    after = yaml.safe_load(text)
    assert after["flows"]["nightly"] == {**before["flows"]["nightly"], "stages": ["first", "second"]}
    assert after["stages"]["first"] == before["stages"]["first"] and "second" in after["stages"]
    with pytest.raises(MigrationError, match="flow 'nightly' is declared in flows.yaml"):
        import_script(_script(proj, "d.py", CONSTANTS), project_root=proj, stage="third", flow="nightly",
                      registry_file="pipelines/other.yaml")


def test_parsed_arguments_passed_around_whole_are_left_for_a_human(proj: Path):
    script = _script(proj, "whole.py", '''
        import argparse


        def run(options):
            print(options.n)


        def main():
            parser = argparse.ArgumentParser()
            parser.add_argument("--n", type=int, default=1)
            args = parser.parse_args()
            run(args)
            print(vars(args))


        if __name__ == "__main__":
            main()
    ''')
    report = import_script(script, project_root=proj, stage="whole")
    assert [line.split(":")[0] for line in report.needs_human] == ["line 13", "line 14"]
    assert all("used as a whole" in line for line in report.needs_human)
    code = _code(proj, report.notebook)
    assert "def run(options):\n    print(options.n)" in code and "run(args)" in code  # left as written
