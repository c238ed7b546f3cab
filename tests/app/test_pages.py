"""Every page of the app (AppTest, no browser) against the store of a tiny real simulation."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from data_tools.labels import FINDINGS
from hospital_node.store.reader import StoreReader
from hospital_node.store.writer import ResultsStore

PER_SITE = "views/per_site.py"
PROGRESS = "views/progress.py"
PRIVACY = "views/privacy.py"
VIEWER = "views/case_viewer.py"
METHOD = "ecl-pdmm"


def open_page(at: AppTest, page: str | None = None) -> AppTest:
    """Run the app, switch to `page`, and check that nothing raised."""
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_data(at: AppTest, index: int = 0) -> pd.DataFrame:
    """The data frame behind the index-th Altair chart on the page."""
    chart = at.get("vega_lite_chart")[index]
    return convert_arrow_bytes_to_pandas_df(chart.proto.datasets[0].data.data)


def findings_table(at: AppTest) -> pd.DataFrame:
    """The drill-down's table of the 14 findings (AUC, CI, counts, operating point, ECE)."""
    return next(d.value for d in at.dataframe if "Sensitivity" in d.value.columns)


def final_auc(store: Path, run_id: str, test_set: str = "common") -> pd.DataFrame:
    with StoreReader.open_readonly(store) as reader:
        return reader.final_auc(run_id, test_set=test_set)


def best_finding(final: pd.DataFrame, method: str, site: str) -> pd.Series:
    """The finding with the most positive test images (and an AUC) at one site."""
    rows = final[(final["method"] == method) & (final["site"] == site) & final["auc"].notna()]
    return rows.sort_values("n_pos", ascending=False).iloc[0]


def test_overview_shows_run_and_network_state(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store))
    with StoreReader.open_readonly(sim_run.store) as reader:
        exchanges = reader.exchanges(sim_run.run_id, METHOD)
        status = reader.node_status(sim_run.run_id)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Status": "finished", "Hospitals": "4", "Network": "full", "Privacy": "none"}
    table = at.dataframe[0].value.set_index("Hospital")
    assert list(table.index) == ["N1", "N2", "N3", "N4"]
    sent = exchanges.groupby("src")["messages"].sum()
    assert table["Messages sent"].to_dict() == {k: int(v) for k, v in sent.items()}
    expected_state = status[status["method"] == METHOD].set_index("site")["state"].to_dict()
    assert table["State"].to_dict() == expected_state
    peers = at.dataframe[1].value
    assert set(peers["Peer"]) == {"N2", "N3", "N4"}  # N1's peers in the full network


def test_heatmap_shows_the_store_auc_of_every_cell(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store, "--min-positives", "1"), PER_SITE)
    final = final_auc(sim_run.store, sim_run.run_id)
    expected = final[final["method"] == METHOD].set_index(["site", "finding"])
    cells = chart_data(at).set_index(["site", "finding"])
    assert len(cells) == len(expected) == 4 * len(FINDINGS)
    for key, row in expected.iterrows():
        cell = cells.loc[key]
        if math.isnan(row["auc"]):
            assert cell["label"] == "n/a"
        else:
            assert cell["auc"] == pytest.approx(row["auc"])
            assert cell["label"] == f"{row['auc']:.2f}"
            assert cell["auc_text"] == f"{row['auc']:.3f}"


def test_never_seen_cells_are_marked(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store), PER_SITE)
    with StoreReader.open_readonly(sim_run.store) as reader:
        sites = reader.sites(sim_run.run_id).set_index("site")
    cells = chart_data(at)
    never = {(r.site, r.finding) for r in cells.itertuples() if r.never_seen}
    expected = {(s, f) for s in ["N1", "N2", "N3", "N4"] for f in FINDINGS if sites.at[s, f] == 0}
    assert never == expected and never  # the fixture has absent findings at every site
    notes = cells[cells["never_seen"]]["note"]
    assert notes.str.contains("never seen at this site").all()


def test_drill_down_shows_the_store_auc_and_ci(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store, "--min-positives", "1"), PER_SITE)
    expected = best_finding(final_auc(sim_run.store, sim_run.run_id), METHOD, "N2")
    at.selectbox(key="auc_site").set_value("N2").run()
    at.selectbox(key="auc_finding").set_value(expected["finding"]).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["AUC"] == f"{expected['auc']:.3f}"
    assert metrics["95% CI"] == f"{expected['ci_low']:.3f}–{expected['ci_high']:.3f}"
    total = int(expected["n_pos"] + expected["n_neg"])
    assert metrics["Positives in test set"] == f"{int(expected['n_pos'])} of {total}"
    detail = findings_table(at).set_index("Finding")
    assert detail.at[expected["finding"], "AUC"] == f"{expected['auc']:.3f}"
    assert list(detail.index) == list(FINDINGS)


