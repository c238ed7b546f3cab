"""The integer decode cache: values against the float decode, size, integrity, no copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dicom_factory import write_site

from hospital_node.data import decode as data_decode
from hospital_node.data.cache import RowFile
from hospital_node.data.dicom import read_dicom_image
from hospital_node.data.site import DataConfig, load_site, union_images

SIZE = 16


@pytest.fixture
def site(tmp_path):
    folder = tmp_path / "N1"
    write_site(folder, 9)
    return folder


@pytest.fixture
def config(tmp_path) -> DataConfig:
    return DataConfig(image_size=SIZE, cache_dir=tmp_path / "cache")


def entry_files(config: DataConfig, suffix: str) -> list:
    return sorted((config.cache_dir / "sites").glob(f"N1-*/{SIZE}px-*{suffix}"))


def count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = data_decode.read_dicom

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(data_decode, "read_dicom", counting)
    return calls


@pytest.mark.parametrize(("dtype", "step"), [("uint8", 1 / 255), ("uint16", 1 / 65535)])
def test_cached_pixels_are_within_half_a_step_of_the_float_decode(site, tmp_path, dtype, step):
    config = DataConfig(image_size=SIZE, cache_dir=tmp_path / dtype, cache_dtype=dtype)
    data = load_site(site, config)
    again = load_site(site, config)  # from the cache
    assert again.report.cache_hit
    for i in range(len(data)):
        reference = read_dicom_image(site / f"dicom/{i:03d}.dcm", image_size=SIZE)
        cached = again.images[i][0].numpy()
        assert np.abs(cached - reference).max() <= 0.5 * step + 1e-6


def test_cache_on_disk_is_a_quarter_of_float32(site, config):
    load_site(site, config)
    (npy,) = entry_files(config, ".npy")
    float32_bytes = 9 * SIZE * SIZE * 4
    array = np.load(npy, mmap_mode="r", allow_pickle=False)
    assert array.dtype == np.uint8 and array.nbytes == float32_bytes // 4
    assert npy.stat().st_size <= float32_bytes // 2


def test_loaded_images_and_subsets_read_the_memory_mapped_entry(site, config):
    data = load_site(site, config)
    storage = data.images.storage
    assert isinstance(storage, np.memmap) and not storage.flags.writeable
    for split in ("train", "val", "test"):
        part = data.subset(split)
        assert np.shares_memory(part.images.storage, storage)
        rows = [i for i, s in enumerate(data.splits) if s == split]
        assert torch.equal(part.images[:], data.images[rows])
    union = union_images([data.subset("train").images, data.subset("test").images])
    assert len(union) == 6 and all(np.shares_memory(p.storage, storage) for p in union.parts)


def corrupt_bytes(path) -> None:
    """Flip pixel bytes in place, keeping the size (a torn or overwritten file)."""
    data = bytearray(path.read_bytes())
    data[-50:-10] = bytes(255 - b for b in data[-50:-10])
    path.unlink()  # a new inode: never rewrite a file others may have mapped
    path.write_bytes(bytes(data))


def truncate(path) -> None:
    data = path.read_bytes()[:-100]
    path.unlink()
    path.write_bytes(data)


def garble_index(path) -> None:
    path.write_text(path.read_text()[:-40])


def drop_index(path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "suffix"),
    [(corrupt_bytes, ".npy"), (truncate, ".npy"), (garble_index, ".json"), (drop_index, ".json")],
)
def test_a_damaged_entry_is_never_trusted_and_is_rebuilt(site, config, monkeypatch, damage, suffix):
    reference = load_site(site, config).images.materialize()
    (target,) = entry_files(config, suffix)
    damage(target)
    calls = count_decodes(monkeypatch)
    again = load_site(site, config)
    assert not again.report.cache_hit and len(calls) == 9  # every file decoded again
    assert torch.equal(again.images.materialize(), reference)
    assert load_site(site, config).report.cache_hit  # the rebuilt entry is good


def test_a_killed_decoders_scratch_file_is_ignored(site, config, monkeypatch):
    load_site(site, config)
    (npy,) = entry_files(config, ".npy")
    folder = npy.parent
    (folder / ".tmp-0123-scratch.npy").write_bytes(b"\x93NUMPY half written")
    calls = count_decodes(monkeypatch)
    assert load_site(site, config).report.cache_hit and not calls


def test_an_older_format_entry_is_replaced_not_read(site, config, monkeypatch):
    load_site(site, config)
    (index,) = entry_files(config, ".json")
    meta = json.loads(index.read_text())
    meta["format_version"] = 1  # as written by the float32 cache
    index.write_text(json.dumps(meta))
    calls = count_decodes(monkeypatch)
    assert not load_site(site, config).report.cache_hit and len(calls) == 9
    assert len(entry_files(config, ".npy")) == 1


def test_other_dtype_entry_is_reused_row_by_row_not_decoded(site, config, monkeypatch):
    wide = load_site(site, DataConfig(image_size=SIZE, cache_dir=config.cache_dir,
                                      cache_dtype="uint16"))  # fmt: skip
    calls = count_decodes(monkeypatch)
    narrow = load_site(site, config)
    assert not narrow.report.cache_hit and not calls and narrow.report.n_decoded == 0
    difference = (narrow.images.materialize() - wide.images.materialize()).abs().max()
    assert float(difference) <= 0.5 / 255 + 1e-6


def test_row_file_writes_rows_without_mapping(tmp_path):
    rows = RowFile.create(tmp_path / "r.npy", (3, 1, 4, 4), np.dtype(np.uint8))
    rows.write(2, np.full((4, 4), 7, dtype=np.uint8))
    rows.close()
    array = np.load(tmp_path / "r.npy", allow_pickle=False)
    assert array.shape == (3, 1, 4, 4) and array[2].max() == 7 and array[:2].max() == 0
    with pytest.raises(IndexError):
        RowFile(tmp_path / "r.npy").write(3, np.zeros((4, 4), dtype=np.uint8))
