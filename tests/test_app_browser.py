"""The dashboard in a real browser: `ssmscope app` on a free localhost port, headless Chromium via Playwright.

Checked at the window sizes people use (1600 px wide, and a 1280 × 800 laptop): the paper's slope table
without horizontal scrolling, slope labels inside their panels, deep links, row clicks, the offline icon
and no Deploy button, overlay line styles, a PDF download, switching stores and live refresh while a
store is ingested into. Skipped (with the reason) only when no Chromium is installed or Playwright for
Python is missing. Screenshots go to test-artifacts/ (gitignored). The server is always stopped, by
its process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from app_store import COORD_RUNS, LR_RUNS, app_store, copy_sweeps, free_port, wait_for_health  # noqa: F401

from ssmscope.app import export as figure_export

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and os.path.exists(p)), None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
# `ssmscope app` through runs.cli.dashboard.register on a bare Typer app (runs/cli/main.py does the same)
CLI = ("import typer; from ssmscope.runs.cli.dashboard import register; app = typer.Typer(); "
       "app.callback()(lambda: None); register(app); app()")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium); "
                                               "the browser test needs one"),
    pytest.mark.skipif(__import__("importlib").util.find_spec("playwright") is None,
                       reason="Playwright for Python is not installed (pip install playwright)"),
]


@pytest.fixture(scope="module")
def server(app_store, tmp_path_factory):  # noqa: F811
    """The dashboard over the fixture store, started as `ssmscope app --db … --port …`; yields its URL.

    Its recent-stores list goes to a temporary folder, never the user's ~/.cache."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "SSMSCOPE_CACHE_DIR": str(tmp_path_factory.mktemp("app-cache"))}
    log = ARTIFACTS / "app-server.log"
    ARTIFACTS.mkdir(exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", CLI, "app", "--db", str(app_store), "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, proc)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the CLI (it stops Streamlit), then to the process group it leads; SIGKILL if need be."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything left of the group this test started
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


TRACES = ".js-plotly-plot .scatterlayer .trace"


def test_coordinate_check_renders_in_chromium_with_its_url_state(server, browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1700})
    page.goto(f"{server}/coordinate-check?sweep=app-coord&convention=l2", wait_until="domcontentloaded")
    page.wait_for_selector(TRACES, timeout=90_000)
    page.wait_for_function(f"document.querySelectorAll('{TRACES}').length >= 48", timeout=30_000)
    page.wait_for_timeout(500)  # let the sidebar and captions settle for the screenshot
    assert page.locator(".js-plotly-plot").count() == 1
    assert page.locator(TRACES).count() >= 6 * 4 * 2  # panels × rows × layers, plus bands, runs and references
    titles = page.locator(".js-plotly-plot .g-ytitle").all_text_contents()
    assert any("over the probe batch" in t for t in titles), titles  # the convention from the URL, on the axis
    legend = page.locator(".js-plotly-plot .legend .traces").all_text_contents()
    assert legend[:2] == ["layer 0", "layer 1"], legend
    columns = page.locator(".js-plotly-plot .annotation-text").all_text_contents()
    assert {"sp · zoh", "sp · euler", "mup · zoh", "mup · euler", "mup-ssm · zoh", "mup-ssm · euler"} <= set(columns)
    assert "convention=l2" in page.url and "sweep=app-coord" in page.url
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "coordinate-check.png"), full_page=True)
    page.close()