def test_few_positives_are_flagged_unreliable(sim_run, make_app) -> None:
    # Every finding has fewer than 1000 positives, so none may be shown as a precise number.
    at = open_page(make_app("--results", sim_run.store, "--min-positives", "1000"), PER_SITE)
    expected = best_finding(final_auc(sim_run.store, sim_run.run_id), METHOD, "N1")
    at.selectbox(key="auc_finding").set_value(expected["finding"]).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["AUC"] == f"≈{expected['auc']:.1f}"
    assert metrics["95% CI"] == "unreliable"
    labels = chart_data(at)["label"]
    assert labels[labels != "n/a"].str.startswith("≈").all()
    assert any(w.value.startswith("Unreliable: only") for w in at.warning)


def test_local_test_set_toggle(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store, "--min-positives", "1"), PER_SITE)
    at.toggle(key="auc_local").set_value(True).run()
    assert not at.exception
    local = final_auc(sim_run.store, sim_run.run_id, "local")
    expected = best_finding(local, METHOD, "N1")
    at.selectbox(key="auc_finding").set_value(expected["finding"]).run()
    assert {m.label: m.value for m in at.metric}["AUC"] == f"{expected['auc']:.3f}"


@pytest.mark.parametrize("reference", ["centralized", "local"])
def test_difference_view(sim_run, make_app, reference: str) -> None:
    at = open_page(make_app("--results", sim_run.store, "--min-positives", "1"), PER_SITE)
    at.radio(key="auc_compare").set_value(reference).run()
    assert not at.exception
    final = final_auc(sim_run.store, sim_run.run_id)
    ref = final[final["method"] == reference]
    ref = ref[ref["site"] == ("all" if reference == "centralized" else "N3")]
    cells = chart_data(at)
    cells = cells[cells["site"] == "N3"].set_index("finding")
    for row in ref.itertuples():
        cell = cells.loc[row.finding]
        if not math.isnan(row.auc) and not math.isnan(cell["auc"]):
            assert cell["value"] == pytest.approx(cell["auc"] - row.auc)
            assert cell["label"] == f"{cell['auc'] - row.auc:+.2f}"


def test_progress_page(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store), PROGRESS)
    assert len(at.get("vega_lite_chart")) == 3
    residual = chart_data(at, 2)
    assert set(residual["method"]) == {"ECL-PDMM", "Local only"}
    assert (residual["residual"] > 0).all()
    mean_auc = chart_data(at, 0)
    assert {"Centralized", "ECL-PDMM", "Local only"} <= set(mean_auc["method"])


def test_privacy_page_without_dp_says_so(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store), PRIVACY)
    assert "did not use differential privacy" in at.info[0].value


def test_privacy_page_with_dp(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store))
    expected = [f"{sim_run.run_id} (finished)", f"{sim_run.dp_run_id} (finished)"]
    assert at.selectbox(key="run_id").options == expected  # newest first
    at.selectbox(key="run_id").set_value(sim_run.dp_run_id).run()
    assert {m.label: m.value for m in at.metric}["Privacy"] == "exchange"
    at.switch_page(PRIVACY).run()
    assert not at.exception
    with StoreReader.open_readonly(sim_run.store) as reader:
        spent = reader.privacy(sim_run.dp_run_id).set_index("site")
    assert not spent.empty
    table = at.dataframe[0].value.set_index("Hospital")
    assert list(table.index) == ["N1", "N2", "N3", "N4"]
    for site, row in spent.iterrows():
        assert table.at[site, "Epsilon spent"] == f"{row['epsilon']:.2f}"
        assert table.at[site, "Budget"] == f"{row['budget']:.2f}"
        assert table.at[site, "Stopped sending"] == ("yes" if row["exhausted"] else "no")
    stopped = [str(s) for s, row in spent.iterrows() if row["exhausted"]]
    warnings = [w.value for w in at.warning if "spent the privacy budget" in w.value]
    assert len(warnings) == (1 if stopped else 0)
    assert all(w.startswith(f"{', '.join(stopped)} spent") for w in warnings)
    assert "whole data set" in at.caption[0].value
    assert chart_data(at)["epsilon"].tolist() == pytest.approx(spent["epsilon"].tolist())


