"""Cached reads of the results store; every input (store path, run, version) is an argument."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from data_tools.labels import FINDINGS
from hospital_node.evaluation.calibration import Calibration
from hospital_node.evaluation.records import RocCurve
from hospital_node.store.reader import RunInfo, StoreReader

if TYPE_CHECKING:
    from app.viewer import StoredModel

logger = logging.getLogger(__name__)

# Cached values are the app's own data frames (copied by Streamlit's cache); models are
# cached as objects in viewer.py. Nothing read from an upload or a peer goes through here.
_CACHE = {"show_spinner": False, "max_entries": 256}


def store_version(path: str | Path) -> str:
    """A stamp that changes whenever the store or its write-ahead log changes."""
    parts = []
    for file in (Path(path), Path(f"{path}-wal")):
        try:
            stat = file.stat()
        except OSError:
            parts.append("-")
            continue
        parts.append(f"{stat.st_mtime_ns}:{stat.st_size}")
    return "/".join(parts)


@st.cache_data(**_CACHE)
def load_runs(path: str, version: str) -> pd.DataFrame:
    """All runs in the store, newest first (raises StoreError for an unusable file)."""
    with StoreReader.open_readonly(path) as reader:
        return reader.list_runs()


@st.cache_data(**_CACHE)
def load_run_info(path: str, run_id: str, version: str) -> RunInfo:
    """The run's status, configuration, topology and privacy settings."""
    with StoreReader.open_readonly(path) as reader:
        return reader.run_info(run_id)


@st.cache_data(**_CACHE)
def load_sites(path: str, run_id: str, version: str) -> pd.DataFrame:
    """Sites with split sizes and training positives per finding."""
    with StoreReader.open_readonly(path) as reader:
        return reader.sites(run_id)


@st.cache_data(**_CACHE)
def load_final_auc(path: str, run_id: str, test_set: str, version: str) -> pd.DataFrame:
    """Final AUC with CI for every method and site on one test set."""
    with StoreReader.open_readonly(path) as reader:
        return reader.final_auc(run_id, test_set=test_set)


@st.cache_data(**_CACHE)
def load_auc_history(
    path: str, run_id: str, method: str, site: str, version: str, test_set: str = "common"
) -> pd.DataFrame:
    """Every evaluation of one (method, site) on one test set (common by default)."""
    with StoreReader.open_readonly(path) as reader:
        return reader.auc_history(run_id, method=method, site=site, test_set=test_set)


@st.cache_data(**_CACHE)
def load_reviewed_auc(path: str, run_id: str, test_set: str, version: str) -> pd.DataFrame:
    """Per (method, site) the newest evaluation with CIs, else the newest (`has_ci` says)."""
    with StoreReader.open_readonly(path) as reader:
        return reader.reviewed_auc(run_id, test_set)


@st.cache_data(**_CACHE)
def load_calibration(
    path: str, run_id: str, method: str, site: str, test_set: str, version: str
) -> dict[str, Calibration]:
    """The latest reliability diagram per finding of one (method, site, test set)."""
    with StoreReader.open_readonly(path) as reader:
        return reader.calibration(run_id, method, site, test_set)


@st.cache_data(**_CACHE)
def load_subgroups(
    path: str, run_id: str, method: str, site: str, test_set: str, version: str
) -> pd.DataFrame:
    """AUC per finding in each subgroup (sex, age band, view) of the latest review."""
    with StoreReader.open_readonly(path) as reader:
        return reader.subgroup_auc(run_id, method=method, site=site, test_set=test_set)


@st.cache_data(**_CACHE)
def load_shared(path: str, run_id: str, version: str) -> pd.DataFrame:
    """Per-finding summaries this node shared and received (empty when it does not share)."""
    with StoreReader.open_readonly(path) as reader:
        return reader.shared_metrics(run_id)


@st.cache_data(**_CACHE)
def load_metrics(path: str, run_id: str, names: tuple[str, ...], version: str) -> pd.DataFrame:
    """Per-step scalars with the given names, every method and site."""
    with StoreReader.open_readonly(path) as reader:
        return reader.metrics(run_id, names=list(names))


@st.cache_data(**_CACHE)
def load_rocs(
    path: str, run_id: str, method: str, site: str, test_set: str, version: str
) -> dict[str, RocCurve]:
    """Stored final ROC curves of one (method, site, test set), keyed by finding."""
    curves = {}
    with StoreReader.open_readonly(path) as reader:
        for finding in FINDINGS:
            curve = reader.roc(run_id, method, site, test_set, finding)
            if curve is not None:
                curves[finding] = curve
    return curves


@st.cache_data(**_CACHE)
def load_exchanges(path: str, run_id: str, version: str) -> pd.DataFrame:
    """Message and byte totals per directed edge and method."""
    with StoreReader.open_readonly(path) as reader:
        return reader.exchanges(run_id)


@st.cache_data(**_CACHE)
def load_node_status(path: str, run_id: str, version: str) -> pd.DataFrame:
    """Current state of every (method, site)."""
    with StoreReader.open_readonly(path) as reader:
        return reader.node_status(run_id)


@st.cache_data(**_CACHE)
def load_privacy(path: str, run_id: str, version: str) -> pd.DataFrame:
    """Privacy spent per (method, site); empty when the run used no privacy mode."""
    with StoreReader.open_readonly(path) as reader:
        return reader.privacy(run_id)


@st.cache_data(**_CACHE)
def load_model_list(path: str, run_id: str, version: str) -> pd.DataFrame:
    """Stored final models (without weights): method, site, step, n_bytes, sha256."""
    with StoreReader.open_readonly(path) as reader:
        return reader.list_models(run_id).drop(columns=["model_config_json"])


@st.cache_resource(show_spinner=False, max_entries=8)
def load_stored_model(path: str, run_id: str, method: str, site: str, version: str) -> StoredModel:
    """A site's final model (safetensors from the store, never unpickled), shared read-only."""
    # Imported here: MONAI takes seconds to import and only the case viewer needs it.
    from app.viewer import StoredModel, input_size_of

    with StoreReader.open_readonly(path) as reader:
        config, state = reader.load_model(run_id, method, site)
        run_config = reader.run_info(run_id).config
    return StoredModel(config=config, state=state, input_size=input_size_of(config, run_config))


@st.cache_data(**_CACHE)
def load_latest_auc(path: str, run_id: str, test_set: str, version: str) -> pd.DataFrame:
    """The newest evaluation of every (method, site), final or not: for runs still training."""
    with StoreReader.open_readonly(path) as reader:
        history = reader.auc_history(run_id, test_set=test_set)
    if history.empty:
        return history
    newest = history.groupby(["method", "site"])["step"].transform("max")
    return history[history["step"] == newest].reset_index(drop=True)
