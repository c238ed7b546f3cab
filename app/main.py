"""Streamlit script of ecl-app (run it with `ecl-app --results PATH`, not directly)."""

from __future__ import annotations

import logging
import sys

import streamlit as st

from app.settings import CONTEXT_KEY
from app.shell import APP_TITLE, GENERIC_ERROR, configure_logging, run_navigation, start

logger = logging.getLogger("app.main")


def main(argv: list[str]) -> None:
    """Pick the run, then draw the chosen page; nothing escapes as a traceback."""
    configure_logging()
    st.set_page_config(page_title=APP_TITLE, page_icon=":material/radiology:", layout="wide")
    st.sidebar.title(APP_TITLE)
    try:
        context = start(argv)
    except Exception:
        logger.exception("the app failed to start")
        st.error(GENERIC_ERROR, icon=":material/error:")
        return
    if context is None:
        return
    st.session_state[CONTEXT_KEY] = context
    run_navigation()


main(sys.argv[1:])
