"""hospital_node.data.images: integer storage, float batches, views without copies, unions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from hospital_node.data.images import (
    SiteImages,
    UnionImages,
    dequantize,
    quantize,
    union_images,
)

SIZE = 8


def stored(n: int, *, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """n distinct integer images [n, 1, SIZE, SIZE]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max + 1, size=(n, 1, SIZE, SIZE)).astype(dtype)


def expected(array: np.ndarray, rows) -> torch.Tensor:
    return torch.from_numpy(array[np.asarray(rows)].astype(np.float32) / np.iinfo(array.dtype).max)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=64))
@settings(max_examples=60, deadline=None)
def test_quantize_round_trip_is_within_half_a_step(values):
    image = np.asarray(values, dtype=np.float32)
    for dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        back = dequantize(quantize(image, dtype)).numpy()
        step = 1.0 / np.iinfo(dtype).max
        assert np.abs(back - image).max() <= 0.5 * step + 1e-7


def test_quantize_maps_the_ends_exactly_and_clips():
    q = quantize(np.array([-0.5, 0.0, 1.0, 2.0], dtype=np.float32), np.dtype(np.uint8))
    assert q.tolist() == [0, 0, 255, 255]
    assert dequantize(q).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_take_returns_float_batches_in_the_order_asked_with_repeats():
    array = stored(10)
    images = SiteImages(array)
    batch = images.take(torch.tensor([7, 2, 2, 9]))
    assert batch.dtype == torch.float32 and batch.shape == (4, 1, SIZE, SIZE)
    assert torch.equal(batch, expected(array, [7, 2, 2, 9]))
    assert images.shape == (10, 1, SIZE, SIZE) and len(images) == 10 and images.size(0) == 10


def test_tensor_style_indexing_int_slice_negative_and_mask():
    array = stored(6)
    images = SiteImages(array)
    assert torch.equal(images[3], expected(array, [3])[0])
    assert torch.equal(images[-1], expected(array, [5])[0])
    assert torch.equal(images[1:5:2], expected(array, [1, 3]))
    assert torch.equal(images[torch.tensor(4)], expected(array, [4])[0])
    mask = torch.tensor([True, False, False, True, False, True])
    assert torch.equal(images[mask], expected(array, [0, 3, 5]))
    assert images[[]].shape == (0, 1, SIZE, SIZE)
    with pytest.raises(IndexError):
        images.take([6])
    with pytest.raises(IndexError):
        images.take(torch.tensor([0.5]))


def test_select_is_a_view_of_the_same_storage_not_a_copy():
    array = stored(12)
    images = SiteImages(array)
    scattered = images.select(torch.tensor([0, 3, 6, 9]))  # non-contiguous rows
    run = images.select(torch.arange(4, 8))  # a contiguous run becomes a slice
    for view in (scattered, run):
        assert np.shares_memory(view.storage, array)
    assert run.rows is None and run.storage.base is not None
    assert torch.equal(scattered[:], expected(array, [0, 3, 6, 9]))
    assert torch.equal(run[:], expected(array, [4, 5, 6, 7]))
    nested = scattered.select([3, 1])
    assert np.shares_memory(nested.storage, array)
    assert torch.equal(nested[:], expected(array, [9, 3]))


def test_memory_mapped_storage_stays_mapped_through_subsets(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, stored(20))
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    images = SiteImages(mapped)
    subset = images.select(np.arange(0, 20, 3))
    assert isinstance(subset.storage, np.memmap) and not subset.storage.flags.writeable
    batch = subset.take([1, 0])
    batch += 1.0  # batches are private copies: the file is untouched
    assert torch.equal(subset.take([1, 0]), expected(np.load(path), [3, 0]))


def test_union_chains_sites_without_concatenating():
    a, b, c = stored(4, seed=1), stored(3, seed=2), stored(5, seed=3)
    parts = [SiteImages(a), SiteImages(b).select([2, 0]), SiteImages(c)]
    union = union_images(parts)
    assert isinstance(union, UnionImages) and len(union) == 11
    reference = torch.cat([p[:] for p in parts])
    order = torch.tensor([10, 0, 4, 5, 3, 6, 4])
    assert torch.equal(union.take(order), reference[order])
    assert torch.equal(union[:], reference)
    assert all(np.shares_memory(p.storage, s) for p, s in zip(parts, (a, b, c), strict=True))
    assert torch.equal(union.select([5, 4])[:], reference[[5, 4]])


def test_union_refuses_mixed_image_sizes():
    small = SiteImages(np.zeros((2, 1, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="different sizes"):
        union_images([small, SiteImages(stored(2))])


def test_to_device_delivers_batches_there_and_cpu_is_a_no_op():
    images = SiteImages(stored(3))
    assert images.to("cpu") is images
    moved = images.to("meta")
    assert moved.device.type == "meta" and moved.take([0]).device.type == "meta"
    assert images.take([0]).device.type == "cpu"


def test_works_as_a_tensor_dataset_member():
    images = SiteImages(stored(5))
    labels = torch.zeros(5, 14)
    dataset = TensorDataset(images, labels)  # type: ignore[arg-type]
    image, label = dataset[2]
    assert image.shape == (1, SIZE, SIZE) and label.shape == (14,)


def test_from_float_and_uint16_storage():
    rng = np.random.default_rng(0)
    values = rng.random((3, 1, SIZE, SIZE)).astype(np.float32)
    wide = SiteImages.from_float(values, "uint16")
    assert wide.storage.dtype == np.uint16
    assert np.abs(wide[:].numpy() - values).max() <= 0.5 / 65535 + 1e-7
    with pytest.raises(ValueError, match="uint8/uint16"):
        SiteImages(values)


def test_pickles_as_the_mapped_file_not_its_pixels(tmp_path):
    path = tmp_path / "images.npy"
    array = stored(50)
    np.save(path, array)
    images = SiteImages(np.load(path, mmap_mode="r", allow_pickle=False))
    for view in (images, images.select(torch.arange(10, 30)), images.select([40, 2, 7])):
        payload = pickle.dumps(view)
        assert len(payload) < 2_000  # a path and a few numbers, not 50 x 64 pixels
        back = pickle.loads(payload)
        assert isinstance(back.storage, np.memmap)
        assert torch.equal(back[:], view[:])
    in_memory = SiteImages(array)
    assert torch.equal(pickle.loads(pickle.dumps(in_memory))[:], in_memory[:])
