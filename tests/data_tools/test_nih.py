"""`ecl-data nih` end to end on a small fabricated NIH-format release (no real data needed)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import UID

from data_tools.labels import COMMON_TEST_SITE, FINDINGS, LABELS_FILENAME, read_label_records
from data_tools.nih import add_nih_arguments, run_nih
from data_tools.nih_export import load_png
from data_tools.nih_release import parse_age, read_table

HEADER_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
MODES = ("L", "RGB", "RGBA", "I;16")
SIZE = 16


def _folder_of(patient: int) -> str | None:
    """Both layouts, and images_003 'not downloaded' (None)."""
    if patient <= 12:
        return "images"
    if patient <= 26:
        return "images_001/images"
    if patient <= 34:
        return "images_002/images"
    return None


def _write_png(path: Path, mode: str, rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, size=(20, 20), dtype=np.uint8)
    if mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(grey, mode="L").convert(mode).save(path)


def make_release(root: Path, *, lists: bool = True) -> dict:
    """40 patients, ~100 images; returns what the test needs to know about it."""
    rng = np.random.default_rng(7)
    lines, test_list, train_val_list, missing = [HEADER_2020], [], [], set()
    for patient in range(1, 41):
        for follow_up in range(int(rng.integers(1, 5))):
            name = f"{patient:08d}_{follow_up:03d}.png"
            findings = [f for f in FINDINGS if rng.random() < 0.08]
            if follow_up == 0 and patient <= len(FINDINGS) * 2:
                findings.append(FINDINGS[patient % len(FINDINGS)])
            labels = "|".join(sorted(set(findings))) or "No Finding"
            sex = "MF"[patient % 2]
            lines.append(
                f"{name},{labels},{follow_up},{patient},{30 + patient},{sex},PA,"
                f"2500,2600,0.14300000000000002,0.14300000000000002"
            )
            (test_list if patient % 4 == 0 else train_val_list).append(name)
            folder = _folder_of(patient)
            if folder is None or (patient == 3 and follow_up == 0):
                missing.add(name)
                continue
            (root / folder).mkdir(parents=True, exist_ok=True)
            _write_png(root / folder / name, MODES[(patient + follow_up) % 4], rng)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    if lists:
        (root / "test_list.txt").write_text("\n".join(test_list) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(train_val_list) + "\n")
    return {"test": set(test_list), "train_val": set(train_val_list), "missing": missing}


def run(nih_dir: Path, out: Path, *extra: str) -> tuple[int, dict]:
    parser = argparse.ArgumentParser()
    add_nih_arguments(parser)
    base = ["--nih-dir", str(nih_dir), "--out", str(out), "--size", str(SIZE), "--no-progress"]
    args = parser.parse_args([*base, "--workers", "1", *extra])
    code = run_nih(args)
    partition = out / "partition.json"
    return code, json.loads(partition.read_text()) if partition.exists() else {}


def site_tables(out: Path) -> dict[str, list[dict[str, str]]]:
    return {
        path.parent.name: read_label_records(path)
        for path in sorted(out.glob(f"*/{LABELS_FILENAME}"))
    }


def image_name(record: dict[str, str]) -> str:
    return Path(record["path"]).stem + ".png"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("nih")
    return root, make_release(root)


@pytest.fixture(scope="module")
def dirichlet_run(release, tmp_path_factory) -> tuple[Path, dict, int]:
    out = tmp_path_factory.mktemp("out")
    code, summary = run(release[0], out, "--seed", "0")
    return out, summary, code


def test_partition_is_patient_disjoint_and_keeps_official_lists(release, dirichlet_run, capsys):
    _, facts = release
    out, summary, code = dirichlet_run
    tables = site_tables(out)

    assert code == 0
    assert set(tables) == {f"N{k}" for k in range(1, 9)} | {COMMON_TEST_SITE}
    owners: dict[str, str] = {}
    for site, records in tables.items():
        for record in records:
            assert owners.setdefault(record["patient_id"], site) == site
    common = {image_name(r) for r in tables[COMMON_TEST_SITE]}
    assert common == facts["test"] - facts["missing"]
    assert not common & facts["train_val"]
    assert all(r["split"] == "test" for r in tables[COMMON_TEST_SITE])
    assert summary["official_lists_used"] and not summary["seeded_common_test"]
    assert summary["missing_images"] == len(facts["missing"])


def test_each_patient_has_one_split_and_sites_have_local_tests(dirichlet_run):
    out, _, _ = dirichlet_run
    splits: dict[str, set[str]] = {}
    for site, records in site_tables(out).items():
        for record in records:
            splits.setdefault(record["patient_id"], set()).add(record["split"])
        if site != COMMON_TEST_SITE and len({r["patient_id"] for r in records}) >= 3:
            assert {r["split"] for r in records} == {"train", "val", "test"}

    assert all(len(s) == 1 for s in splits.values())


def test_dicom_files_have_valid_unique_uids_and_nih_metadata(dirichlet_run):
    out, _, _ = dirichlet_run
    records = [(site, r) for site, rs in site_tables(out).items() for r in rs]
    uids = set()

    for site, record in records:
        ds = pydicom.dcmread(out / site / record["path"])
        assert ds.SOPInstanceUID == record["sop_instance_uid"]
        assert ds.PatientID == record["patient_id"] and ds.PatientID.startswith("NIH")
        assert (ds.Rows, ds.Columns, ds.BitsStored, ds.Modality) == (SIZE, SIZE, 8, "DX")
        assert float(ds.PixelSpacing[0]) == pytest.approx(0.143 * 2550 / SIZE, rel=1e-4)
        assert ds.PatientSex in ("M", "F") and ds.PatientAge.endswith("Y")
        assert ds.ViewPosition == "PA" and ds.InstitutionName.startswith("NIH")
        assert "Synthetic" not in ds.DeidentificationMethod
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert UID(uid).is_valid
            assert uid not in uids
            uids.add(uid)
    assert len(records) > 50


def test_counts_table_matches_labels(dirichlet_run, capsys):
    out, summary, _ = dirichlet_run
    with (out / "counts.csv").open() as fh:
        counts = {row["site"]: row for row in csv.DictReader(fh)}
    tables = site_tables(out)

    for site, records in tables.items():
        assert int(counts[site]["images"]) == len(records)
        assert int(counts[site]["Effusion"]) == sum(int(r["Effusion"]) for r in records)
    assert set(counts) == set(tables)  # sites only, as `ecl-data report` writes it
    assert summary["site_sizes"]["N1"]["images"] == len(tables["N1"])


def test_same_seed_same_output_other_seed_differs(release, dirichlet_run, tmp_path):
    out, _, _ = dirichlet_run

    run(release[0], tmp_path / "same", "--seed", "0")
    run(release[0], tmp_path / "other", "--seed", "1")

    same, other = site_tables(tmp_path / "same"), site_tables(tmp_path / "other")
    assert same == site_tables(out)
    assert (tmp_path / "same" / "counts.csv").read_text() == (out / "counts.csv").read_text()
    site_of = {image_name(r): s for s, rs in same.items() for r in rs}
    site_of_other = {image_name(r): s for s, rs in other.items() for r in rs}
    assert site_of.keys() == site_of_other.keys()  # the official lists fix the image set
    assert site_of != site_of_other


def test_missing_findings_sites_lack_their_findings(release, tmp_path):
    code, summary = run(release[0], tmp_path, "--scheme", "missing-findings", "--seed", "3")
    tables = site_tables(tmp_path)

    assert code == 0
    for site, absent in summary["absent_findings"].items():
        assert len(absent) == 3
        assert all(int(r[f]) == 0 for r in tables[site] for f in absent)
    for finding in FINDINGS:
        assert sum(finding not in a for a in summary["absent_findings"].values()) >= 3
    assert "missing_findings_dropped_images" in summary


def test_resume_skips_complete_files_and_rewrites_truncated_ones(release, tmp_path):
    code, first = run(release[0], tmp_path, "--workers", "2")
    victim = next(iter(sorted((tmp_path / "N1" / "dicom").rglob("*.dcm"))))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    leftover = victim.with_name("00000999_000.dcm.partial")  # as a killed run leaves it
    leftover.write_bytes(b"DICM")

    _, second = run(release[0], tmp_path)

    assert code == 0 and first["written"] > 50 and first["skipped"] == 0
    assert second["written"] == 1 and second["skipped"] == first["written"] - 1
    assert second["stale_files_removed"] == 1 and not leftover.exists()
    assert pydicom.dcmread(victim).pixel_array.shape == (SIZE, SIZE)
    assert not list(tmp_path.rglob("*.partial"))


def test_other_settings_into_same_out_is_refused(release, tmp_path, capsys):
    run(release[0], tmp_path, "--seed", "0", "--limit", "20")

    code, _ = run(release[0], tmp_path, "--seed", "5", "--limit", "20")

    assert code == 2
    assert "other settings (seed)" in capsys.readouterr().err


def test_without_lists_a_seeded_split_is_announced(tmp_path, capsys):
    nih = tmp_path / "nih"
    nih.mkdir()
    make_release(nih, lists=False)

    code, summary = run(nih, tmp_path / "out", "--sites", "4")

    assert code == 0 and summary["seeded_common_test"] and not summary["official_lists_used"]
    assert "WARNING: official train_val_list.txt" in capsys.readouterr().out
    tables = site_tables(tmp_path / "out")
    test_patients = {r["patient_id"] for r in tables[COMMON_TEST_SITE]}
    site_patients = {
        r["patient_id"] for s, rs in tables.items() if s != COMMON_TEST_SITE for r in rs
    }
    assert test_patients and not test_patients & site_patients


def test_flat_images_dir_and_limit(release, tmp_path):
    code, summary = run(
        release[0], tmp_path, "--images-dir", str(release[0] / "images"), "--limit", "15"
    )

    assert code == 0
    assert summary["images_used"] <= 15
    assert summary["missing_images"] > 0


def test_no_images_at_all_is_an_actionable_error(tmp_path, capsys):
    (tmp_path / "Data_Entry_2017.csv").write_text(
        HEADER_2020 + "\n00000001_000.png,Mass,0,1,50,M,PA,1,1,1,1\n"
    )

    code, _ = run(tmp_path, tmp_path / "out")

    assert code == 2
    assert "--images-dir" in capsys.readouterr().err


def test_help_shows_defaults():
    parser = argparse.ArgumentParser()
    add_nih_arguments(parser)

    text = " ".join(parser.format_help().split())

    assert "(default: 8)" in text and "(default: dirichlet)" in text and "(default: 256)" in text


def test_2017_header_variant_parses(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(
        "\ufeffImage Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
        "00000001_000.png,Cardiomegaly|Emphysema,0,00000001,058Y,M,PA,2682,2749,0.143,0.143,\n"
        "00000002_000.png,No Finding,0,00000002,414,F,AP,2500,2048,0.168,0.168,\n"
        "00000003_000.png,Not A Finding,0,00000003,40,F,AP,2500,2048,0.168,0.168,\n"
    )

    table = read_table(path)

    first, second = table.images
    assert first.patient_id == "1" and first.age_years == 58 and first.sex == "M"
    assert first.original_size == (2682, 2749) and first.original_spacing_mm == (0.143, 0.143)
    assert first.labels[FINDINGS.index("Emphysema")] == 1 and sum(first.labels) == 2
    assert second.age_years is None and table.implausible_ages == 1  # 414 is a known typo
    assert table.bad_rows == 1


def test_spelled_out_geometry_headers_parse(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text(
        "Image Index,Finding Labels,Patient ID,OriginalImageWidth,OriginalImageHeight,"
        "OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y\n"
        "00000001_002.png,Mass,1,3000,2000,0.1,0.2\n"
    )

    (image,) = read_table(path).images

    assert image.follow_up == 2 and image.original_size == (3000, 2000)
    assert image.original_spacing_mm == (0.1, 0.2) and image.age_years is None


@pytest.mark.parametrize(
    ("text", "years"),
    [("57", 57), ("058Y", 58), ("018M", 1), ("57.0", 57), ("", None), ("x", None)],
)
def test_parse_age(text, years):
    assert parse_age(text) == years


@pytest.mark.parametrize("mode", MODES)
def test_load_png_gives_grey_unit_range_for_every_mode(tmp_path, mode):
    ramp = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (32, 1))
    path = tmp_path / "ramp.png"
    if mode == "I;16":
        Image.fromarray(ramp.astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(ramp, mode="L").convert(mode).save(path)

    pixels = load_png(path, 32)
    half = load_png(path, 16)

    assert pixels.dtype == np.float32 and pixels.shape == (32, 32)
    np.testing.assert_allclose(pixels, ramp / 255.0, atol=1e-3)
    assert half.shape == (16, 16) and half.min() >= 0.0 and half.max() <= 1.0