def test_lr_transfer_renders_in_chromium(server, browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(f"{server}/lr-transfer", wait_until="domcontentloaded")
    page.wait_for_selector(TRACES, timeout=90_000)
    page.wait_for_timeout(500)
    assert page.locator(".js-plotly-plot").count() == 3  # the curves, the loss at the optimum, the readout split
    legend = page.locator(".js-plotly-plot").first.locator(".legend .traces").all_text_contents()
    assert {"N_u = 16", "N_u = 32", "N_u = 64", "diverged"} <= set(legend), legend
    page.screenshot(path=str(ARTIFACTS / "lr-transfer.png"), full_page=True)
    page.close()


# --- a 1280 × 800 laptop ---------------------------------------------------------------------------
LAPTOP = {"width": 1280, "height": 800}
DATAFRAME = '[data-testid="stDataFrame"]'


def _open(browser, url: str, viewport: dict = LAPTOP, ready: str = DATAFRAME):
    """A new page at `url`, waiting until `ready` shows; it records every request the page makes."""
    page = browser.new_page(viewport=viewport)
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(ready, timeout=90_000)
    page.wait_for_timeout(800)
    return page


def test_paper_slope_table_fits_a_1280_window_without_horizontal_scrolling(server, browser, app_store):  # noqa: F811
    page = _open(browser, f"{server}/slope-table?sweep=app-coord")
    scroller = page.locator(f"{DATAFRAME} .dvn-scroller").first
    size = scroller.evaluate("s => ({scroll: s.scrollWidth, client: s.clientWidth})")
    assert size["scroll"] <= size["client"], size  # every column visible: nothing to scroll to
    headers = page.locator(f"{DATAFRAME} [role=columnheader]").all_text_contents()
    assert headers == ["preset", "disc", "optim", "‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖"]
    cells = page.locator(f"{DATAFRAME} table tr").nth(1).locator("td").all_text_contents()
    assert cells[:3] == ["sp", "euler", "adam"]
    # the cells hold the measured exponents (so the column sorts by them): the fit's own numbers for that row
    from ssmscope.runs.analysis.export import compact_paper
    from ssmscope.runs.analysis.slopes import paper_slopes
    from ssmscope.runs.store.db import load_probe_frame

    values = compact_paper(paper_slopes(load_probe_frame(app_store, {"spec": "app-coord"}))).values
    first = values.filter((values["preset"] == "sp") & (values["discretization"] == "euler")).row(0, named=True)
    expected = [first[t] for t in ("‖x‖", "‖y‖", "‖Δx‖", "‖Δy‖")]
    assert [float(c) for c in cells[3:]] == pytest.approx(expected, abs=5e-3), (cells, expected)
    assert "same parameterization" in page.locator('[data-testid="stAlert"]').first.text_content()
    # offline: nothing is fetched from elsewhere (the tab icon is the app's own file); no Deploy button
    outside = [u for u in page.requests if not u.startswith(server) and not u.startswith("data:")]
    assert outside == []
    icon = page.locator("link[rel*='icon']").first.get_attribute("href")
    assert icon and (icon.startswith("/") or icon.startswith(server)) and "gstatic" not in icon
    assert page.get_by_text("Deploy", exact=True).count() == 0
    page.screenshot(path=str(ARTIFACTS / "slope-table-1280.png"), full_page=True)
    page.close()


def test_slope_labels_stay_inside_their_panels_at_1280(server, browser):
    page = _open(browser, f"{server}/coordinate-check?sweep=app-coord", ready=TRACES)
    page.wait_for_function(f"document.querySelectorAll('{TRACES}').length >= 48", timeout=30_000)
    plots = [r.bounding_box() for r in page.locator(".js-plotly-plot .draglayer .nsewdrag").all()]
    labels = [a.bounding_box() for a in page.locator(".js-plotly-plot .annotation").all()
              if (a.text_content() or "").startswith("L0")]
    assert len(plots) == 6 * 4 and len(labels) == 6 * 4
    for box in labels:
        assert any(p["x"] - 1 <= box["x"] and box["x"] + box["width"] <= p["x"] + p["width"] + 1
                   for p in plots), box
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            apart = a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"] or \
                a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"]
            assert apart, (a, b)
    page.screenshot(path=str(ARTIFACTS / "coordinate-check-1280.png"), full_page=True)
    page.close()


def _disjoint(a: dict, b: dict) -> bool:
    return a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"] or \
        a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"]


def test_axis_and_column_titles_do_not_overlap_at_1280(server, browser):
    """One x title under the whole grid (not "log₂ width (N_u = N_x)" under each of six columns), column titles that
    fit their panels: no two titles of the figure overlap in a 1280 × 800 window."""
    page = _open(browser, f"{server}/coordinate-check?sweep=app-coord", ready=TRACES)
    page.wait_for_function(f"document.querySelectorAll('{TRACES}').length >= 48", timeout=30_000)
    panels = ["sp · zoh", "sp · euler", "mup · zoh", "mup · euler", "mup-ssm · zoh", "mup-ssm · euler"]
    notes = page.locator(".js-plotly-plot .annotation")
    texts = notes.all_text_contents()
    columns = [notes.nth(i).bounding_box() for i, t in enumerate(texts) if t in panels]
    x_titles = [notes.nth(i).bounding_box() for i, t in enumerate(texts) if "(log₂ scale)" in t]
    axis_titles = [t.bounding_box() for t in page.locator(".js-plotly-plot .g-xtitle text, "
                                                          ".js-plotly-plot .g-ytitle text").all()]
    assert len(columns) == 6 and len(x_titles) == 1, texts  # one shared x title
    assert not page.locator(".js-plotly-plot .g-xtitle text").count()  # no per-column x titles
    boxes = [*columns, *x_titles, *axis_titles]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert _disjoint(a, b), (a, b)
    plots = [r.bounding_box() for r in page.locator(".js-plotly-plot .draglayer .nsewdrag").all()]
    top = min(p["y"] for p in plots)
    for box in columns:  # each column title sits within its panel's width, above the grid
        assert box["y"] + box["height"] <= top + 1
        assert any(p["x"] - 2 <= box["x"] and box["x"] + box["width"] <= p["x"] + p["width"] + 2 for p in plots), box
    page.screenshot(path=str(ARTIFACTS / "coordinate-check-titles-1280.png"), full_page=True)
    page.close()


