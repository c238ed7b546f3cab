"""Case viewer: one DICOM, the chosen site model's 14 probabilities and a Grad-CAM overlay."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, data
from app.review import METHOD_LABELS, default_method, method_order, site_order
from app.settings import AppContext
from app.shell import run_page
from app.viewer import (
    Case,
    CaseError,
    StoredModel,
    build_classifier,
    grad_cam,
    list_dicom_files,
    load_case,
    overlay,
    predict_probabilities,
    probability_table,
    resolve_in_folder,
)

logger = logging.getLogger("app.views.case_viewer")  # pages run as __main__

FOLDER, UPLOAD = "A file from the DICOM folder", "Upload a file"
DISCLAIMER = (
    "Research use only. This is not a diagnostic device: the probabilities come from a model "
    "trained in a study, and they must not be used to diagnose or treat a patient."
)


def _choose_model(context: AppContext) -> tuple[str, str] | None:
    models = data.load_model_list(context.store_path, context.run_id, context.version)
    if models.empty:
        st.info("This run has stored no final model yet. Come back when training has finished.")
        return None
    methods = method_order(models["method"])
    left, right = st.columns(2)
    method = left.selectbox(
        "Method",
        methods,
        index=methods.index(default_method(methods)),
        format_func=lambda m: METHOD_LABELS.get(m, m),
        key="viewer_method",
    )
    sites = site_order(models.loc[models["method"] == method, "site"])
    site = right.selectbox("Model of site", sites, key="viewer_site")
    return method, site


def _read_source(context: AppContext) -> Case | None:
    """The case from the folder or an upload (processed in memory, never written to disk)."""
    folder = context.settings.dicom_dir
    sources = [FOLDER, UPLOAD] if folder is not None else [UPLOAD]
    source = st.radio("Image", sources, horizontal=True, key="viewer_source")
    if source == FOLDER and folder is not None:
        files = list_dicom_files(folder)
        if not files:
            st.info(f"No DICOM files found in {folder}.")
            return None
        name = st.selectbox(
            f"File in {folder}",
            files,
            index=None,
            key="viewer_file",
            placeholder="Choose or type a file name",
        )
        if name is None:
            return None
        return load_case(resolve_in_folder(folder, name))
    if folder is None:
        st.caption("Start the app with `--dicom-dir DIR` to open files from a folder.")
    upload = st.file_uploader("DICOM file (kept in memory only, never stored)", key="viewer_upload")
    if upload is None:
        return None
    return load_case(upload.getvalue())


def _show_probabilities(table: pd.DataFrame, site: str, test_set: str) -> None:
    st.altair_chart(charts.probability_chart(table), width="stretch")
    shown = pd.DataFrame(
        {
            "Finding": table["finding"],
            "Probability": table["probability"].map(lambda p: f"{p:.3f}"),
            "Operating point": table["threshold"].map(lambda t: "—" if pd.isna(t) else f"{t:.3f}"),
            "Versus operating point": table["call"],
        }
    )
    st.dataframe(shown, hide_index=True, width="stretch", height="content")
    where = "the common test set" if test_set == "common" else f"{site}'s own test patients"
    st.caption(
        f"Operating points: {site}'s thresholds that maximise sensitivity + specificity on "
        f"{where}; 'above' means the model would call this finding at that threshold."
    )


def _show_case(case: Case, stored: StoredModel, table: pd.DataFrame) -> None:
    ranked = table.sort_values("probability", ascending=False)["finding"].tolist()
    finding = st.selectbox("Heat map for finding", ranked, key="viewer_cam_finding")
    model = build_classifier(stored)
    heat = grad_cam(model, case.image, stored.input_size, finding)
    left, right = st.columns(2)
    left.image(case.image, clamp=True, caption="Radiograph (windowed)", width="stretch")
    right.image(overlay(case.image, heat), caption=f"Grad-CAM: {finding}", width="stretch")
    s = case.summary
    st.caption(
        f"{s.get('modality') or '?'} · {s.get('photometric_interpretation') or '?'} · "
        f"{s.get('rows')} × {s.get('columns')} px · view {s.get('view_position') or '?'} · "
        f"{s.get('transfer_syntax') or ''}. Red = regions that raised the finding's score most."
    )


def render(context: AppContext) -> None:
    """The case viewer page."""
    st.title("Case viewer")
    st.warning(DISCLAIMER, icon=":material/info:")
    choice = _choose_model(context)
    if choice is None:
        return
    method, site = choice
    try:
        case = _read_source(context)
    except CaseError as exc:
        logger.info("case refused: %s", exc.detail or exc.message)
        st.error(exc.message, icon=":material/error:")
        return
    if case is None:
        return
    stored = data.load_stored_model(
        context.store_path, context.run_id, method, site, context.version
    )
    probabilities = predict_probabilities(build_classifier(stored), case.image, stored.input_size)
    # the common test set's operating points (simulation), else the site's own (a node)
    for test_set in ("common", "local"):
        curves = data.load_rocs(
            context.store_path, context.run_id, method, site, test_set, context.version
        )
        if curves:
            break
    table = probability_table(np.asarray(probabilities), curves)
    _show_case(case, stored, table)
    st.subheader(f"Probabilities of the {site} model ({METHOD_LABELS.get(method, method)})")
    _show_probabilities(table, site, test_set)


if __name__ == "__main__":
    run_page(render)
