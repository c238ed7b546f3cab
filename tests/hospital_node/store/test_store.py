"""Results store tests on real SQLite files: schema, round trips, crash safety, concurrency."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.labels import FINDINGS, NUM_FINDINGS
from hospital_node.evaluation.metrics import Evaluation, RocCurve, evaluate_scores, roc_curves
from hospital_node.store.writer import (
    SCHEMA_VERSION,
    PrivacyStatus,
    ResultsStore,
    SiteInfo,
    StoreError,
    StoreReader,
)

REPO = Path(__file__).resolve().parents[3]
TOPOLOGY = {"kind": "ring", "nodes": ["N1", "N2", "N3"], "edges": [["N1", "N2"], ["N2", "N3"]]}
CONFIG = {"seed": 7, "training": {"steps": 100, "lr": 0.01}, "methods": ["ecl-pdmm", "local"]}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "results.sqlite"


@pytest.fixture
def store(path: Path):
    with ResultsStore.open(path) as opened:
        opened.start_run("run1", kind="simulation", config=CONFIG, topology=TOPOLOGY)
        yield opened


def _evaluation(aucs: list[float | None], *, ci: bool = True) -> Evaluation:
    n_pos = tuple(0 if a is None else 5 for a in aucs)
    return Evaluation(
        auc=tuple(aucs),
        ci=tuple(None if a is None else (a - 0.1, a + 0.05) for a in aucs) if ci else None,
        n_pos=n_pos,
        n_neg=tuple(20 - p for p in n_pos),
        mean_auc=float(np.mean([a for a in aucs if a is not None])),
        n_images=20,
        n_patients=10,
        ci_level=0.95 if ci else None,
    )


def _set_version(path: Path, version: str) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", (version,))
    raw.close()


# --- schema and opening --------------------------------------------------------------------


def test_new_store_has_schema_version_and_wal_mode(path: Path):
    ResultsStore.open(path).close()

    raw = sqlite3.connect(path)
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    raw.close()
    with ResultsStore.open_readonly(path) as reader:
        info = reader.schema_info()

    assert {"schema_info", "runs", "sites", "metrics", "auc", "roc", "exchanges"} <= tables
    assert {"node_status", "privacy", "models"} <= tables
    assert mode == "wal"
    assert info["schema_version"] == str(SCHEMA_VERSION)
    assert info["created_by"].startswith("ecl-hospitals")


def test_reopening_keeps_data(path: Path, store: ResultsStore):
    store.close()

    with ResultsStore.open(path, create=False) as again:
        assert list(again.list_runs()["run_id"]) == ["run1"]


@pytest.mark.parametrize(("version", "match"), [("0", "older"), ("99", "upgrade")])
def test_other_schema_version_is_refused_by_writer_and_reader(path: Path, version, match):
    ResultsStore.open(path).close()
    _set_version(path, version)

    with pytest.raises(StoreError, match=match):
        ResultsStore.open(path)
    with pytest.raises(StoreError, match=match):
        ResultsStore.open_readonly(path)


def test_non_store_files_are_refused(tmp_path: Path):
    text = tmp_path / "notes.sqlite"
    text.write_text("this is not a database, it is a note about a database\n" * 20)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE patients (id TEXT)")
    raw.close()

    for candidate in (text, other):
        with pytest.raises(StoreError, match="not a results store"):
            ResultsStore.open(candidate)
        with pytest.raises(StoreError, match="not a results store"):
            ResultsStore.open_readonly(candidate)
    with pytest.raises(StoreError, match="not a file"):
        ResultsStore.open(tmp_path)


def test_readonly_open_errors_for_missing_and_empty_files(tmp_path: Path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()

    with pytest.raises(StoreError, match="no results store"):
        ResultsStore.open_readonly(tmp_path / "missing.sqlite")
    with pytest.raises(StoreError, match="empty"):
        ResultsStore.open_readonly(empty)
    with pytest.raises(StoreError, match="create=True"):
        ResultsStore.open(tmp_path / "missing.sqlite", create=False)


def test_readonly_open_retries_a_lock_then_gives_a_clear_error(path: Path):
    ResultsStore.open(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")

    with pytest.raises(StoreError, match="locked"):
        ResultsStore.open_readonly(path, retries=2, sleep_s=0.01)

    releaser = threading.Timer(0.1, lambda: (holder.execute("COMMIT"), holder.close()))
    releaser.start()
    with ResultsStore.open_readonly(path, retries=8, sleep_s=0.02) as reader:
        assert reader.list_runs().empty
    releaser.join()


def test_readonly_store_has_no_write_methods(path: Path, store: ResultsStore):
    with ResultsStore.open_readonly(path) as reader:
        assert type(reader) is StoreReader
        assert not hasattr(reader, "log_metrics")
        assert reader.run_config("run1") == CONFIG


# --- runs and sites ------------------------------------------------------------------------


def test_run_lifecycle(store: ResultsStore):
    first = store.run_info("run1")

    store.set_run_status("run1", "interrupted")
    config = store.resume_run("run1")
    info = store.run_info("run1")

    assert first.status == "running" and first.kind == "simulation"
    assert config == CONFIG
    assert info.status == "running" and info.topology == TOPOLOGY and info.privacy is None
    assert info.updated_at >= first.updated_at
    with pytest.raises(StoreError, match="already exists"):
        store.start_run("run1", kind="simulation", config={}, topology=TOPOLOGY)
    with pytest.raises(StoreError, match="not one of"):
        store.set_run_status("run1", "paused")
    with pytest.raises(StoreError, match="no run"):
        store.run_info("nope")


def test_writes_to_unknown_run_and_bad_inputs_are_refused(store: ResultsStore):
    with pytest.raises(StoreError, match="start_run"):
        store.log_metrics("nope", "local", "N1", 0, {"train_loss": 1.0})
    with pytest.raises(StoreError, match="edge"):
        store.start_run(
            "r2", kind="node", config={}, topology={"nodes": ["A"], "edges": [["A", "B"]]}
        )
    with pytest.raises(StoreError, match="JSON"):
        store.start_run("r3", kind="node", config={"p": Path("/x")}, topology=TOPOLOGY)
    with pytest.raises(StoreError, match="kind"):
        store.start_run("r4", kind="cluster", config={}, topology=TOPOLOGY)
    with pytest.raises(StoreError, match="valid name"):
        store.log_metrics("run1", "ecl pdmm", "N1", 0, {"train_loss": 1.0})
    assert list(store.list_runs()["run_id"]) == ["run1"]


def test_start_run_with_privacy_settings(store: ResultsStore):
    store.start_run("dp", kind="node", config={}, topology=TOPOLOGY, privacy={"epsilon": 8.0})

    assert store.run_info("dp").privacy == {"epsilon": 8.0}
    assert set(store.list_runs()["run_id"]) == {"run1", "dp"}


def test_sites_round_trip_with_per_finding_positives(store: ResultsStore):
    positives = {f: 3 for f in FINDINGS} | {"Hernia": 0}
    store.add_sites(
        "run1",
        [
            SiteInfo("N1", n_train=100, n_val=10, n_test=20, train_positives=positives),
            SiteInfo("all", n_train=300, n_val=0, n_test=0, role="reference"),
        ],
    )
    store.add_sites("run1", [SiteInfo("N1", 101, 10, 20, positives)])  # re-adding replaces

    sites = store.sites("run1").set_index("site")

    assert sites.loc["N1", "n_train"] == 101 and sites.loc["N1", "role"] == "hospital"
    assert sites.loc["N1", "Hernia"] == 0 and sites.loc["N1", "Mass"] == 3
    assert sites.loc["all", "role"] == "reference" and sites.loc["all", "Mass"] == 0
    with pytest.raises(StoreError, match="role"):
        store.add_sites("run1", [SiteInfo("N2", 1, 1, 1, role="observer")])


# --- metrics and AUC -----------------------------------------------------------------------


def test_metrics_round_trip_filter_and_overwrite(store: ResultsStore):
    store.log_metrics("run1", "local", "N1", 10, {"train_loss": 0.5, "images_per_second": 90.0})
    store.log_metrics("run1", "local", "N1", 20, {"train_loss": float("nan")}, wall_time=123.0)
    store.log_metrics("run1", "local", "all", 20, {"consensus_residual": 0.25})
    store.log_metrics("run1", "local", "N1", 10, {"train_loss": 0.4})  # overwrite

    loss = store.metrics("run1", names=["train_loss"], site="N1")
    everything = store.metrics("run1")

    assert list(loss["step"]) == [10, 20]
    assert loss["value"].iloc[0] == pytest.approx(0.4)
    assert math.isnan(loss["value"].iloc[1]) and loss["wall_time"].iloc[1] == 123.0
    assert len(everything) == 4
    assert store.metrics("run1", method="gossip").empty


def test_evaluation_round_trip_with_unavailable_findings(path: Path, store: ResultsStore):
    aucs = [0.8] * (NUM_FINDINGS - 1) + [None]
    store.log_evaluation("run1", "ecl-pdmm", "N1", 50, "common", _evaluation(aucs, ci=False))
    store.log_evaluation("run1", "ecl-pdmm", "N1", 100, "common", _evaluation(aucs), is_final=True)

    final = store.final_auc("run1", method="ecl-pdmm")
    history = store.auc_history("run1", finding="Hernia")
    raw = sqlite3.connect(path)
    nulls = raw.execute("SELECT COUNT(*) FROM auc WHERE finding = 'Hernia' AND auc IS NULL")
    null_count = nulls.fetchone()[0]
    raw.close()

    assert list(final["finding"]) == list(FINDINGS)
    assert (final["step"] == 100).all()
    assert final["auc"].iloc[0] == pytest.approx(0.8)
    assert final["ci_low"].iloc[0] == pytest.approx(0.7) and final["ci_level"].iloc[0] == 0.95
    hernia = final.set_index("finding").loc["Hernia"]
    assert math.isnan(hernia["auc"]) and math.isnan(hernia["ci_low"]) and hernia["n_pos"] == 0
    assert null_count == 2 and list(history["step"]) == [50, 100]
    assert math.isnan(history["ci_low"].iloc[0])  # logged without CI
    mean = store.metrics("run1", names=["mean_auc_common"])
    assert list(mean["value"]) == pytest.approx([0.8, 0.8])


def test_final_auc_takes_the_latest_final_evaluation_per_site(store: ResultsStore):
    for step, value in ((100, 0.7), (200, 0.9)):
        evaluation = _evaluation([value] * NUM_FINDINGS)
        store.log_evaluation("run1", "local", "N1", step, "common", evaluation, is_final=True)
    store.log_evaluation("run1", "local", "N2", 100, "local", _evaluation([0.6] * NUM_FINDINGS))

    final = store.final_auc("run1")

    assert set(final["step"]) == {200} and final["auc"].iloc[0] == pytest.approx(0.9)
    assert store.final_auc("run1", test_set="local").empty  # N2's evaluation is not final


def test_real_evaluation_and_roc_round_trip(store: ResultsStore):
    rng = np.random.default_rng(0)
    y = (rng.random((300, NUM_FINDINGS)) < 0.2).astype(int)
    y[:, FINDINGS.index("Hernia")] = 0
    scores = rng.random(y.shape) + 0.5 * y
    evaluation = evaluate_scores(y, scores, np.arange(300) // 2, with_ci=True, rng=rng, n_boot=50)
    curves = roc_curves(y, scores)

    store.log_evaluation("run1", "fedavg", "N3", 40, "local", evaluation, is_final=True)
    store.log_roc("run1", "fedavg", "N3", 40, "local", curves)

    final = store.final_auc("run1", "fedavg", test_set="local").set_index("finding")
    mass = store.roc("run1", "fedavg", "N3", "local", "Mass")
    assert final.loc["Mass", "auc"] == pytest.approx(evaluation.auc[FINDINGS.index("Mass")])
    assert mass == curves["Mass"]  # bit-exact through JSON, +inf threshold included
    assert math.isinf(mass.thresholds[0])
    assert store.roc("run1", "fedavg", "N3", "local", "Hernia") is None


def test_roc_with_infinite_operating_threshold(store: ResultsStore):
    curve = RocCurve((0.0, 1.0), (0.0, 1.0), (math.inf, 0.5), math.inf, 0.0, 1.0)

    store.log_roc("run1", "local", "N1", 5, "common", {"Mass": curve})

    assert store.roc("run1", "local", "N1", "common", "Mass") == curve


# --- exchanges, node status, privacy -------------------------------------------------------


def test_exchange_counters_accumulate_per_step(store: ResultsStore):
    store.upsert_exchange("run1", "gossip", "N1", "N2", 5, messages=1, n_bytes=100)
    store.upsert_exchange("run1", "gossip", "N1", "N2", 9, messages=2, n_bytes=200, rejected=1)
    store.upsert_exchange("run1", "gossip", "N1", "N2", 7, messages=1, n_bytes=50)  # late report
    store.upsert_exchange("run1", "gossip", "N2", "N1", 9, n_bytes=10)

    totals = store.exchanges("run1", "gossip").set_index(["src", "dst"])
    history = store.exchange_history("run1", "gossip")

    assert tuple(totals.loc[("N1", "N2"), ["messages", "bytes", "rejected", "last_step"]]) == (
        4, 350, 1, 9,
    )  # fmt: skip
    assert totals.loc[("N2", "N1"), "messages"] == 1
    n1n2 = history[(history["src"] == "N1") & (history["dst"] == "N2")]
    assert list(n1n2["step"]) == [5, 7, 9] and list(n1n2["bytes"]) == [100, 150, 350]


def test_set_exchange_records_absolute_counters(store: ResultsStore):
    store.set_exchange("run1", "ecl-admm", "N1", "N2", 10, messages=4, n_bytes=4000)
    store.set_exchange("run1", "ecl-admm", "N1", "N2", 20, messages=9, n_bytes=9000, rejected=2)

    totals = store.exchanges("run1")

    assert totals[["messages", "bytes", "rejected", "last_step"]].values.tolist() == [
        [9, 9000, 2, 20]
    ]


def test_node_status_and_privacy_round_trip(store: ResultsStore):
    store.set_node_status("run1", "ecl-pdmm", "N1", 10, "training")
    store.set_node_status("run1", "ecl-pdmm", "N1", 30, "stopped_sending", "budget spent")
    store.set_privacy(
        "run1",
        "ecl-pdmm",
        "N1",
        PrivacyStatus(
            "dp-sgd", 2.5, 1e-5, releases=30, exhausted=True, noise_multiplier=1.1, clip=1.0
        ),
    )

    status = store.node_status("run1")
    privacy = store.privacy("run1")

    assert status[["step", "state", "detail"]].values.tolist() == [
        [30, "stopped_sending", "budget spent"]
    ]
    row = privacy.iloc[0]
    assert (row["mode"], row["epsilon"], row["delta"], row["releases"]) == ("dp-sgd", 2.5, 1e-5, 30)
    assert row["exhausted"] == 1 and math.isnan(row["budget"]) and row["accountant"] == "rdp"


# --- models --------------------------------------------------------------------------------


def test_model_round_trip_is_bit_exact(store: ResultsStore):
    gen = torch.Generator().manual_seed(0)
    state = {
        "features.conv.weight": torch.randn(8, 1, 3, 3, generator=gen),
        "half": torch.randn(5, generator=gen).half(),
        "bf16": torch.randn(4, generator=gen).bfloat16(),
        "count": torch.tensor([3], dtype=torch.int64),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous view
    }
    config = {"architecture": "compact", "image_size": 64}

    store.save_model("run1", "ecl-pdmm", "N1", 100, config, state)
    loaded_config, loaded = store.load_model("run1", "ecl-pdmm", "N1")
    listed = store.list_models("run1")

    assert loaded_config == config and set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert listed["n_bytes"].iloc[0] > 0 and listed["step"].iloc[0] == 100
    with pytest.raises(StoreError, match="list_models"):
        store.load_model("run1", "ecl-pdmm", "N2")


def test_damaged_model_blob_is_detected(path: Path, store: ResultsStore):
    store.save_model("run1", "local", "N1", 1, {}, {"w": torch.ones(4)})
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE models SET weights = CAST('garbage' AS BLOB)")
    raw.close()

    with pytest.raises(StoreError, match="sha256"):
        store.load_model("run1", "local", "N1")


# --- resume --------------------------------------------------------------------------------


def test_truncate_after_removes_only_newer_rows(store: ResultsStore):
    evaluation = _evaluation([0.7] * NUM_FINDINGS)
    curve = RocCurve((0.0, 1.0), (0.0, 1.0), (math.inf, 0.5), 0.5, 1.0, 0.0)
    for method in ("ecl-pdmm", "gossip"):
        for step in (10, 20, 30):
            store.log_metrics("run1", method, "N1", step, {"train_loss": 1.0 / step})
            store.log_evaluation("run1", method, "N1", step, "common", evaluation)
            store.upsert_exchange("run1", method, "N1", "N2", step, n_bytes=1)
        store.log_roc("run1", method, "N1", 30, "common", {"Mass": curve})
        store.save_model("run1", method, "N1", 30, {}, {"w": torch.zeros(2)})

    deleted = store.truncate_after("run1", "ecl-pdmm", 20)

    pdmm = store.metrics("run1", names=["train_loss"], method="ecl-pdmm")
    assert list(pdmm["step"]) == [10, 20]
    assert set(store.auc_history("run1", method="ecl-pdmm")["step"]) == {10, 20}
    assert store.exchanges("run1", "ecl-pdmm")["messages"].tolist() == [2]
    assert store.roc("run1", "ecl-pdmm", "N1", "common", "Mass") is None
    assert list(store.list_models("run1")["method"]) == ["gossip"]
    assert len(store.metrics("run1", method="gossip")) == 6  # other method untouched
    assert deleted == 1 + 1 + NUM_FINDINGS + 1 + 1 + 1  # loss, mean AUC, auc, exchange, roc, model
    assert store.truncate_after("run1", None, 10) > 0
    assert set(store.metrics("run1")["step"]) == {10}


# --- concurrency and crash safety ----------------------------------------------------------


def test_reader_sees_commits_while_writer_is_open(path: Path, store: ResultsStore):
    store.log_metrics("run1", "local", "N1", 1, {"train_loss": 1.0})
    with ResultsStore.open_readonly(path) as reader:
        assert len(reader.metrics("run1")) == 1
        store.log_metrics("run1", "local", "N1", 2, {"train_loss": 0.5})
        assert len(reader.metrics("run1")) == 2

        # A long read transaction does not block the writer (WAL), and sees its own snapshot.
        snapshot = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        snapshot.execute("BEGIN")
        before = snapshot.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        store.log_metrics("run1", "local", "N1", 3, {"train_loss": 0.25})
        during = snapshot.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        snapshot.execute("COMMIT")
        snapshot.close()
        assert before == during == 2
        assert len(reader.metrics("run1")) == 3


def test_two_threads_write_through_one_store(store: ResultsStore):
    def write(site: str) -> None:
        for step in range(100):
            store.log_metrics("run1", "ecl-pdmm", site, step, {"train_loss": float(step)})
            store.upsert_exchange("run1", "ecl-pdmm", site, "N3", step, n_bytes=10)

    threads = [threading.Thread(target=write, args=(site,)) for site in ("N1", "N2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(store.metrics("run1")) == 200
    assert store.exchanges("run1")["bytes"].tolist() == [1000, 1000]


_WRITER = textwrap.dedent(
    """
    import sys
    from hospital_node.store.writer import ResultsStore

    store = ResultsStore.open(sys.argv[1])
    store.start_run("crash", kind="node", config={}, topology={"nodes": ["N1"], "edges": []})
    step = 0
    while True:
        store.log_metrics("crash", "ecl-pdmm", "N1", step, {"train_loss": 1.0, "epsilon": 0.1})
        print(step, flush=True)
        step += 1
    """
)


def test_killed_writer_leaves_a_consistent_store(path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        acknowledged = -1
        deadline = time.monotonic() + 60
        while acknowledged < 150 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
        os.kill(writer.pid, signal.SIGKILL)  # mid-loop, possibly mid-transaction
    finally:
        writer.wait(timeout=30)
        writer.stdout.close()
    assert acknowledged >= 150, "writer subprocess did not get going"

    raw = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    integrity = raw.execute("PRAGMA integrity_check").fetchone()[0]
    raw.close()
    with ResultsStore.open_readonly(path) as reader:
        frame = reader.metrics("crash")
        status = reader.run_info("crash").status

    steps = sorted(set(frame["step"]))
    assert integrity == "ok"
    assert steps == list(range(len(steps))) and len(steps) > acknowledged  # nothing acked lost
    assert frame.groupby("step").size().eq(2).all()  # every step all-or-nothing
    assert status == "running"  # the app sees a stale heartbeat in updated_at
    with ResultsStore.open(path) as again:
        again.resume_run("crash")
        again.log_metrics("crash", "ecl-pdmm", "N1", len(steps), {"train_loss": 0.5})
