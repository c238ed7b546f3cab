"""End to end on a real node network: `ecl-app` on a hospital's store, in headless Chromium.

The stores come from three `hospital-node run` processes on loopback (node_network.py), first
with `[metrics] share = false`, then `true`. N2's per-site page must show its own local-test
AUCs with CIs (never 'no evaluation'); with sharing on, all three hospitals side by side; with
sharing off, only its own. (test_node_pages.py checks every hospital's store without a
browser; each Streamlit server start costs seconds, so the browser visits one hospital.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from app_browser import (
    CHART,
    NEEDS_CHROMIUM,
    SHOTS,
    AppStartError,
    chromium_page,
    open_page,
    page_problems,
    screenshot,
    select,
    serve_app,
)
from node_network import SITES

from hospital_node.store.reader import StoreReader

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(900),
    NEEDS_CHROMIUM,
]
LISTED = re.compile(r"Hospitals in this view: ([A-Za-z0-9, -]+) \(")


def expected_review(store: Path, site: str) -> tuple[str, str, str]:
    """(finding, AUC text, CI text) of the reviewed finding with the most positives."""
    with StoreReader.open_readonly(store) as reader:
        reviewed = reader.reviewed_auc(site, "local")
    rows = reviewed[reviewed["auc"].notna() & reviewed["ci_low"].notna()]
    assert not rows.empty, f"{site}: no local-test AUC with a CI in {store}"
    row = rows.sort_values(["n_pos", "finding"], ascending=[False, True]).iloc[0]
    return str(row["finding"]), f"{row['auc']:.3f}", f"{row['ci_low']:.3f}–{row['ci_high']:.3f}"


def review_page(page, url: str, site: str, store: Path) -> tuple[float, str]:
    """Open the per-site page; check the site's own AUC and CI; (load time, page text)."""
    from playwright.sync_api import expect

    seconds = open_page(page, f"{url}/per-site-auc", CHART)
    text = page.get_by_test_id("stMain").inner_text()
    assert "No evaluation" not in text and "not evaluated" not in text, text[:500]
    assert "own held-out test patients" in text and "Latest full review" in text
    finding, auc, ci = expected_review(store, site)
    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text("Finding", exact=True))
    if finding not in box.inner_text():  # the page opens on the first finding with an AUC
        select(page, "Finding", finding)
    values = page.get_by_test_id("stMetricValue")
    expect(values.nth(0)).to_have_text(auc)
    expect(values.nth(1)).to_have_text(ci)
    assert not page_problems(page), page_problems(page)
    return seconds, page.get_by_test_id("stMain").inner_text()


def visit(page, store: Path, site: str, log: Path, *, shot: str) -> tuple[dict, str]:
    """Serve one store; overview, per-site and progress pages; timings and per-site text."""
    timings = {}
    with serve_app(["--results", str(store), "--min-positives", "1"], log) as url:
        timings["overview"] = round(open_page(page, url, CHART), 2)
        overview = page.get_by_test_id("stMain").inner_text()
        assert "Methods: ecl-pdmm" in overview and not page_problems(page)
        screenshot(page, SHOTS / f"{shot}-overview.png")
        seconds, text = review_page(page, url, site, store)
        timings["per-site-auc"] = round(seconds, 2)
        screenshot(page, SHOTS / f"{shot}-per-site-auc.png")
        progress = open_page(page, f"{url}/training-progress", CHART)
        timings["training-progress"] = round(progress, 2)
        assert not page_problems(page)
    return timings, text


def test_a_hospital_sees_its_review_and_the_sharing_hospitals(node_network, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    site, timings = "N2", {}
    try:
        with chromium_page() as page:
            timings["share on"], text = visit(
                page, node_network.on[site], site, tmp_path / "on.log", shot="node-share-on"
            )
            listed = LISTED.search(text)
            assert listed and listed.group(1).split(", ") == list(SITES), text[-800:]
            timings["share off"], text = visit(
                page, node_network.off[site], site, tmp_path / "off.log", shot="node-share-off"
            )
            assert f"Only {site}'s own figures" in text and not LISTED.search(text)
    except AppStartError as exc:
        pytest.fail(f"{exc}; server logs in {tmp_path}")
    (SHOTS / "node-timings.json").write_text(json.dumps({"page_load_s": timings}, indent=2))
    print("node page load times (s):", json.dumps(timings))