def test_running_run_shows_what_exists(sim_run, store_copy, make_app) -> None:
    # A run killed at step 3: its final evaluations and models are not there yet.
    with ResultsStore.open(store_copy) as store:
        store.truncate_after(sim_run.run_id, None, 3)
        store.set_run_status(sim_run.run_id, "running")
    at = open_page(make_app("--results", store_copy, "--dicom-dir", sim_run.dicom_dir))
    assert at.metric[0].value == "running"
    at.switch_page(PER_SITE).run()
    assert not at.exception
    assert any("No final results yet" in w.value for w in at.warning)
    assert len(chart_data(at)) == 4 * len(FINDINGS)
    for page in (PROGRESS, PRIVACY, VIEWER):
        at.switch_page(page).run()
        assert not at.exception and not at.error, page
    assert any("no final model yet" in i.value for i in at.info)


def _older_schema(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_info SET value = '0' WHERE key = 'schema_version'")


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("missing", "no results store at"),
        ("empty", "empty file"),
        ("not_a_database", "results store cannot be read"),
        ("older_schema", "schema"),
        ("directory", "results store cannot be read"),
    ],
)
def test_bad_store_gives_a_clear_message(store_copy, make_app, tmp_path, case, phrase) -> None:
    path = {"missing": tmp_path / "nothing.sqlite", "older_schema": store_copy}.get(
        case, tmp_path / f"{case}.sqlite"
    )
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not_a_database":
        path.write_bytes(b"these are not the results you are looking for\n" * 100)
    elif case == "older_schema":
        _older_schema(path)
    elif case == "directory":
        path.mkdir()
    at = open_page(make_app("--results", path))
    assert at.error, "no error message shown"
    assert "results store cannot be read" in at.error[0].value
    assert phrase in at.error[0].value
    assert "What to do" in at.info[0].value


def test_locked_store_gives_a_clear_message(store_copy, make_app) -> None:
    import sqlite3

    holder = sqlite3.connect(store_copy, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE runs SET status = status")
        at = open_page(make_app("--results", store_copy))
    finally:
        holder.close()
    assert "locked" in at.error[0].value


def test_bad_arguments_give_a_clear_message(make_app) -> None:
    at = open_page(make_app("--no-such-flag"))
    assert "arguments it cannot use" in at.error[0].value


def test_unexpected_failure_shows_a_message_and_logs_the_traceback(
    sim_run, make_app, monkeypatch, caplog
) -> None:
    import app.data

    def broken(*args: object) -> None:
        raise RuntimeError("simulated bug")

    at = make_app("--results", sim_run.store)
    at.run()
    monkeypatch.setattr(app.data, "load_sites", broken)
    with caplog.at_level("ERROR", logger="app"):
        at.switch_page(PER_SITE).run()
    assert not at.exception
    assert "Something went wrong" in at.error[0].value
    assert "simulated bug" not in at.error[0].value
    assert any(r.exc_info and "simulated bug" in str(r.exc_info[1]) for r in caplog.records)


def test_simulation_drill_down_has_calibration_and_subgroups(sim_run, make_app) -> None:
    at = open_page(make_app("--results", sim_run.store, "--min-positives", "1"), PER_SITE)
    with StoreReader.open_readonly(sim_run.store) as reader:
        subgroups = reader.subgroup_auc(sim_run.run_id, method=METHOD, site="N1")
        calibration = reader.calibration(sim_run.run_id, METHOD, "N1", "common")
    assert set(subgroups["attribute"]) == {"sex", "age_band", "view_position"}
    assert calibration  # final evaluations of the simulation carry reliability diagrams
    frames = [
        convert_arrow_bytes_to_pandas_df(d.data.data)
        for chart in at.get("vega_lite_chart")
        for d in chart.proto.datasets
    ]
    diagrams = [f for f in frames if "mean_predicted" in f.columns and "count" in f.columns]
    finding = at.selectbox(key="auc_finding").value
    assert diagrams and diagrams[0]["count"].sum() == calibration[finding].n_images
    table = next(d.value for d in at.dataframe if "Group" in d.value.columns)
    assert set(table["Attribute"]) == {"Sex", "Age band (years)", "View"}
