"""End to end: `ecl-app` on a loopback port, every page in headless Chromium, timed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hospital_node.store_read import StoreReader

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
    ),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "screenshots"
START_TIMEOUT_S = 60.0
STEP_TIMEOUT_MS = 30_000
WIDTH = 1000
CHART = '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
# (name, URL path, the page's main element: page load = navigation until it is visible)
PAGES = [
    ("overview", "", CHART),
    ("per-site-auc", "per-site-auc", CHART),
    ("training-progress", "training-progress", CHART),
    ("privacy", "privacy", '[data-testid="stAlert"]'),
    ("case-viewer", "case-viewer", '[data-testid="stSelectbox"]'),
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll Streamlit's health endpoint until it answers 'ok'."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ecl-app exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"ecl-app did not answer on {url} within {timeout_s:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group; kill it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture()
def app_url(sim_run, tmp_path) -> Iterator[str]:
    """`ecl-app` serving the fixture store on a free loopback port; always stopped."""
    port = free_port()
    command = [sys.executable, "-m", "app.launch", "--results", str(sim_run.store)]
    command += ["--dicom-dir", str(sim_run.dicom_dir), "--min-positives", "1"]
    command += ["--port", str(port), "--address", "127.0.0.1"]
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, START_TIMEOUT_S)
        yield url
    finally:
        stop(process)
        log.close()


def settle(page) -> None:
    """Wait until Streamlit has finished running the script (its 'running' widget is gone).

    A rerun triggered by a widget may not have started yet: give the widget a moment to
    appear first.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    running = page.locator('[data-testid="stStatusWidget"]')
    with contextlib.suppress(PlaywrightTimeout):  # the run was already over, or too short
        running.wait_for(state="attached", timeout=1500)
    running.wait_for(state="detached", timeout=STEP_TIMEOUT_MS)
    page.wait_for_timeout(300)  # charts draw after the run ends


def check_no_errors(page, name: str) -> None:
    """No Streamlit exception box and no error alert on the page."""
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{name}: {exceptions.all_inner_texts()}"
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{name}: {errors.all_inner_texts()}"


def screenshot(page, name: str) -> Path:
    """The whole page (the main area scrolls, so grow the viewport to its height first)."""
    height = page.evaluate(
        "Math.max(900, document.querySelector('[data-testid=\"stMain\"]').scrollHeight)"
    )
    page.set_viewport_size({"width": WIDTH, "height": min(int(height), 4000)})
    page.wait_for_timeout(300)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    return path


def select(page, label: str, option: str) -> None:
    """Choose `option` in the select box labelled `label`."""
    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    box.scroll_into_view_if_needed()
    box.locator("input").fill(option)  # the select box filters its options as you type
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def expected_auc(sim_run, site: str) -> tuple[str, str]:
    """(finding, AUC text) of the finding with the most positives at `site`, from the store."""
    with StoreReader.open_readonly(sim_run.store) as reader:
        final = reader.final_auc(sim_run.run_id, method="ecl-pdmm", test_set="common")
    rows = final[(final["site"] == site) & final["auc"].notna()]
    row = rows.sort_values("n_pos", ascending=False).iloc[0]
    return str(row["finding"]), f"{row['auc']:.3f}"


def visit_pages(page, url: str) -> dict[str, float]:
    """Open every page, time it, check it, screenshot it."""
    timings = {}
    for name, path, ready in PAGES:
        started = time.perf_counter()
        page.goto(f"{url}/{path}")
        page.locator(ready).first.wait_for(state="visible")
        timings[name] = round(time.perf_counter() - started, 2)
        settle(page)
        check_no_errors(page, name)
        screenshot(page, name)
    return timings


def test_app_end_to_end(app_url, sim_run) -> None:
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    finding, auc_text = expected_auc(sim_run, "N2")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=STEP_TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            timings = visit_pages(page, app_url)
            page.goto(f"{app_url}/per-site-auc")
            page.locator(CHART).first.wait_for(state="visible")
            settle(page)
            select(page, "Site", "N2")
            select(page, "Finding", finding)
            expect(page.get_by_test_id("stMetricValue").first).to_have_text(auc_text)
            check_no_errors(page, "per-site drill-down")
            screenshot(page, "per-site-auc-N2")
            page.goto(f"{app_url}/case-viewer")
            page.locator(PAGES[-1][2]).first.wait_for(state="visible")
            settle(page)
            first_file = sorted(p for p in sim_run.dicom_dir.rglob("*.dcm"))[0]
            select(
                page,
                f"File in {sim_run.dicom_dir}",
                first_file.relative_to(sim_run.dicom_dir).as_posix(),
            )
            page.get_by_test_id("stImage").first.wait_for(state="visible")
            check_no_errors(page, "case viewer with a file")
            screenshot(page, "case-viewer-file")
        finally:
            browser.close()
    (SHOTS / "timings.json").write_text(json.dumps({"page_load_s": timings}, indent=2))
    print("page load times (s):", json.dumps(timings))
