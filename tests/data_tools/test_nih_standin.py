"""`ecl-data synth --nih-layout`: a stand-in NIH release from a label table, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.cli import main
from data_tools.labels import FINDINGS, LABELS_FILENAME, read_label_records
from data_tools.nih_release import read_table
from data_tools.nih_standin import (
    MANIFEST_NAME,
    TABLE_NAME,
    StandinConfig,
    archive_folder,
    plan_jobs,
)

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
SIZE = 32


def write_table(path: Path, patients: int = 14) -> list[str]:
    """A label table in the real CSV's columns: 1-3 images per patient; returns image names."""
    rng = np.random.default_rng(3)
    lines, names = [HEADER], []
    for patient in range(1, patients + 1):
        for follow_up in range(int(rng.integers(1, 4))):
            name = f"{patient:08d}_{follow_up:03d}.png"
            findings = "|".join(f for f in FINDINGS if rng.random() < 0.1) or "No Finding"
            view = "AP" if patient % 3 == 0 else "PA"
            lines.append(
                f"{name},{findings},{follow_up},{patient},{40 + patient},{'MF'[patient % 2]},"
                f"{view},2500,2048,0.14300000000000002,0.14300000000000002"
            )
            names.append(name)
    path.write_text("\n".join(lines) + "\n")
    return names


def synth(out: Path, table: Path, *extra: str) -> int:
    args = ["synth", "--nih-layout", "--labels", str(table), "--out", str(out), "--quiet"]
    return main([*args, "--size", str(SIZE), "--workers", "1", *extra])


@pytest.fixture
def table(tmp_path) -> tuple[Path, list[str]]:
    path = tmp_path / "Data_Entry_2017_v2020.csv"
    return path, write_table(path)


def pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("images_*/images/*.png"))}


def test_one_grey_phantom_png_per_row_and_the_table_alongside(tmp_path, table):
    path, names = table
    out = tmp_path / "release"
    assert synth(out, path) == 0
    files = pngs(out)
    assert sorted(files) == sorted(names)
    with Image.open(out / "images_001" / "images" / names[0]) as image:
        assert image.mode == "L" and image.size == (SIZE, SIZE)
    copied = read_table(out / TABLE_NAME)
    assert [i.image_index for i in copied.images] == names
    assert copied.images == read_table(path).images  # ages, sexes, views, follow-ups kept
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["status"] == "complete" and manifest["images"] == len(names)
    assert manifest["patients"] == 14 and manifest["rendered"] == len(names)


def test_archives_follow_the_release_packing():
    assert [archive_folder(k) for k in (0, 4998, 4999, 14998, 14999, 112119)] == [
        "images_001/images",
        "images_001/images",
        "images_002/images",
        "images_002/images",
        "images_003/images",
        "images_012/images",
    ]


def test_a_patients_images_share_a_chest_and_differ_in_their_own_seed(tmp_path, table):
    path, _ = table
    config = StandinConfig(labels=path, size=SIZE)
    jobs = plan_jobs(read_table(path).images, tmp_path, config)
    by_patient: dict[str, set[int]] = {}
    for job in jobs:
        by_patient.setdefault(Path(job.path).name[:8], set()).add(job.anatomy_seed)
    assert all(len(seeds) == 1 for seeds in by_patient.values())
    assert len({seeds.pop() for seeds in by_patient.values()}) == len(by_patient)
    assert len({job.image_seed for job in jobs}) == len(jobs)


def test_same_settings_same_bytes_whatever_the_workers(tmp_path, table):
    path, _ = table
    assert synth(tmp_path / "a", path) == 0
    assert synth(tmp_path / "b", path, "--workers", "2") == 0
    assert synth(tmp_path / "c", path, "--seed", "1") == 0
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b")
    assert pngs(tmp_path / "a") != pngs(tmp_path / "c")


def test_a_partial_output_is_continued_and_damaged_files_rewritten(tmp_path, table):
    path, names = table
    out = tmp_path / "release"
    assert synth(out, path) == 0
    reference = pngs(out)
    folder = out / "images_001" / "images"
    (folder / names[0]).unlink()  # never written
    cut = folder / names[1]
    cut.write_bytes(cut.read_bytes()[:100])  # cut off mid-write
    (folder / (names[2] + ".partial")).write_bytes(b"\x89PNG")  # a killed writer's temp file

    assert synth(out, path) == 0

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["rendered"] == 2 and manifest["already_complete"] == len(names) - 2
    assert pngs(out) == reference
    assert not list(out.rglob("*.partial"))


def test_limit_keeps_whole_patients_and_other_settings_are_refused(tmp_path, table, capsys):
    path, names = table
    out = tmp_path / "release"
    assert synth(out, path, "--limit", "10") == 0
    kept = pngs(out)
    assert 0 < len(kept) <= 10 and list(kept) == sorted(names[: len(kept)])
    assert synth(out, path, "--limit", "10", "--size", "48") == 2
    assert "other settings (size)" in capsys.readouterr().err
    assert synth(out, path, "--limit", "10", "--size", "48", "--overwrite") == 0


def test_the_standin_goes_through_ecl_data_nih(tmp_path, table):
    path, names = table
    release, sites = tmp_path / "release", tmp_path / "sites"
    assert synth(release, path) == 0
    code = main(["nih", "--nih-dir", str(release), "--out", str(sites), "--sites", "2",
                 "--size", "16", "--workers", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    rows = [r for p in sorted(sites.glob(f"*/{LABELS_FILENAME}")) for r in read_label_records(p)]
    assert len(rows) == len(names)
    partition = json.loads((sites / "partition.json").read_text())
    assert partition["missing_images"] == 0 and partition["written"] == len(names)


@pytest.mark.parametrize(
    ("extra", "message"),
    [((), "needs --labels"), (("--labels", "x.csv", "--sites", "3"), "--sites: not used")],
)
def test_misuse_is_a_clear_error(tmp_path, capsys, extra, message):
    assert main(["synth", "--nih-layout", "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_labels_without_nih_layout_is_refused(tmp_path, table, capsys):
    assert main(["synth", "--out", str(tmp_path / "o"), "--labels", str(table[0])]) == 2
    assert "need --nih-layout" in capsys.readouterr().err
