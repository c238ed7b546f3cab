"""Schema version 2: migration of a version-1 store, reviews, shared summaries, reviewed AUC."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from v1_store import RUN_ID, STEPS, write_v1_store

from data_tools.labels import FINDINGS
from hospital_node.evaluation.review import review_scores
from hospital_node.evaluation.summary import FindingSummary, SiteSummary
from hospital_node.store.schema import SCHEMA_VERSION
from hospital_node.store.writer import ResultsStore, StoreReader

TOPOLOGY = {"kind": "ring", "nodes": ["N1", "N2"], "edges": [["N1", "N2"]]}


def _version(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT value FROM schema_info WHERE key = 'schema_version'"
        ).fetchone()[0]
    finally:
        conn.close()


def _review(seed: int = 0, n_boot: int = 40):
    rng = np.random.default_rng(seed)
    y = (rng.random((80, len(FINDINGS))) < 0.3).astype(int)
    probs = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=y.shape))))
    patients = [f"P{i // 2}" for i in range(80)]
    groups = {"sex": ["F" if i % 2 else "M" for i in range(80)]}
    return review_scores(y, probs, patients, groups=groups, rng=rng, n_boot=n_boot)


def test_a_version_1_store_opens_read_only_unchanged(tmp_path):
    path = tmp_path / "v1.sqlite"
    write_v1_store(path)

    with StoreReader.open_readonly(path) as reader:
        history = reader.auc_history(RUN_ID, test_set="local")
        reviewed = reader.reviewed_auc(RUN_ID, "local")
        assert not reader.has_table("calibration")
        assert reader.calibration(RUN_ID, "ecl-pdmm", RUN_ID, "local") == {}
        assert reader.subgroup_auc(RUN_ID).empty and reader.shared_metrics(RUN_ID).empty

    assert sorted(history["step"].unique()) == list(STEPS)
    assert set(reviewed["step"]) == {max(STEPS)} and not reviewed["has_ci"].any()
    assert _version(path) == "1"  # readers never migrate


def test_the_writer_migrates_a_version_1_store_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v1.sqlite"
    write_v1_store(path)

    with ResultsStore.open(path) as store:
        info = store.schema_info()
        store.log_review(RUN_ID, "ecl-pdmm", RUN_ID, 200, "local", _review())
        history = store.auc_history(RUN_ID, test_set="local")
        calibration = store.calibration(RUN_ID, "ecl-pdmm", RUN_ID, "local")
    with ResultsStore.open(path) as again:  # a second open finds nothing left to migrate
        assert again.schema_info()["schema_version"] == str(SCHEMA_VERSION)

    assert info["schema_version"] == str(SCHEMA_VERSION) and "from version 1" in info["migrated_at"]
    assert sorted(history["step"].unique()) == [*STEPS, 200]
    assert calibration
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_review_round_trip_and_replacement(tmp_path):
    first, second = _review(0), _review(1)
    with ResultsStore.open(tmp_path / "r.sqlite") as store:
        store.start_run("n", kind="node", config={}, topology=TOPOLOGY)
        store.log_review("n", "ecl-pdmm", "N1", 10, "local", first)
        store.log_review("n", "ecl-pdmm", "N1", 20, "local", second)
        curves = store.calibration("n", "ecl-pdmm", "N1", "local")
        subgroups = store.subgroup_auc("n", method="ecl-pdmm", site="N1", test_set="local")
        ece = store.metrics("n", names=["mean_ece_local"])

    expected = second.calibration[FINDINGS[0]]
    assert curves[FINDINGS[0]].ece == pytest.approx(expected.ece)
    assert [b.count for b in curves[FINDINGS[0]].bins] == [b.count for b in expected.bins]
    assert set(subgroups["step"]) == {20}  # the latest review replaces the previous one
    assert len(subgroups) == 2 * len(FINDINGS)
    female = subgroups[(subgroups["subgroup"] == "F") & (subgroups["finding"] == FINDINGS[0])]
    assert female["auc"].iloc[0] == pytest.approx(second.subgroups[0].evaluation.auc[0])
    assert list(ece["step"]) == [10, 20]


def test_reviewed_auc_prefers_the_newest_evaluation_with_intervals(tmp_path):
    with ResultsStore.open(tmp_path / "r.sqlite") as store:
        store.start_run("n", kind="node", config={}, topology=TOPOLOGY)
        store.log_review("n", "ecl-pdmm", "N1", 10, "local", _review(0))
        store.log_evaluation("n", "ecl-pdmm", "N1", 20, "local", _review(1, n_boot=0).evaluation)
        store.log_evaluation("n", "ecl-pdmm", "N2", 20, "local", _review(2, n_boot=0).evaluation)
        reviewed = store.reviewed_auc("n", "local").set_index("site")

    assert set(reviewed.loc["N1", "step"]) == {10} and reviewed.loc["N1", "has_ci"].all()
    assert set(reviewed.loc["N1", "newest_step"]) == {20}
    assert set(reviewed.loc["N2", "step"]) == {20} and not reviewed.loc["N2", "has_ci"].any()


def test_truncate_after_rolls_back_reviews_but_not_shared_summaries(tmp_path):
    with ResultsStore.open(tmp_path / "r.sqlite") as store:
        store.start_run("n", kind="node", config={}, topology=TOPOLOGY)
        store.log_review("n", "ecl-pdmm", "N1", 50, "local", _review())
        store.set_shared_summary("n", _summary(step=900), via="N2", received_at=1.7e9)
        store.truncate_after("n", "ecl-pdmm", 40)
        assert store.calibration("n", "ecl-pdmm", "N1", "local") == {}
        assert store.subgroup_auc("n").empty
        assert set(store.shared_metrics("n")["step"]) == {900}  # the origin's step, not ours


def _summary(step: int, origin: str = "N2") -> SiteSummary:
    cells = tuple(
        FindingSummary(f, True) if k % 2 else FindingSummary(f, False, 0.75, 0.6, 0.85, 11, 30)
        for k, f in enumerate(FINDINGS)
    )
    return SiteSummary(origin=origin, method="ecl-pdmm", boot_epoch=3, step=step,
                       created_at=1.7e9, test_set="local", n_images=41, ci_level=0.95,
                       min_positives=10, findings=cells)  # fmt: skip


def test_shared_summaries_keep_the_latest_per_origin_with_sender_and_time(tmp_path):
    with ResultsStore.open(tmp_path / "r.sqlite") as store:
        store.start_run("n", kind="node", config={}, topology=TOPOLOGY)
        store.set_shared_summary("n", _summary(100), via="N2", received_at=1.7e9 + 1)
        store.set_shared_summary("n", _summary(200), via="N3", received_at=1.7e9 + 9)
        shared = store.shared_metrics("n")

    assert len(shared) == len(FINDINGS) and set(shared["step"]) == {200}
    assert set(shared["via"]) == {"N3"} and set(shared["boot_epoch"]) == {3}
    assert shared["received_at"].iloc[0].startswith("2023-11-14T22:13:29")
    suppressed = shared[shared["suppressed"] == 1]
    assert suppressed["auc"].isna().all() and suppressed["n_pos"].isna().all()
    shown = shared[shared["suppressed"] == 0]
    assert (shown["auc"] == 0.75).all() and (shown["min_positives"] == 10).all()
