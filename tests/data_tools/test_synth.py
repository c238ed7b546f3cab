"""Label sampling and `ecl-data synth` / `ecl-data report` end to end on small real folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data_tools.cli import main
from data_tools.labels import (
    COMMON_TEST_SITE,
    FINDINGS,
    LABELS_FILENAME,
    MANIFEST_FILENAME,
    parse_label_row,
    read_label_records,
)
from data_tools.prevalence import (
    NIH_COMBINATIONS,
    NIH_IMAGES,
    NIH_POSITIVES,
    PrevalenceConfig,
    SiteMix,
    assign_absent_findings,
    derive_nih_statistics,
    nih_label_model,
    nih_prevalence,
    plan_site_mixes,
    sample_labels,
    site_label_model,
)

SITES = [f"N{k}" for k in range(1, 9)]


def test_sampled_prevalence_follows_nih_with_the_floor_and_half_normal() -> None:
    config = PrevalenceConfig(floor=0.03)
    labels = sample_labels(nih_label_model(config), 40_000, np.random.default_rng(0))
    expected = np.maximum(nih_prevalence(), 0.03)
    assert np.abs(labels.mean(axis=0) - expected).max() < 0.01
    assert abs((labels.sum(axis=1) == 0).mean() - 0.538) < 0.015
    effusion, infiltration = FINDINGS.index("Effusion"), FINDINGS.index("Infiltration")
    both = (labels[:, effusion] & labels[:, infiltration]).mean()
    assert both > 1.5 * labels[:, effusion].mean() * labels[:, infiltration].mean()  # co-occur


def test_absent_findings_are_never_sampled_and_each_finding_stays_at_three_sites() -> None:
    config = PrevalenceConfig()
    mixes = plan_site_mixes(8, 5, config, np.random.default_rng(3))
    present_at = dict.fromkeys(FINDINGS, 0)
    for mix in mixes:
        assert len(mix.absent) == 5
        labels = sample_labels(site_label_model(mix, config), 3000, np.random.default_rng(1))
        for k, finding in enumerate(FINDINGS):
            if finding in mix.absent:
                assert labels[:, k].sum() == 0
            else:
                present_at[finding] += 1
                assert labels[:, k].mean() > 0.015
    assert min(present_at.values()) >= 3


def test_site_without_the_common_findings_meets_its_targets_with_more_normals() -> None:
    config = PrevalenceConfig()
    absent = ("Atelectasis", "Effusion", "Infiltration", "Mass", "Nodule")
    targets = np.maximum(nih_prevalence(), config.floor)
    targets[[FINDINGS.index(f) for f in absent]] = 0.0
    model = site_label_model(SiteMix(absent=absent, targets=tuple(targets)), config)
    assert np.abs(model.prevalence() - targets).max() < 1e-3
    assert model.no_finding() > config.no_finding


def test_impossible_absence_plan_is_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="lower --missing-per-site"):
        assign_absent_findings(8, 9, np.random.default_rng(0))


def test_nih_constants_are_recomputed_by_the_derivation(tmp_path: Path) -> None:
    table = tmp_path / "Data_Entry.csv"
    rows = ["Image Index,Finding Labels,Patient ID"]
    rows += [f"{i}.png,No Finding,{i}" for i in range(3)]
    rows += [f"a{i}.png,Infiltration|Effusion,{i}" for i in range(2)] + ["b.png,Hernia,9"]
    table.write_text("\n".join(rows) + "\n")
    stats = derive_nih_statistics(table, min_count=2)
    assert stats["images"] == 6 and stats["no_finding"] == 3
    assert stats["combinations"] == [("No Finding", 3), ("Effusion|Infiltration", 2)]
    assert stats["positives"]["Hernia"] == 1 and stats["positives"]["Effusion"] == 2
    assert sum(n for _, n in NIH_COMBINATIONS) < NIH_IMAGES
    assert set(NIH_POSITIVES) == set(FINDINGS)


def _synth(out: Path, *extra: str) -> int:
    args = ["synth", "--out", str(out), "--per-site", "24", "--test-size", "40", "--size", "32"]
    return main([*args, "--workers", "1", "--quiet", *extra])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    assert _synth(out) == 0
    return out


def _rows(site_dir: Path) -> list:
    return [parse_label_row(r) for r in read_label_records(site_dir / LABELS_FILENAME)]


def test_synth_writes_the_site_folder_layout(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == sorted(
        [*SITES, COMMON_TEST_SITE, "counts.csv"]
    )
    for site in [*SITES, COMMON_TEST_SITE]:
        rows = _rows(dataset / site)
        manifest = json.loads((dataset / site / MANIFEST_FILENAME).read_text())
        assert manifest["images"] == len(rows) and manifest["generator_version"]
        assert manifest["seed"] == 0 and manifest["difficulty"] == 0.5
        for row in rows[:3]:
            ds = pydicom.dcmread(dataset / site / row.path)
            assert ds.SOPInstanceUID == row.sop_instance_uid and ds.PatientID == row.patient_id
        on_disk = {
            p.relative_to(dataset / site).as_posix() for p in (dataset / site).rglob("*.dcm")
        }
        assert on_disk == {r.path for r in rows}
    assert {r.split for r in _rows(dataset / COMMON_TEST_SITE)} == {"test"}


def test_synth_splits_are_patient_level_and_labels_respect_absences(dataset: Path) -> None:
    present_at = dict.fromkeys(FINDINGS, 0)
    all_uids = []
    for site in SITES:
        rows = _rows(dataset / site)
        all_uids += [r.sop_instance_uid for r in rows]
        splits_of: dict[str, set[str]] = {}
        for r in rows:
            splits_of.setdefault(r.patient_id, set()).add(r.split)
        assert all(len(s) == 1 for s in splits_of.values())
        assert {r.split for r in rows} == {"train", "val", "test"}
        absent = set(
            json.loads((dataset / site / MANIFEST_FILENAME).read_text())["absent_findings"]
        )
        positives = np.array([r.labels for r in rows]).sum(axis=0)
        for k, finding in enumerate(FINDINGS):
            assert (positives[k] == 0) == (finding in absent), f"{site} {finding}"
            present_at[finding] += finding not in absent
    assert min(present_at.values()) >= 3
    assert len(set(all_uids)) == len(all_uids)
    test_positives = np.array([r.labels for r in _rows(dataset / COMMON_TEST_SITE)]).sum(axis=0)
    assert (test_positives > 0).all()


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_the_same_bytes_with_any_worker_count(tmp_path: Path) -> None:
    small = ["--sites", "3", "--per-site", "6", "--test-size", "6", "--missing-per-site", "0"]
    for name, seed, workers in (("a", "1", "1"), ("b", "1", "2"), ("c", "2", "1")):
        flags = ["--size", "32", "--seed", seed, "--workers", workers, "--quiet"]
        assert main(["synth", "--out", str(tmp_path / name), *small, *flags]) == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    labels_a = (tmp_path / "a" / "N1" / LABELS_FILENAME).read_bytes()
    assert labels_a != (tmp_path / "c" / "N1" / LABELS_FILENAME).read_bytes()


def test_synth_refuses_to_overwrite_and_report_prints_the_table(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _synth(dataset) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["report", str(dataset)]) == 0
    printed = capsys.readouterr().out
    assert "common_test" in printed and "Hern" in printed
    header, *lines = (dataset / "counts.csv").read_text().splitlines()
    assert header.split(",")[:3] == ["site", "images", "no_finding"]
    assert [line.split(",")[0] for line in lines] == [*SITES, COMMON_TEST_SITE]


def test_report_on_a_folder_without_sites_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no site folder" in capsys.readouterr().err
