"""The launcher in a real browser: JupyterLab + Chromium (Playwright), a real backfill run.

JupyterLab serves a temporary copy of the project (its own lakehouse, runs and MLflow store);
Chromium opens ``notebooks/launcher.ipynb``, runs it, fills the form, clicks Run and waits for
success; the test then reads the Delta tables the run wrote. The screenshot of the launcher
after the run is saved to ``tests/browser/artifacts/launcher.png``; the flow's graph is
screenshot while a stage runs (``launcher-graph-running.png``) and after the run
(``launcher-graph-done.png``), and its nodes' states are read from the page each time.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pytest

from tests.browser.lab import CHROMIUM_ARGS, ensure_chromium, jupyterlab
from tests.conftest import REPO

ARTIFACTS = Path(__file__).parent / "artifacts"
START, END = "2005-01-01", "2005-03-31"
FLOW, FLOW_HELP = "browser_prices", "ingest and clean daily prices (browser test)"
RUN_TIMEOUT_MS = 600_000  # a loaded CI machine: two stage kernels, MLflow, Delta commits


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        return ensure_chromium()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the playwright package: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as api:
        yield api


@pytest.mark.browser
@pytest.mark.timeout(1200)
def test_launcher_runs_backfill_from_the_browser(chromium: str, playwright_api, tmp_path: Path) -> None:
    root = tmp_path / "project"
    for folder in ("pipelines", "notebooks"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    # the first two stages of the real backfill, as a flow of their own: the whole backfill
    # (research stages included) would take many more kernels than this test needs
    (root / "pipelines" / "zz_browser_test.yaml").write_text(
        f"flows:\n  {FLOW}:\n    description: {FLOW_HELP}\n    stages: [ingest_prices, clean_prices]\n")
    lake = root / "lakehouse"
    env = {"QSDK_PROJECT": str(root), "QSDK_LAKEHOUSE": str(lake), "QSDK_RUNS": str(root / "runs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "QSDK_USER": "browser-test"}
    ARTIFACTS.mkdir(exist_ok=True)
    with jupyterlab(root, env=env, work=tmp_path / "lab") as lab:
        browser = playwright_api.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(180_000)
        try:
            status, links, mlflow, graph = _run_in_lab(page, lab)
        except Exception as exc:
            page.screenshot(path=str(ARTIFACTS / "launcher-failure.png"), full_page=True)
            raise AssertionError(f"{type(exc).__name__}: {exc}\n(screenshot: {ARTIFACTS / 'launcher-failure.png'}; "
                                 f"server log:)\n{''.join(lab.log[-25:])}") from None
        finally:
            browser.close()

    assert any(t.startswith("ingest_prices/") for t in links) and any(t.startswith("clean_prices/") for t in links)
    # the graph, read from the page: while the run went on one stage was running and none had
    # failed; after it, both stages succeeded; every table of the two stages is drawn
    running, done, tables = graph
    assert "running" in running.values() and set(running.values()) <= {"pending", "running", "succeeded"}, running
    assert done == {"ingest_prices": "succeeded", "clean_prices": "succeeded"}, done
    assert tables == {"bronze.prices_raw", "silver.prices", "silver.corporate_actions"}, tables
    for name in ("launcher-graph-running.png", "launcher-graph-done.png"):
        assert (ARTIFACTS / name).stat().st_size > 5_000
    assert re.search(r"MLflow run: [0-9a-f]{32}", mlflow), mlflow
    from deltalake import DeltaTable

    for table in ("bronze/prices_raw", "silver/prices", "silver/corporate_actions"):
        assert (lake / table / "_delta_log").is_dir(), f"the run did not write {table}"
    prices = DeltaTable(str(lake / "silver" / "prices")).to_pyarrow_table(columns=["date", "symbol"])
    dates = prices.column("date").to_pylist()
    assert prices.num_rows > 0 and min(dates) >= dt.date(2005, 1, 1) and max(dates) <= dt.date(2005, 3, 31)
    raw = DeltaTable(str(lake / "bronze" / "prices_raw")).to_pyarrow_table(columns=["date"])
    assert raw.num_rows >= prices.num_rows


_STAGE_STATES = ("els => Object.fromEntries(els.filter(e => e.dataset.kind === 'stage')"
                 ".map(e => [e.dataset.node, e.dataset.state]))")


def _run_in_lab(page, lab) -> tuple[str, list[str], str, tuple[dict, dict, set]]:
    """Open the launcher notebook, run it, fill the form, Run; the final status, links, MLflow
    line, and the graph's stage states (mid-run, after) and tables."""
    page.goto(lab.page_url("notebooks/launcher.ipynb"))
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    # the kernel is connected once the status bar reads "<kernel> | Idle"
    page.wait_for_function("Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))"
                           ".some(e => /\\|\\s*Idle$/.test(e.innerText.trim()))")
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator("li[data-command='runmenu:run-all']").click()
    launcher = page.locator(".qsdk-launcher")
    launcher.wait_for()

    old_form = page.query_selector(".qsdk-param-start")
    page.select_option(".qsdk-flow select", FLOW)  # the form is rebuilt for the flow's stages
    old_form.wait_for_element_state("hidden")  # detached: the new fields are being rendered
    page.wait_for_selector(f".qsdk-launcher :text('{FLOW_HELP}')")
    page.wait_for_selector(".qsdk-param-start input[type=date]")
    # inline validation round-trips through the kernel: end before start is flagged
    page.fill(".qsdk-param-start input[type=date]", START)
    page.fill(".qsdk-param-end input[type=date]", "2004-12-31")
    page.wait_for_selector(".qsdk-message-start :text('swap them')")
    page.fill(".qsdk-param-end input[type=date]", END)
    page.wait_for_function("!document.querySelector('.qsdk-message-start').innerText.trim()")
    page.select_option(".qsdk-executor select", "local")
    # the synthetic source's parameters are greyed out while the source is bokeh
    assert page.is_disabled(".qsdk-param-n_symbols input") and not page.is_disabled(".qsdk-param-start input")

    page.wait_for_selector(".qsdk-graph [data-node='clean_prices']")
    page.click(".qsdk-run")
    page.wait_for_selector(".qsdk-graph [data-kind='stage'][data-state='running']", timeout=RUN_TIMEOUT_MS)
    running = page.eval_on_selector_all(".qsdk-graph [data-node]", _STAGE_STATES)
    page.locator(".qsdk-graph").screenshot(path=str(ARTIFACTS / "launcher-graph-running.png"))
    page.wait_for_function("/succeeded|failed/.test(document.querySelector('.qsdk-status').innerText)",
                           timeout=RUN_TIMEOUT_MS)
    status = page.inner_text(".qsdk-status")
    assert "succeeded" in status, f"the run failed in the browser:\n{status}"
    page.wait_for_selector(".qsdk-graph [data-node='clean_prices'][data-state='succeeded']")
    done = page.eval_on_selector_all(".qsdk-graph [data-node]", _STAGE_STATES)
    tables = set(page.eval_on_selector_all(".qsdk-graph [data-kind='table']", "els => els.map(e => e.dataset.node)"))
    page.locator(".qsdk-graph").screenshot(path=str(ARTIFACTS / "launcher-graph-done.png"))
    page.wait_for_selector(".qsdk-links a")
    links = page.locator(".qsdk-links a").all_inner_texts()
    mlflow = page.inner_text(".qsdk-links .qsdk-mlflow")
    launcher.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "launcher.png"), full_page=True)
    # a link opens the executed notebook inside JupyterLab (a new document tab)
    page.locator(".qsdk-links a", has_text="clean_prices/").click()
    page.wait_for_selector(".lm-TabBar-tab :text('2005-01-01_2005-03-31.ipynb')")
    return status, links, mlflow, (running, done, tables)
