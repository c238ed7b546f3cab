"""The app's frame: run choice in the sidebar, navigation, and the page error boundary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from app.access import AllowListError, admitted
from app.data import load_runs, store_version
from app.settings import CONTEXT_KEY, AppContext, SettingsError, parse_app_args
from hospital_node.store.reader import StoreError

logger = logging.getLogger(__name__)

APP_TITLE = "ECL chest X-ray review"
USAGE = "ecl-app --results PATH/results.sqlite [--dicom-dir DIR]"
STALE_AFTER_S = 600  # a 'running' run silent this long has probably stopped
PAGES = (
    ("views/overview.py", "Overview", ":material/hub:", "overview"),
    ("views/per_site.py", "Per-site AUC review", ":material/grid_on:", "per-site-auc"),
    ("views/progress.py", "Training progress", ":material/show_chart:", "training-progress"),
    ("views/privacy.py", "Privacy", ":material/shield:", "privacy"),
    ("views/case_viewer.py", "Case viewer", ":material/radiology:", "case-viewer"),
)
GENERIC_ERROR = (
    "Something went wrong while drawing this page. Reload the page (press R). If the problem "
    "stays, tell your IT contact the time it happened: the details are in the app's log."
)


def configure_logging() -> None:
    """Send the app's log (with any traceback) to the server's terminal, never to the page."""
    log = logging.getLogger("app")
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def show_store_error(exc: StoreError) -> None:
    """The store's own message plus what to do; never a traceback."""
    logger.warning("results store unusable: %s", exc)
    st.error(f"The results store cannot be read. {exc}", icon=":material/error:")
    st.info(
        "What to do: start the app on a results store written by ecl-sim or hospital-node, "
        f"e.g. `{USAGE}`. If a simulation has only just started, wait a minute and reload. "
        "If the file was written by another version of ecl-hospitals, open it with that "
        "version or re-run the experiment."
    )


def run_page(render: Callable[[AppContext], None]) -> None:
    """Run one page with the session's context; errors become clear messages."""
    context = st.session_state.get(CONTEXT_KEY)
    if not isinstance(context, AppContext):
        st.error("The app has not loaded a results store yet. Open the app's start page.")
        return
    try:
        render(context)
    except StoreError as exc:
        show_store_error(exc)
    except Exception:
        code = getattr(render, "__code__", None)  # page scripts run as __main__: name the file
        logger.exception("page %s failed", Path(code.co_filename).name if code else render)
        st.error(GENERIC_ERROR, icon=":material/error:")


def _run_label(runs: pd.DataFrame) -> Callable[[str], str]:
    status = dict(zip(runs["run_id"], runs["status"], strict=True))
    return lambda run_id: f"{run_id} ({status.get(run_id, '?')})"


def _choose_run(runs: pd.DataFrame) -> str:
    """The run to show: a select box when the store holds several."""
    run_ids = [str(r) for r in runs["run_id"]]
    if len(run_ids) == 1:
        st.sidebar.markdown(f"**Run:** {_run_label(runs)(run_ids[0])}")
        return run_ids[0]
    return st.sidebar.selectbox(
        "Run", run_ids, format_func=_run_label(runs), key="run_id", help="Newest first"
    )


def start(argv: list[str]) -> AppContext | None:
    """Parse the settings, open the store and pick the run; None after showing an error."""
    try:
        settings = parse_app_args(argv)
    except SettingsError as exc:
        st.error(f"The app was started with arguments it cannot use: {exc}.")
        st.info(f"Start it with `{USAGE}`.")
        return None
    try:
        if not admitted(settings):  # the login page, before anything reads the store
            return None
    except AllowListError as exc:
        logger.error("%s", exc)
        st.error(f"The app's list of users cannot be used: {exc}. Tell your IT contact.")
        return None
    version = store_version(settings.results)
    try:
        runs = load_runs(str(settings.results), version)
    except StoreError as exc:
        show_store_error(exc)
        return None
    if runs.empty:
        st.info(
            "The results store holds no run yet. Start a simulation (ecl-sim) or a hospital "
            "node writing to it, then reload this page."
        )
        return None
    st.sidebar.caption(f"Results store: `{settings.results}`")
    run_id = _choose_run(runs)
    return AppContext(settings=settings, run_id=run_id, version=version)


def run_navigation() -> None:
    """Show the five pages in the sidebar and run the chosen one.

    File pages (not callables) so that tests can open each one (AppTest.switch_page).
    """
    pages = [
        st.Page(path, title=title, icon=icon, url_path=url, default=(i == 0))
        for i, (path, title, icon, url) in enumerate(PAGES)
    ]
    st.navigation(pages, position="sidebar").run()


def seconds_since(timestamp: str, now: datetime | None = None) -> float | None:
    """Seconds from an ISO-8601 timestamp until now; None when it cannot be parsed."""
    try:
        then = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return None
    return ((now or datetime.now(UTC)) - then).total_seconds()
