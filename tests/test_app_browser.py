"""The dashboard in a real browser: `ssmscope app` on a free localhost port, headless Chromium via Playwright.

Skipped (with the reason) only when no Chromium is installed or Playwright for Python is missing.
Screenshots go to test-artifacts/ (gitignored). The server is always stopped, by its process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from app_store import app_store, free_port, wait_for_health  # noqa: F401

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
def server(app_store):  # noqa: F811
    """The dashboard over the fixture store, started as `ssmscope app --db … --port …`; yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
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
    page.wait_for_function(f"document.querySelectorAll('{TRACES}').length >= 32", timeout=30_000)
    page.wait_for_timeout(500)  # let the sidebar and captions settle for the screenshot
    assert page.locator(".js-plotly-plot").count() == 1
    assert page.locator(TRACES).count() >= 4 * 4 * 2  # rows × panels × layers, plus bands, runs and references
    titles = page.locator(".js-plotly-plot .g-ytitle").all_text_contents()
    assert any("over the probe batch" in t for t in titles), titles  # the convention from the URL, on the axis
    legend = page.locator(".js-plotly-plot .legend .traces").all_text_contents()
    assert legend[:2] == ["layer 0", "layer 1"], legend
    columns = page.locator(".js-plotly-plot .annotation-text").all_text_contents()
    assert {"sp · zoh", "sp · euler", "mup-ssm · zoh", "mup-ssm · euler"} <= set(columns)
    assert "convention=l2" in page.url and "sweep=app-coord" in page.url
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "coordinate-check.png"), full_page=True)
    page.close()


def test_lr_transfer_renders_in_chromium(server, browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(f"{server}/lr-transfer", wait_until="domcontentloaded")
    page.wait_for_selector(TRACES, timeout=90_000)
    page.wait_for_timeout(500)
    assert page.locator(".js-plotly-plot").count() == 1
    legend = page.locator(".js-plotly-plot .legend .traces").all_text_contents()
    assert {"N_u = 16", "N_u = 32", "N_u = 64", "diverged"} <= set(legend), legend
    page.screenshot(path=str(ARTIFACTS / "lr-transfer.png"), full_page=True)
    page.close()


@pytest.mark.skipif(figure_export.static_export_problem() is not None, reason="kaleido or a Chromium is missing")
def test_static_svg_export_through_kaleido():
    import plotly.graph_objects as go

    svg = figure_export.to_static(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])), "svg")
    assert svg.lstrip().startswith(b"<svg")
