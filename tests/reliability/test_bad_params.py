"""Bad and hostile run parameters: refused with a clear message before any kernel starts, or
handed to the notebook as the exact literal value. Nothing in a parameter is ever executed.

papermill writes parameters into the notebook as Python source, so a value is only safe if
it arrives as one string literal: the notebook stores what it received in a table and the
test compares it byte for byte, and checks that the code hidden in the values (each one would
create a marker file if it ran) never ran.
"""

from __future__ import annotations

import pytest

from qsdk.errors import ParameterError, UnknownNameError
from tests.reliability.conftest import TableState, state

NAMES = ("quotes", "newlines", "backslashes", "code1", "code2", "code3", "odd", "long")
PARAMS = "\n".join(f'{n}: str = ""' for n in NAMES) + (
    '\ntags: list[str] = []\nn: int = 1\nday: "date" = "2020-01-01"\n'
    'start: "date" = "2020-01-01"\nend: "date" = "2020-12-31"')
STORE = f"""import pandas as pd, qsdk
names = {NAMES!r}
values = [globals()[name] for name in names] + ["\\x1f".join(tags)]
qsdk.write_table("bronze.lit", pd.DataFrame({{"name": [*names, "tags"], "value": values}}), mode="overwrite")
"""


def hostile_values(marker: str) -> dict[str, str]:
    touch = f'import os; os.system("touch {marker}")'
    return {
        "quotes": "it's \"quoted\" ''' \"\"\" `back` ",
        "newlines": "line 1\nline 2\r\n\tline 3\n\n",
        "backslashes": "C:\\new\\table \\\\ \\x41 \\u0041 \\N{DASH} \\' \\\" ends with \\",
        "code1": f'"); {touch}; ("',
        "code2": f"'); {touch.replace(chr(34), chr(39))}; ('\n{touch}\n#",
        "code3": f'{{__import__("os").system("touch {marker}")}} $(touch {marker}) `touch {marker}`',
        "odd": "nul\x00 bell\x07 unicode ü € 日本 🙂 rtl \u202e",
        "long": ("0123456789abcdef\"'\\\n" * 5200)[:100 * 1024],
    }


@pytest.fixture
def sdk(project):
    return (project.table("bronze.lit", {"name": "string", "value": "string"}, primary_key=["name"])
            .stage("store", PARAMS, STORE, outputs=["bronze.lit"], partition={"by": "year"})
            .flow("f", ["store"]).sdk())


def _run(sdk, params):
    return sdk.run_pipeline("f", params=params, executor="local", track=False, cache=False)


def test_hostile_strings_reach_the_notebook_as_exact_literals_and_never_run(sdk, tmp_path):
    marker = tmp_path / "pwned"
    values = hostile_values(str(marker))
    tags = ['a"b', "c'd", "e\\f", f'"]); import os; os.system("touch {marker}"); (["']
    assert len(values["long"]) == 100 * 1024

    _run(sdk, {**values, "tags": tags})

    assert not marker.exists(), "a parameter value was executed"
    assert state(sdk.lakehouse, "bronze.lit") == TableState(0, len(NAMES) + 1)
    got = dict(zip(*sdk.lakehouse.read("bronze.lit").to_pydict().values(), strict=True))
    for name, value in values.items():
        assert got[name] == value, name
    assert got["tags"].split("\x1f") == tags


@pytest.mark.parametrize("params, match", [
    ({"n": "four"}, r"parameter 'n': expected int, got 'four'"),
    ({"n": '1); import os; os.system("touch MARKER"); ('}, r"parameter 'n': expected int"),
    ({"n": "1.5"}, r"parameter 'n': expected int"),
    ({"day": "2020-13-45"}, r"parameter 'day': expected date \(YYYY-MM-DD\)"),
    ({"day": '2020-01-01"); import os; os.system("touch MARKER'}, r"parameter 'day': expected date"),
    ({"tags": 5}, r"parameter 'tags': expected list\[str\]"),
    ({"quotes": 7}, r"parameter 'quotes': expected str, got 7"),
    ({"start": "2021-06-30", "end": "2021-01-01"}, r"start=2021-06-30 is after end=2021-01-01; swap them"),
    ({"qoutes": "x"}, r"no stage declares parameter 'qoutes'"),
    ({'x = 1\nfrom os import system; system("touch MARKER")\ny': "v"}, r"no stage declares parameter"),
    ({"store.__import__('os')": "v"}, r"stage 'store' has no parameter"),
])
def test_bad_parameters_are_refused_before_any_kernel_starts(sdk, tmp_path, params, match):
    marker = tmp_path / "pwned"
    assert "." not in str(marker)  # a dot in a key would address a stage instead
    params = {k.replace("MARKER", str(marker)): v.replace("MARKER", str(marker)) if isinstance(v, str) else v
              for k, v in params.items()}
    with pytest.raises(ParameterError, match=match):
        _run(sdk, params)
    assert not marker.exists()
    assert not sdk.config.runs_dir.exists()  # refused before a run folder, let alone a kernel
    assert state(sdk.lakehouse, "bronze.lit") == TableState(None, None)


def test_a_code_like_stage_prefix_is_an_unknown_stage(sdk, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnknownNameError, match=r"flow 'f' has no stage 'x = 1\\nimport os; os'"):
        _run(sdk, {f'x = 1\nimport os; os.system("touch {marker}")': "1"})
    assert not marker.exists() and not sdk.config.runs_dir.exists()
