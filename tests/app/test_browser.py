"""End to end: `ecl-app` on a loopback port, every page in headless Chromium, timed."""

from __future__ import annotations

import json

import pytest
from app_browser import (
    CHART,
    NEEDS_CHROMIUM,
    PAGES,
    SHOTS,
    AppStartError,
    chromium_page,
    open_page,
    page_problems,
    screenshot,
    select,
    serve_app,
    settle,
)

from hospital_node.store.reader import StoreReader

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(400),
    NEEDS_CHROMIUM,
]


def expected_auc(sim_run, site: str) -> tuple[str, str]:
    """(finding, AUC text) of the finding with the most positives at `site`, from the store."""
    with StoreReader.open_readonly(sim_run.store) as reader:
        final = reader.final_auc(sim_run.run_id, method="ecl-pdmm", test_set="common")
    rows = final[(final["site"] == site) & final["auc"].notna()]
    row = rows.sort_values("n_pos", ascending=False).iloc[0]
    return str(row["finding"]), f"{row['auc']:.3f}"


def check(page, name: str) -> None:
    assert not page_problems(page), f"{name}: {page_problems(page)}"


def visit_every_page(page, url: str) -> dict[str, float]:
    """Open each page, time it, check it, screenshot it."""
    timings = {}
    for name, path, ready in PAGES:
        timings[name] = round(open_page(page, f"{url}/{path}", ready), 2)
        check(page, name)
        screenshot(page, SHOTS / f"{name}.png")
    # The first page of a fresh server also pays for importing torch & co.: time it warm too.
    timings["overview (warm server)"] = round(open_page(page, url, PAGES[0][2]), 2)
    return timings


def drill_down(page, url: str, sim_run) -> None:
    """Per-site page: choose a site and finding; the AUC shown must be the store's."""
    from playwright.sync_api import expect

    finding, auc_text = expected_auc(sim_run, "N2")
    open_page(page, f"{url}/per-site-auc", CHART)
    select(page, "Site", "N2")
    select(page, "Finding", finding)
    expect(page.get_by_test_id("stMetricValue").first).to_have_text(auc_text)
    check(page, "per-site drill-down")
    screenshot(page, SHOTS / "per-site-auc-N2.png")


def view_case(page, url: str, sim_run) -> None:
    """Case viewer: open the first fixture DICOM; image and probabilities appear."""
    open_page(page, f"{url}/case-viewer", PAGES[-1][2])
    first = sorted(sim_run.dicom_dir.rglob("*.dcm"))[0]
    select(page, f"File in {sim_run.dicom_dir}", first.relative_to(sim_run.dicom_dir).as_posix())
    page.get_by_test_id("stImage").first.wait_for(state="visible")
    page.get_by_test_id("stDataFrame").first.wait_for(state="visible")
    check(page, "case viewer with a file")
    screenshot(page, SHOTS / "case-viewer-file.png")


def upload_hostile_then_good(page, url: str, sim_run) -> None:
    """Case viewer upload: a decompression bomb is refused with its advice, then a good file
    uploaded in the same session is shown (the server survived it)."""
    import numpy as np

    from data_tools.hostile import KINDS
    from data_tools.hostile_bytes import Bases

    bomb = KINDS["bomb_j2k"](np.random.default_rng(5), Bases(np.random.default_rng(5)), True)
    open_page(page, f"{url}/case-viewer", PAGES[-1][2])
    page.get_by_text("Upload a file", exact=True).click()
    settle(page)
    chooser = page.locator('[data-testid="stFileUploaderDropzone"] input[type="file"]')
    chooser.set_input_files(
        {"name": "bomb.dcm", "mimeType": "application/dicom", "buffer": bomb.data}
    )
    settle(page)
    alert = page.get_by_test_id("stAlertContentError").first
    alert.wait_for(state="visible")
    assert "PACS" in alert.inner_text()  # the advice for too_large / decode_failed
    good = sorted(sim_run.dicom_dir.rglob("*.dcm"))[0]
    chooser.set_input_files(str(good))
    settle(page)
    page.get_by_test_id("stImage").first.wait_for(state="visible")
    page.get_by_test_id("stDataFrame").first.wait_for(state="visible")  # the run is over
    settle(page)
    check(page, "case viewer with an upload")
    screenshot(page, SHOTS / "case-viewer-upload.png")


def test_app_end_to_end(sim_run, tmp_path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    args = ["--results", str(sim_run.store), "--dicom-dir", str(sim_run.dicom_dir)]
    args += ["--min-positives", "1"]  # the tiny fixture has < 10 positives per finding
    try:
        with serve_app(args, tmp_path / "server.log") as url, chromium_page() as page:
            timings = visit_every_page(page, url)
            drill_down(page, url, sim_run)
            view_case(page, url, sim_run)
            upload_hostile_then_good(page, url, sim_run)
    except AppStartError as exc:
        pytest.fail(f"{exc}; server log:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
    (SHOTS / "timings.json").write_text(json.dumps({"page_load_s": timings}, indent=2))
    print("page load times (s):", json.dumps(timings))
