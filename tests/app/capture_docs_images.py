"""Take the screenshots of docs/clinician.md (docs/img/app-*.png) from a results store.

    .venv/bin/python tests/app/capture_docs_images.py --results build/demo/results.sqlite \\
        --dicom-dir build/demo/data [--out docs/img]

Starts ecl-app on a free loopback port, opens each page in headless Chromium (Debian's
/usr/bin/chromium), and writes palette PNGs 1000 px wide. On a simulation's store, when the
newest run has no privacy mode but another run has, the privacy page is shown for that run.
On a hospital node's store (what docs/clinician.md shows, from `DEMO_STEPS=1000
scripts/network_demo.sh`: `--results DEMO_DIR/N2/state/results.sqlite --dicom-dir
DEMO_DIR/data/N2`) the per-site page is cut in two: the heat maps, and the drill-down.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from app_browser import (
    CHART,
    PAGES,
    WIDTH,
    open_page,
    page_problems,
    screenshot,
    select,
    serve_app,
    settle,
)
from PIL import Image

from app.shell import PAGES as APP_PAGES
from hospital_node.store.reader import StoreReader

logger = logging.getLogger("capture_docs_images")
TITLES = tuple(title for _, title, _, _ in APP_PAGES)  # side-bar link texts, PAGES order
COLOURS = 128  # palette size: keeps each PNG small without visible banding in the UI


def shrink(path: Path) -> None:
    """Rewrite a screenshot as an optimised palette PNG."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def runs_of(store: Path) -> tuple[str, str | None, str]:
    """(run for the pages: the newest without privacy mode, else the newest; a run with a
    privacy mode for the privacy page, or None; that run's best-covered hospital)."""
    with StoreReader.open_readonly(store) as reader:
        runs = [str(r) for r in reader.list_runs()["run_id"]]
        private = [r for r in runs if reader.run_info(r).privacy is not None]
        main = next((r for r in runs if r not in private), runs[0])
        final = reader.final_auc(main, test_set="common")
    hospitals = final[final["site"] != "all"]
    site = str(hospitals.groupby("site")["n_pos"].sum().idxmax()) if not hospitals.empty else ""
    return main, (private[0] if private and main not in private else None), site


def go_to(page, title: str, ready: str) -> None:
    """Open a page through the side bar (keeps the session, so the chosen run stays)."""
    page.get_by_test_id("stSidebarNavLink").filter(has_text=title).click()
    settle(page)
    page.locator(ready).first.wait_for(state="visible")
    settle(page)


def capture_detail(page, out: Path, *, top_too: bool = False) -> None:
    """The drill-down part of the per-site page, from its heading to the end (and, with
    `top_too`, the part above it as app-per-site-auc.png)."""
    heading = page.get_by_role("heading", name="One site in detail")
    full = screenshot(page, out / "_full.png")
    top = int(heading.bounding_box()["y"]) - 16 if heading.count() else 0
    with Image.open(full) as image:
        image.crop((0, max(top, 0), WIDTH, image.height)).save(out / "app-per-site-detail.png")
        if top_too:
            image.crop((0, 0, WIDTH, max(top, 1))).save(out / "app-per-site-auc.png")
    full.unlink()


def best_reviewed_finding(store: Path, run_id: str) -> str | None:
    """The finding with the most positive test images in the node's newest full review."""
    with StoreReader.open_readonly(store) as reader:
        reviewed = reader.reviewed_auc(run_id, "local")
    rows = reviewed[reviewed["auc"].notna() & reviewed["ci_low"].notna()]
    return str(rows.sort_values("n_pos").iloc[-1]["finding"]) if not rows.empty else None


def capture_node(page, url: str, store: Path, dicom_dir: Path | None, out: Path) -> list[Path]:
    """Every page of a hospital node's store (one run, its own test set)."""
    with StoreReader.open_readonly(store) as reader:
        run_id = str(reader.list_runs()["run_id"].iloc[0])
    open_page(page, url, CHART)
    names = {name: out / f"app-{name}.png" for name, _, _ in PAGES}
    for (name, _, ready), title in zip(PAGES, TITLES, strict=True):
        go_to(page, title, ready)
        if name == "per-site-auc":
            finding = best_reviewed_finding(store, run_id)
            if finding:
                select(page, "Finding", finding)
            capture_detail(page, out, top_too=True)
            continue
        if name == "case-viewer" and dicom_dir is not None:
            first = sorted(dicom_dir.rglob("*.dcm"))[0]
            select(page, f"File in {dicom_dir}", first.relative_to(dicom_dir).as_posix())
            page.get_by_test_id("stImage").first.wait_for(state="visible")
        if page_problems(page):
            raise RuntimeError(f"{name}: {page_problems(page)}")
        screenshot(page, names[name])
    return [*names.values(), out / "app-per-site-detail.png"]


def capture(page, url: str, store: Path, dicom_dir: Path | None, out: Path) -> list[Path]:
    main_run, private, site = runs_of(store)
    open_page(page, url, CHART)
    select(page, "Run", f"{main_run} (finished)", sidebar=True)
    names = {name: out / f"app-{name}.png" for name, _, _ in PAGES}
    for (name, _, ready), title in zip(PAGES, TITLES, strict=True):
        go_to(page, title, ready)
        if name == "privacy" and private is not None:
            select(page, "Run", f"{private} (finished)", sidebar=True)
        if name == "case-viewer" and dicom_dir is not None:
            first = sorted(dicom_dir.rglob("*.dcm"))[0]
            select(page, f"File in {dicom_dir}", first.relative_to(dicom_dir).as_posix())
            page.get_by_test_id("stImage").first.wait_for(state="visible")
        if page_problems(page):
            raise RuntimeError(f"{name}: {page_problems(page)}")
        screenshot(page, names[name])
        if name == "privacy" and private is not None:
            select(page, "Run", f"{main_run} (finished)", sidebar=True)
    go_to(page, TITLES[1], CHART)
    if site:
        select(page, "Site", site)
    capture_detail(page, out)
    return [*names.values(), out / "app-per-site-detail.png"]


def main(argv: list[str] | None = None) -> int:
    from app_browser import chromium_page

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--dicom-dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    dicom_dir = args.dicom_dir.resolve() if args.dicom_dir is not None else None
    app_args = ["--results", str(args.results)]
    if dicom_dir is not None:
        app_args += ["--dicom-dir", str(dicom_dir)]
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        with StoreReader.open_readonly(args.results) as reader:
            node = set(reader.list_runs()["kind"]) == {"node"}
        with serve_app(app_args, log) as url, chromium_page() as page:
            take = capture_node if node else capture
            written = take(page, url, args.results, dicom_dir, args.out)
    for path in written:
        shrink(path)
        logger.info("wrote %s (%d kB)", path, path.stat().st_size // 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