def test_runs_deep_link_opens_and_a_row_click_selects_the_run(server, browser):
    page = _open(browser, f"{server}/runs")
    assert page.locator("h1").first.text_content() == "Runs"
    assert page.get_by_text("Page not found").count() == 0
    sweep = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Sweep").first
    shown = sweep.inner_text() + " ".join(sweep.locator("input").evaluate_all("xs => xs.map(x => x.value)"))
    assert f"all sweeps ({COORD_RUNS + LR_RUNS} runs)" in shown and "Choose an option" not in shown, shown
    row = 3
    run_id = page.locator(f"{DATAFRAME} table tr").nth(row).locator("td").first.text_content()  # tr 0: header
    scroller = page.locator(f"{DATAFRAME} .dvn-scroller").first.bounding_box()
    page.mouse.click(scroller["x"] + 16, scroller["y"] + 35 * row + 17)  # the row's selection box
    page.wait_for_function(f"location.search.includes('run={run_id}')", timeout=30_000)
    assert f"run={run_id}" in page.url
    boxes = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]')
    shown = boxes.evaluate_all("bs => bs.map(b => b.innerText + ' ' + [...b.querySelectorAll('input')].map(i => "
                               "i.value).join(' '))")
    assert any(f"{run_id} · " in text for text in shown), shown  # the run detail shows the clicked run
    page.close()


def test_compare_overlay_draws_one_line_style_per_preset(server, browser):
    page = _open(browser, f"{server}/compare?sweep=app-coord&view=overlay&rows=x&values=sp,mup,mup-ssm", ready=TRACES)
    dashes = page.locator(".js-plotly-plot .scatterlayer .trace path.js-line").evaluate_all(
        "ps => ps.map(p => p.style.strokeDasharray || 'solid')")
    assert len(dashes) >= 3 * 2 and len(set(dashes)) >= 3, dashes  # 3 presets × 2 layers, 3 line styles
    legend = page.locator(".js-plotly-plot .legend .traces").all_text_contents()
    assert {"sp · layer 0", "mup · layer 0", "mup-ssm · layer 0"} <= set(legend)
    page.close()


@pytest.mark.skipif(figure_export.static_export_problem() is not None, reason="kaleido or a Chromium is missing")
def test_one_render_gives_png_svg_and_a_pdf_download(server, browser):
    page = _open(browser, f"{server}/lr-transfer", ready=TRACES)
    page.get_by_text("Export the figure").click()
    page.get_by_role("button", name="Render PNG, SVG and PDF").click()
    page.get_by_role("button", name="Download PDF").wait_for(timeout=120_000)
    assert page.get_by_role("button", name="Download PNG").count() == 1
    assert page.get_by_role("button", name="Download SVG").count() == 1
    with page.expect_download() as download:
        page.get_by_role("button", name="Download PDF").click()
    pdf = Path(download.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    page.close()


def _sidebar_text(page) -> str:
    return page.locator('[data-testid="stSidebar"]').inner_text()


def test_switch_store_then_follow_it_live_while_a_sweep_ingests(server, browser, app_store, tmp_path):  # noqa: F811
    from ssmscope.runs.store.db import StoreError, ingest, shard_dir_for

    live = copy_sweeps(app_store, tmp_path / "live", {"app-lr"})
    page = _open(browser, f"{server}/runs?live=1&every=2")
    checked = page.get_by_text("Live · checked ").first.text_content()
    page.wait_for_function(f"!document.body.innerText.includes({checked!r})", timeout=15_000)  # the time advances
    assert page.get_by_text("Live · checked ").count() == 1
    page.get_by_text("Store: ssmscope.duckdb").click()
    page.get_by_label("Open a store", exact=True).fill(str(live))
    page.get_by_role("button", name="Open store", exact=True).click()
    page.wait_for_function(f"document.body.innerText.includes('{LR_RUNS} runs ·')", timeout=30_000)
    assert f"{LR_RUNS} runs" in _sidebar_text(page)
    more = shard_dir_for(copy_sweeps(app_store, tmp_path / "more", {"app-coord"}))
    for shard in more.iterdir():  # the finished runs of a sweep that is still going, as its workers leave them
        if not shard.name.startswith("."):
            shutil.copytree(shard, shard_dir_for(live) / shard.name)
    for _ in range(50):  # the dashboard's short reads may hold the file for a moment: an ingest retries
        try:
            ingest(live)
            break
        except StoreError:
            page.wait_for_timeout(100)
    total = COORD_RUNS + LR_RUNS
    page.wait_for_function(f"document.body.innerText.includes('{total} runs ·')", timeout=30_000)  # no click
    assert f"{total} runs" in _sidebar_text(page)
    page.screenshot(path=str(ARTIFACTS / "live.png"))
    page.close()
