"""The app on hospital nodes' stores (AppTest, no browser): every hospital of a real 3-node run
with metrics sharing on and off, and a store written by the previous schema version."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
from node_network import SITES
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from test_pages import PER_SITE, PROGRESS, chart_data, open_page

from hospital_node.store.reader import StoreReader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hospital_node" / "store"))
from v1_store import RUN_ID, write_v1_store  # noqa: E402

OVERVIEW_TABLE = "Hospital"


def _reviewed(store: Path, site: str):
    with StoreReader.open_readonly(store) as reader:
        return reader.reviewed_auc(site, "local").set_index("finding")


@pytest.mark.parametrize("site", SITES)
def test_with_sharing_each_hospital_sees_every_sharing_site(node_network, make_app, site):
    store = node_network.on[site]
    at = open_page(make_app("--results", store, "--min-positives", "1"), PER_SITE)

    listed = [c.value for c in at.caption if c.value.startswith("Hospitals in this view")]
    assert listed == ["Hospitals in this view: N1, N2, N3 (3 sharing)."]
    assert set(chart_data(at, 1)["site"]) == set(SITES)  # the network-wide heat map
    sources = next(d.value for d in at.dataframe if "Sent by" in d.value.columns)
    sent_by = dict(zip(sources["Hospital"], sources["Sent by"], strict=True))
    assert sent_by[site] == "this hospital"
    assert {v for k, v in sent_by.items() if k != site} <= set(SITES) - {site}
    # the hospital's own review: local-test AUC with its 95% CI, as stored
    finding = at.selectbox(key="auc_finding").value
    row = _reviewed(store, site).loc[finding]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["AUC"] == f"{row['auc']:.3f}"
    assert metrics["95% CI"] == f"{row['ci_low']:.3f}–{row['ci_high']:.3f}"
    assert not any("No evaluation" in i.value for i in at.info)


@pytest.mark.parametrize("site", SITES)
def test_without_sharing_each_hospital_sees_only_its_own_site(node_network, make_app, site):
    store = node_network.off[site]
    at = open_page(make_app("--results", store, "--min-positives", "1"), PER_SITE)

    assert any(i.value.startswith(f"Only {site}'s own figures") for i in at.info)
    assert set(chart_data(at, 0)["site"]) == {site}
    with StoreReader.open_readonly(store) as reader:
        assert reader.shared_metrics(site).empty
    assert any(i.value.startswith("Latest full review") for i in at.info)


def test_overview_of_a_node_store(node_network, make_app):
    at = open_page(make_app("--results", node_network.on["N1"]))

    assert any("Methods: ecl-pdmm" in c.value for c in at.caption)
    table = at.dataframe[0].value.set_index(OVERVIEW_TABLE)
    assert table.at["N1", "State"] == "stopped"
    assert set(table.loc[["N2", "N3"], "State"]) <= {"heard", "silent"}
    assert table.loc[["N2", "N3"], "Last step"].notna().all()  # they shared their steps
    chart = at.get("vega_lite_chart")[0].proto
    frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.datasets]
    nodes = next(f for f in frames if "marker_area" in f.columns).set_index("site")
    assert list(nodes.index) == list(SITES)
    assert nodes["is_self"].to_dict() == {"N1": True, "N2": False, "N3": False}


def test_progress_of_a_node_store_uses_its_own_test_set(node_network, make_app):
    at = open_page(make_app("--results", node_network.on["N3"]), PROGRESS)

    mean_auc = chart_data(at, 0)
    assert not mean_auc.empty and set(mean_auc["method"]) == {"ECL-PDMM"}
    assert any("cannot measure the consensus residual" in i.value for i in at.info)


def test_a_store_of_the_previous_schema_opens_unchanged(tmp_path, make_app):
    path = tmp_path / "v1.sqlite"
    write_v1_store(path)

    at = open_page(make_app("--results", path, "--min-positives", "1"), PER_SITE)

    assert any("No evaluation with confidence intervals yet" in w.value for w in at.warning)
    assert set(chart_data(at, 0)["site"]) == {RUN_ID}
    assert any(i.value.startswith(f"Only {RUN_ID}'s own figures") for i in at.info)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    version = conn.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert version == ("1",)
