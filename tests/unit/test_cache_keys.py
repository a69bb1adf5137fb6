import json
import os
import shutil
import subprocess
import sys

import nbformat
import pyarrow as pa
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from qsdk.cache import code_hash, fingerprint, params_hash


def _nb(path, *sources, params="x = 1"):
    nb = new_notebook()
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, *(new_code_cell(s) for s in sources)]
    nbformat.write(nb, path)
    return path


def test_code_hash_ignores_outputs_counts_metadata_markdown_and_parameters(tmp_path):
    path = _nb(tmp_path / "a.ipynb", "y = x + 1", "print(y)")
    base = code_hash(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [new_output("stream", text="2\n")]
    nb.cells[1].execution_count = 7
    nb.cells[1].metadata["scrolled"] = True
    nb.cells.insert(2, new_markdown_cell("why"))
    nb.cells[0].source = "x = 2  # new default"
    nbformat.write(nb, path)
    assert code_hash(path) == base
    nb.cells[1].source = "y = x + 2"
    nbformat.write(nb, path)
    assert code_hash(path) != base


def test_code_hash_sees_cell_boundaries(tmp_path):
    one = code_hash(_nb(tmp_path / "one.ipynb", "a = 1\nb = 2"))
    two = code_hash(_nb(tmp_path / "two.ipynb", "a = 1", "b = 2"))
    assert one != two


def test_fingerprint_is_order_insensitive_and_content_sensitive():
    t = pa.table({"k": [1, 2, 3], "v": [0.5, 1.5, 2.5]})
    shuffled = t.take([2, 0, 1])
    assert fingerprint(t) == fingerprint(shuffled)
    assert fingerprint(t) != fingerprint(pa.table({"k": [1, 2, 3], "v": [0.5, 1.5, 2.6]}))
    assert fingerprint(t) != fingerprint(t.slice(0, 2))
    assert fingerprint(t) != fingerprint(t.cast(pa.schema([("k", pa.int32()), ("v", pa.float64())])))
    # swapping values between rows changes row hashes even though column sums stay equal
    assert fingerprint(t) != fingerprint(pa.table({"k": [1, 2, 3], "v": [1.5, 0.5, 2.5]}))


def test_params_hash_is_stable_across_key_order():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_installed_versions_come_from_the_dist_info_listing_without_importlib_metadata(monkeypatch):
    """The cache key's package versions are read from ``NAME-VERSION.dist-info`` folder names (a
    no-op re-run must not pay for importlib.metadata); they agree with importlib.metadata."""
    from importlib import metadata

    from qsdk import codedeps

    monkeypatch.setattr(codedeps, "_VERSIONS", {})
    expected = {d: metadata.version(d) for d in ("duckdb", "exchange-calendars", "pyarrow", "PyYAML")}
    monkeypatch.setattr(codedeps, "installed_version", lambda d: (_ for _ in ()).throw(AssertionError(d)))
    assert {d: codedeps.listed_version(d) for d in expected} == expected


def test_lazy_module_imports_on_first_use_and_counts_as_a_static_import(tmp_path):
    import subprocess
    import sys

    from qsdk.codedeps import static_imports

    probe = ("import sys; from qsdk.lakehouse.types import TYPES; from qsdk.lakehouse import tables; "
             "assert 'date' in TYPES and list(TYPES)[0] == 'string'; before = 'pyarrow' in sys.modules; "
             "t = TYPES['date']; print(before, 'pyarrow' in sys.modules, t)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "date32[day]"]
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nfrom qsdk.lazyimport import lazy_module\n"
                      "if TYPE_CHECKING:\n    import pyarrow as pa\nelse:\n    pa = lazy_module('pyarrow')\n")
    assert "pyarrow" in static_imports(module, "m")


def _dist(folder, name: str, version: str) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_package_versions_are_remembered_until_an_install_changes_a_path_folder(tmp_path, monkeypatch):
    """The closure's package versions are asked of importlib.metadata once per import name, and
    again after an install, upgrade or uninstall (which changes its folder's mtime)."""
    from qsdk import codedeps

    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "qsdkfakedist", "1.0")
    monkeypatch.syspath_prepend(str(site))
    asked: list[str] = []
    real = codedeps.installed_version
    monkeypatch.setattr(codedeps, "installed_version", lambda d: asked.append(d) or real(d))
    assert codedeps.distributions(["qsdkfakedist"]) == {"qsdkfakedist": "1.0"}
    assert codedeps.distributions(["qsdkfakedist"]) == {"qsdkfakedist": "1.0"}
    assert asked == ["qsdkfakedist"]  # the second answer came from the memo
    shutil.rmtree(site / "qsdkfakedist-1.0.dist-info")  # an upgrade
    _dist(site, "qsdkfakedist", "2.0")
    assert codedeps.distributions(["qsdkfakedist"]) == {"qsdkfakedist": "2.0"}
    assert asked == ["qsdkfakedist", "qsdkfakedist"]


