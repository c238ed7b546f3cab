"""Headless-Chromium helpers shared by the browser test and the docs screenshot script."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "screenshots"  # screenshots and page-load timings of the browser tests
NEEDS_CHROMIUM = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
)
START_TIMEOUT_S = 90.0
STEP_TIMEOUT_MS = 60_000
WIDTH = 1000
CHART = '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
# (name, URL path, the page's main element: page load = navigation until it is visible)
PAGES = [
    ("overview", "", CHART),
    ("per-site-auc", "per-site-auc", CHART),
    ("training-progress", "training-progress", CHART),
    ("privacy", "privacy", '[data-testid="stAlert"], ' + CHART),
    ("case-viewer", "case-viewer", '[data-testid="stSelectbox"]'),
]


class AppStartError(RuntimeError):
    """ecl-app did not come up; the message says why."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll Streamlit's health endpoint until it answers 'ok'."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AppStartError(f"ecl-app exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AppStartError(f"ecl-app did not answer on {url} within {timeout_s:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group; kill it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def serve_app(app_args: Sequence[str], log_path: Path, *, port: int | None = None) -> Iterator[str]:
    """Run `ecl-app APP_ARGS` on loopback (`port`, or a free one); yields its URL; always stops
    it."""
    port = port or free_port()
    command = [sys.executable, "-m", "app.launch", *app_args]
    command += ["--port", str(port), "--address", "127.0.0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, process, START_TIMEOUT_S)
            yield url
        finally:
            _stop(process)


@contextlib.contextmanager
def chromium_browser() -> Iterator:
    """A headless Chromium (Debian's /usr/bin/chromium), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=STEP_TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser):
    """A page in a fresh context (its own cookies), with the test's size and timeout."""
    page = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    return page


@contextlib.contextmanager
def chromium_page() -> Iterator:
    """A headless Chromium page, closed afterwards."""
    with chromium_browser() as browser:
        yield new_page(browser)


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


def page_problems(page) -> list[str]:
    """Texts of Streamlit exception boxes and error alerts on the page."""
    boxes = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    return boxes.all_inner_texts()


def open_page(page, url: str, ready: str) -> float:
    """Navigate, wait for the page's main element; seconds until it was visible."""
    started = time.perf_counter()
    page.goto(url)
    page.locator(ready).first.wait_for(state="visible")
    elapsed = time.perf_counter() - started
    settle(page)
    return elapsed


def screenshot(page, path: Path) -> Path:
    """The whole page (the main area scrolls, so grow the viewport to its height first)."""
    height = page.evaluate(
        "Math.max(900, document.querySelector('[data-testid=\"stMain\"]').scrollHeight)"
    )
    page.set_viewport_size({"width": WIDTH, "height": min(int(height), 4000)})
    page.wait_for_timeout(300)
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    return path


def select(page, label: str, option: str, *, sidebar: bool = False) -> None:
    """Choose `option` in the select box labelled `label` (typing filters the options)."""
    scope = page.get_by_test_id("stSidebar") if sidebar else page
    box = scope.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    box.scroll_into_view_if_needed()
    if box.locator("input").input_value() == option:
        return  # already chosen (the list would not offer it again)
    # Open the list first: filling alone does not always open it (seen with Streamlit 1.67).
    box.locator("input").click()
    box.locator("input").fill(option)
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)
