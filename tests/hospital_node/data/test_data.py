"""hospital_node.data.site: site loading, bad-input reasons, the on-disk cache, SiteData."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dicom_factory import (
    gradient_image,
    label_row,
    make_dataset,
    write,
    write_labels,
    write_site,
)
from pydicom.uid import JPEG2000Lossless

from data_tools.labels import NUM_FINDINGS
from hospital_node.data import decode as data_decode
from hospital_node.data.cache import RowFile, default_cache_dir
from hospital_node.data.site import (
    SKIP_REASONS,
    DataConfig,
    DataReport,
    SiteDataError,
    load_site,
)

SIZE = 16


@pytest.fixture
def config(tmp_path) -> DataConfig:
    return DataConfig(image_size=SIZE, cache_dir=tmp_path / "cache")


@pytest.fixture
def clean_site(tmp_path):
    site = tmp_path / "N1"
    write_site(site, 9)
    return site


def forbid_decoding(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the cache should have served this load")

    monkeypatch.setattr(data_decode, "read_dicom", refuse)


# --- a clean site -----------------------------------------------------------------------------


def test_clean_site_loads_every_row_in_table_order(clean_site, config):
    data = load_site(clean_site, config)
    assert len(data) == 9 and data.site == "N1"
    assert data.images.shape == (9, 1, SIZE, SIZE) and data.images.dtype == torch.float32
    pixels = data.images[:]
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert data.labels.shape == (9, NUM_FINDINGS)
    assert data.labels[:, 0].tolist() == [i % 2 for i in range(9)]
    assert data.splits[:3] == ("train", "val", "test")
    assert data.patient_ids[0] == "P-dicom/000.dcm"
    assert data.report.n_rows == 9 and data.report.n_loaded == 9 and not data.report.skipped


def test_nothing_is_written_into_the_site_folder(clean_site, tmp_path, monkeypatch):
    monkeypatch.delenv("ECL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(p.relative_to(clean_site) for p in clean_site.rglob("*"))
    load_site(clean_site, DataConfig(image_size=SIZE))
    assert sorted(p.relative_to(clean_site) for p in clean_site.rglob("*")) == before
    assert default_cache_dir() == tmp_path / "xdg" / "ecl-hospitals"
    assert list((tmp_path / "xdg" / "ecl-hospitals" / "sites").glob("N1-*/*.npy"))


def test_subset_keeps_rows_of_one_split_consistent(clean_site, config):
    data = load_site(clean_site, config)
    train = data.subset("train")
    assert len(train) == 3 and set(train.splits) == {"train"}
    assert train.sop_instance_uids == data.sop_instance_uids[0::3]
    assert torch.equal(train.images[:], data.images[0::3])
    assert torch.equal(train.labels, data.labels[0::3])
    with pytest.raises(ValueError, match="split"):
        data.subset("holdout")


# --- bad inputs: every case recorded with its reason, none raised ------------------------------


def build_messy_site(site):
    """One good file plus every kind of bad row or file; returns the expected reasons."""
    rows, expected = [], {}

    def add(rel, ds, reason, **kwargs):
        if ds is not None:
            write(ds, site / rel, **kwargs)
        rows.append(label_row(ds if ds is not None else f"1.2.3.{len(rows)}", rel))
        expected[rel] = reason

    add("dicom/good.dcm", make_dataset(gradient_image(), name="good"), None)
    add(
        "dicom/ct.dcm",
        make_dataset(gradient_image(), name="ct", modality="CT"),
        "unsupported_modality",
    )
    frames = np.stack([gradient_image()] * 3)
    add("dicom/frames.dcm", make_dataset(frames, name="frames"), "not_2d")
    rgb = np.repeat((gradient_image() // 16).astype(np.uint8)[..., None], 3, axis=2)
    add("dicom/rgb.dcm", make_dataset(rgb, name="rgb", photometric="RGB", bits_stored=8), "not_2d")
    empty = make_dataset(gradient_image(), name="empty")
    del empty.PixelData
    add("dicom/empty.dcm", empty, "no_pixel_data")
    add("dicom/cut.dcm", make_dataset(gradient_image(64, 64), name="cut"), "truncated")
    (site / "dicom/cut.dcm").write_bytes((site / "dicom/cut.dcm").read_bytes()[:-3000])
    add("dicom/notes.dcm", None, "not_dicom")
    (site / "dicom/notes.dcm").write_text("not an image\n" * 30)
    add("dicom/gone.dcm", None, "missing_file")
    good_again = make_dataset(gradient_image(), name="good")  # same SOP Instance UID as good.dcm
    add("dicom/copy.dcm", good_again, "duplicate_sop_instance_uid")
    liar = make_dataset(gradient_image(), name="liar")
    write(liar, site / "dicom/liar.dcm")
    rows.append(label_row("9.9.9", "dicom/liar.dcm"))
    expected["dicom/liar.dcm"] = "sop_instance_uid_mismatch"
    bad = label_row(make_dataset(gradient_image(), name="bad"), "dicom/bad.dcm", split="train")
    bad["Atelectasis"] = "maybe"
    write(make_dataset(gradient_image(), name="bad"), site / "dicom/bad.dcm")
    rows.append(bad)
    expected["dicom/bad.dcm"] = "bad_label_row"
    rows.append(label_row("1.2.3.99", "../outside.dcm"))
    expected["../outside.dcm"] = "bad_label_row"
    write(make_dataset(gradient_image(), name="stray"), site / "dicom/stray.dcm")
    expected["dicom/stray.dcm"] = "no_label_row"
    write_labels(site, rows)
    return expected


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_bad_input_is_reported_with_its_reason_and_the_rest_loads(tmp_path, config):
    site = tmp_path / "messy"
    expected = build_messy_site(site)
    data = load_site(site, config)
    reasons = {s.path: s.reason for s in data.report.skipped}
    assert reasons == {path: r for path, r in expected.items() if r is not None}
    assert all(s.reason in SKIP_REASONS and s.detail for s in data.report.skipped)
    assert len(data) == 1 and data.report.n_loaded == 1
    assert data.report.n_rows == 12  # the stray file has no row
    summary = data.report.summary()
    assert "1/12 images loaded" in summary and "unsupported_modality 1" in summary


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_report_is_written_as_json_next_to_the_cache_and_reads_back(tmp_path, config):
    site = tmp_path / "messy"
    build_messy_site(site)
    report = load_site(site, config).report
    written = list((tmp_path / "cache" / "sites").glob("messy-*/report.json"))
    assert len(written) == 1
    payload = json.loads(written[0].read_text())
    assert payload["skipped_by_reason"]["not_2d"] == 2
    report.to_json(tmp_path / "copy.json")
    assert DataReport.from_json(tmp_path / "copy.json") == report


def test_site_without_labels_is_an_error_naming_the_folder(tmp_path, config):
    (tmp_path / "N9").mkdir()
    with pytest.raises(SiteDataError, match="N9.*labels.csv"):
        load_site(tmp_path / "N9", config)


def test_label_table_with_missing_columns_is_an_error(tmp_path, config):
    site = tmp_path / "N2"
    site.mkdir()
    (site / "labels.csv").write_text("path,split\ndicom/a.dcm,train\n")
    with pytest.raises(SiteDataError, match="N2.*missing columns"):
        load_site(site, config)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_site_with_no_usable_image_is_an_error_and_still_reported(tmp_path, config):
    site = tmp_path / "N3"
    write(make_dataset(gradient_image(), name="ct", modality="CT"), site / "dicom/ct.dcm")
    write_labels(site, [label_row(make_dataset(gradient_image(), name="ct"), "dicom/ct.dcm")])
    with pytest.raises(SiteDataError, match=r"N3.*unsupported_modality.*report\.json"):
        load_site(site, config)
    assert list((tmp_path / "cache" / "sites").glob("N3-*/report.json"))


# --- the cache ---------------------------------------------------------------------------------


def test_second_load_is_served_from_cache_without_decoding(clean_site, config, monkeypatch):
    first = load_site(clean_site, config)
    assert not first.report.cache_hit and first.report.n_decoded == 9
    forbid_decoding(monkeypatch)
    second = load_site(clean_site, config)
    assert second.report.cache_hit and second.report.n_decoded == 0
    assert torch.equal(first.images.materialize(), second.images.materialize())
    assert torch.equal(first.labels, second.labels)


def test_changed_file_invalidates_and_only_it_is_decoded(clean_site, config):
    first = load_site(clean_site, config)
    changed = make_dataset(np.flipud(gradient_image()).copy(), name="N1-4")
    write(changed, clean_site / "dicom/004.dcm")
    second = load_site(clean_site, config)
    assert not second.report.cache_hit and second.report.n_decoded == 1
    assert not torch.equal(second.images[4], first.images[4])
    keep = [i for i in range(9) if i != 4]
    assert torch.equal(second.images[keep], first.images[keep])
    entries = list((config.cache_dir / "sites").glob(f"N1-*/{SIZE}px-*.npy"))
    assert len(entries) == 1  # the stale entry was removed


def test_image_size_is_part_of_the_key(clean_site, config):
    load_site(clean_site, config)
    bigger = load_site(clean_site, DataConfig(image_size=24, cache_dir=config.cache_dir))
    assert not bigger.report.cache_hit and bigger.images.shape[-1] == 24


def test_cached_images_are_a_memory_map_readable_without_pickle(clean_site, config):
    load_site(clean_site, config)
    (npy,) = (config.cache_dir / "sites").glob(f"N1-*/{SIZE}px-*.npy")
    array = np.load(npy, mmap_mode="r", allow_pickle=False)
    assert array.shape == (9, 1, SIZE, SIZE) and array.dtype == np.uint8


def test_damaged_cache_entry_is_rebuilt(clean_site, config):
    reference = load_site(clean_site, config).images.materialize()
    (npy,) = (config.cache_dir / "sites").glob(f"N1-*/{SIZE}px-*.npy")
    damaged = npy.read_bytes()[:200]
    npy.unlink()  # a new inode: truncating a mapped file in place would SIGBUS its readers
    npy.write_bytes(damaged)
    again = load_site(clean_site, config)
    assert not again.report.cache_hit and torch.equal(again.images.materialize(), reference)


def test_unwritable_cache_is_an_error_saying_what_to_set(clean_site, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(SiteDataError, match="N1.*cache.*ECL_CACHE_DIR"):
        load_site(clean_site, DataConfig(image_size=SIZE, cache_dir=blocker))


def test_decode_failures_are_cached_too(tmp_path, config, monkeypatch):
    site = tmp_path / "N4"
    write_site(site, 2)
    (site / "dicom/001.dcm").write_text("not dicom")
    assert load_site(site, config).report.counts() == {"not_dicom": 1}
    forbid_decoding(monkeypatch)
    assert load_site(site, config).report.counts() == {"not_dicom": 1}


@pytest.mark.slow  # two spawned workers import torch + MONAI: ~20 s on 2 busy cores
def test_pool_decoding_matches_in_process_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(data_decode, "POOL_MIN_FILES", 1)  # a pool even for 12 files
    site = tmp_path / "N5"
    rows = []
    for i in range(12):
        ds = make_dataset(gradient_image() // (1 + i % 4), name=f"pool-{i}")
        write(ds, site / f"dicom/{i}.dcm", syntax=JPEG2000Lossless if i % 2 else None)
        rows.append(label_row(ds, f"dicom/{i}.dcm"))
    write_labels(site, rows)
    serial = load_site(site, DataConfig(image_size=SIZE, cache_dir=tmp_path / "a"))
    pooled = load_site(site, DataConfig(image_size=SIZE, cache_dir=tmp_path / "b", workers=2))
    assert torch.equal(serial.images.materialize(), pooled.images.materialize())


def test_decode_errors_surface_as_outcomes_not_exceptions(tmp_path):
    out = RowFile.create(tmp_path / "rows.npy", (1, 1, SIZE, SIZE), np.dtype(np.uint8))
    (tmp_path / "x.dcm").write_text("hello")
    outcome = data_decode.decode_into(str(tmp_path / "x.dcm"), SIZE, out, 0)
    assert outcome.reason == "not_dicom" and isinstance(outcome.detail, str)
    missing = data_decode.decode_into(str(tmp_path / "nope.dcm"), SIZE, out, 0)
    assert missing.reason == "missing_file"


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="image_size"):
        DataConfig(image_size=2)
    with pytest.raises(ValueError, match="workers"):
        DataConfig(workers=-1)