PROVIDERS = """import json, sys
from importlib import metadata
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "no-scan":
    def refuse():
        raise AssertionError("scanned the installed distributions")
    metadata.packages_distributions = refuse
from qsdk import codedeps
print(json.dumps(codedeps.distributions(["qsdkfakemod"])))"""


def test_which_distribution_provides_an_import_name_is_scanned_once_per_install_across_processes(tmp_path):
    """An import name that is not its distribution's name (``yaml`` is PyYAML's) needs a scan of
    every installed distribution's files; a new process (a Ray worker, a ``qsdk run``) reads the
    last scan from ``$XDG_CACHE_HOME/qsdk/distributions`` instead, until an install changes a
    ``sys.path`` folder."""
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()

    def install(version: str) -> None:
        _dist(site, "qsdkfakedist", version)
        (site / f"qsdkfakedist-{version}.dist-info" / "top_level.txt").write_text("qsdkfakemod\n")

    def providers(scan: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", PROVIDERS, str(site), scan], capture_output=True, text=True,
                              env={**os.environ, "XDG_CACHE_HOME": str(cache)})

    install("1.0")
    refused = providers("no-scan")
    assert refused.returncode != 0 and "scanned the installed distributions" in refused.stderr  # the probe works
    assert json.loads(providers("scan").stdout) == {"qsdkfakedist": "1.0"}
    assert json.loads(providers("no-scan").stdout) == {"qsdkfakedist": "1.0"}  # from the stored scan
    shutil.rmtree(site / "qsdkfakedist-1.0.dist-info")  # an upgrade
    install("2.0")
    assert "scanned the installed distributions" in providers("no-scan").stderr  # the stored scan is stale
    assert json.loads(providers("scan").stdout) == {"qsdkfakedist": "2.0"}
    assert len(list((cache / "qsdk" / "distributions").glob("*.json"))) == 2


def test_only_the_newest_stored_scans_are_kept(tmp_path, monkeypatch):
    """Each install state (and each sys.path a process has) stores one scan; the folder keeps
    the newest sixteen, so it does not grow with every install."""
    from importlib import metadata

    from qsdk import codedeps

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {"m": ["d"]})
    folder = tmp_path / "qsdk" / "distributions"
    dated: set[str] = set()
    for n in range(20):
        assert codedeps._stored_top_level(((f"/site-{n}", n),)) == {"m": ["d"]}
        for new in {p.name for p in folder.glob("*.json")} - dated:  # distinct mtimes, oldest first
            os.utime(folder / new, (1_000_000 + n, 1_000_000 + n))
            dated.add(new)
    assert len(list(folder.glob("*.json"))) == codedeps._STORED_SCANS == 16
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {"m": ["rescanned"]})
    assert codedeps._stored_top_level((("/site-19", 19),)) == {"m": ["d"]}  # the newest is kept
    assert codedeps._stored_top_level((("/site-0", 0),)) == {"m": ["rescanned"]}  # the oldest went
