"""hospital_node.data.dicom: display pipeline (rescale, window, photometric, resize), bad inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import compress, gradient_image, make_dataset, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from hospital_node.data.dicom import (
    REASONS,
    DicomReadError,
    dicom_summary,
    read_dicom,
    read_dicom_image,
)

MAX12 = 4095


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def min_max(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def reason_of(source: Path | bytes) -> str:
    with pytest.raises(DicomReadError) as info:
        read_dicom_image(source)
    assert info.value.reason in REASONS
    return info.value.reason


# --- the display pipeline -------------------------------------------------------------------


def test_plain_monochrome2_is_min_max_scaled_float32():
    stored = gradient_image()
    image = read_dicom_image(to_bytes(make_dataset(stored)))
    assert image.dtype == np.float32 and image.shape == stored.shape
    np.testing.assert_allclose(image, min_max(stored), atol=1e-6)


def test_path_and_bytes_give_the_same_image(tmp_path):
    ds = make_dataset(gradient_image())
    path = write(ds, tmp_path / "a.dcm")
    np.testing.assert_array_equal(read_dicom_image(path), read_dicom_image(path.read_bytes()))


@pytest.mark.parametrize("window", [None, (1500.0, 2000.0)])
def test_monochrome1_and_monochrome2_of_one_image_load_the_same(window):
    stored = gradient_image()
    mono2 = make_dataset(stored, photometric="MONOCHROME2")
    mono1 = make_dataset(MAX12 - stored, photometric="MONOCHROME1")
    if window is not None:
        center, width = window
        mono2.WindowCenter, mono2.WindowWidth = center, width
        # Mirror the window with the stored values (LINEAR: centre c -> MAX - c + 1).
        mono1.WindowCenter, mono1.WindowWidth = MAX12 - center + 1, width
    image2 = read_dicom_image(to_bytes(mono2))
    image1 = read_dicom_image(to_bytes(mono1))
    np.testing.assert_allclose(image1, image2, atol=1e-6)
    assert image2[0, 0] < image2[-1, -1]  # bright = high stored value in MONOCHROME2


def test_window_maps_its_edges_to_zero_and_one_and_its_centre_to_half():
    stored = np.array([[0, 999, 1000, 1500, 2000, 2001, 4095]], dtype=np.uint16)
    ds = make_dataset(stored)
    # PS3.3 C.11.2.1.2.1 LINEAR: y = (x - (c - 0.5)) / (w - 1) + 0.5, clipped: here x <= 999.5
    # gives 0, x > 2000.5 gives 1, and x = c - 0.5 = 1500 gives exactly 0.5.
    ds.WindowCenter, ds.WindowWidth = 1500.5, 1002.0
    image = read_dicom_image(to_bytes(ds))
    expected = np.clip((stored - 999.5) / 1001.0, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image[0, 3] == 0.5 and image[0, 1] == 0.0 and image[0, 5] == 1.0


def test_rescale_slope_and_intercept_are_applied_before_the_window():
    stored = np.array([[0, 500, 1000, 1500, 2000]], dtype=np.uint16)
    ds = make_dataset(stored)
    # Modality values 2*v - 1000 lie in [-1000, 3000]; the window is in modality units.
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, -1000, "US"
    ds.WindowCenter, ds.WindowWidth = 500.5, 2002.0  # LINEAR: (-500.5, 1500.5] onto [0, 1]
    image = read_dicom_image(to_bytes(ds))
    modality = 2.0 * stored - 1000.0
    np.testing.assert_allclose(image, np.clip((modality + 500.5) / 2001, 0, 1), atol=1e-6)


def test_shifted_intercept_with_shifted_window_gives_the_same_image():
    stored = gradient_image()
    base, shifted = make_dataset(stored, name="a"), make_dataset(stored, name="b")
    base.RescaleSlope, base.RescaleIntercept = 1, 0
    shifted.RescaleSlope, shifted.RescaleIntercept = 1, -1024
    base.WindowCenter, base.WindowWidth = 2000, 3000
    shifted.WindowCenter, shifted.WindowWidth = 2000 - 1024, 3000
    image = read_dicom_image(to_bytes(base))
    np.testing.assert_allclose(read_dicom_image(to_bytes(shifted)), image, atol=1e-6)
    assert not np.allclose(image, min_max(stored), atol=1e-3)  # the window did something


def test_voi_lut_sequence_is_applied_and_scaled_by_its_bit_depth():
    stored = gradient_image()
    ds = make_dataset(stored)
    item = Dataset()
    curve = np.round(MAX12 * (np.arange(4096) / MAX12) ** 0.5).astype(int)  # a gamma-like LUT
    item.add_new(0x00283002, "US", [4096, 0, 12])  # (0028,3002) LUT Descriptor: 12-bit output
    item.add_new(0x00283006, "US", curve.tolist())  # (0028,3006) LUT Data
    ds.VOILUTSequence = Sequence([item])
    image = read_dicom_image(to_bytes(ds))
    np.testing.assert_allclose(image, curve[stored] / MAX12, atol=1e-6)


def test_signed_pixels_are_decoded_with_their_sign():
    stored = gradient_image().astype(np.int16) - 2048
    ds = make_dataset(stored)
    assert ds.PixelRepresentation == 1
    np.testing.assert_allclose(read_dicom_image(to_bytes(ds)), min_max(stored), atol=1e-6)


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEG2000Lossless, RLELossless])
def test_lossless_transfer_syntaxes_decode_exactly(syntax):
    if syntax == JPEGLosslessSV1:
        pytest.importorskip("imagecodecs", reason="JPEG Lossless test files need imagecodecs")
    stored = gradient_image() // 3 + np.arange(40, dtype=np.uint16)  # some texture
    reference = read_dicom_image(to_bytes(make_dataset(stored, name="raw")))
    compressed = make_dataset(stored, name="compressed")
    compress(compressed, syntax)
    image, ds = read_dicom(to_bytes(compressed))
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(image, reference)


@pytest.mark.parametrize("size", [16, 100])
def test_resize_gives_a_square_image_in_unit_range(size):
    image = read_dicom_image(to_bytes(make_dataset(gradient_image())), image_size=size)
    assert image.shape == (size, size) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image[0, 0] < image[-1, -1]  # the ramp survives


def test_shrinking_averages_instead_of_aliasing():
    checker = (np.indices((64, 64)).sum(0) % 2 * MAX12).astype(np.uint16)
    image = read_dicom_image(to_bytes(make_dataset(checker)), image_size=16)
    np.testing.assert_allclose(image, 0.5, atol=1e-6)


def test_summary_lists_display_fields():
    ds = read_dicom(to_bytes(make_dataset(gradient_image())))[1]
    summary = dicom_summary(ds)
    assert summary["modality"] == "DX"
    assert summary["photometric_interpretation"] == "MONOCHROME2"
    assert (summary["rows"], summary["columns"], summary["bits_stored"]) == (48, 40, 12)
    assert summary["view_position"] == "PA"
    assert "Explicit VR Little Endian" in summary["transfer_syntax"]


# --- bad inputs: each gets its reason, nothing else escapes -----------------------------------


def test_text_file_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("patient 123, chest PA, see attached\n" * 20)
    assert reason_of(path) == "not_dicom"


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
@pytest.mark.parametrize("keep_fraction", [0.05, 0.3, 0.6, 0.999])
def test_cut_files_are_truncated(keep_fraction):
    data = to_bytes(make_dataset(gradient_image(128, 128)))
    cut = data[: max(140, int(len(data) * keep_fraction))]
    assert reason_of(cut) == "truncated"


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_cut_compressed_file_is_truncated():
    ds = make_dataset(np.random.default_rng(0).integers(0, MAX12, (64, 64)).astype(np.uint16))
    ds.compress(JPEG2000Lossless)
    data = to_bytes(ds)
    assert reason_of(data[: len(data) // 2]) == "truncated"


def test_file_without_pixel_data_has_no_pixel_data():
    ds = make_dataset(gradient_image())
    del ds.PixelData
    assert reason_of(to_bytes(ds)) == "no_pixel_data"


@pytest.mark.parametrize("modality", ["CT", "MR", None])
def test_other_or_missing_modality_is_unsupported(modality):
    ds = make_dataset(gradient_image(), modality=modality)
    assert reason_of(to_bytes(ds)) == "unsupported_modality"


def test_presentation_lut_inverse_is_not_applied_twice_to_monochrome1():
    stored = gradient_image()
    mono2 = make_dataset(stored, name="a")
    mono1 = make_dataset(MAX12 - stored, name="b", photometric="MONOCHROME1")
    mono1.PresentationLUTShape = "INVERSE"  # what the DX Image module requires for MONOCHROME1
    inverse2 = make_dataset(MAX12 - stored, name="c")
    inverse2.PresentationLUTShape = "INVERSE"
    expected = read_dicom_image(to_bytes(mono2))
    np.testing.assert_allclose(read_dicom_image(to_bytes(mono1)), expected, atol=1e-6)
    np.testing.assert_allclose(read_dicom_image(to_bytes(inverse2)), expected, atol=1e-6)


def test_cr_is_accepted():
    ds = make_dataset(gradient_image(), modality="CR")
    assert read_dicom_image(to_bytes(ds)).shape == (48, 40)


def test_unknown_transfer_syntax_is_unsupported():
    ds = make_dataset(gradient_image())
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    assert reason_of(to_bytes(ds)) == "unsupported_transfer_syntax"


def test_multi_frame_is_not_2d():
    frames = np.stack([gradient_image()] * 3)
    assert reason_of(to_bytes(make_dataset(frames))) == "not_2d"


def test_rgb_is_not_2d():
    rgb = np.repeat((gradient_image() // 16).astype(np.uint8)[..., None], 3, axis=2)
    assert reason_of(to_bytes(make_dataset(rgb, photometric="RGB", bits_stored=8))) == "not_2d"


def test_corrupt_codestream_fails_to_decode():
    ds = make_dataset(np.random.default_rng(1).integers(0, MAX12, (64, 64)).astype(np.uint16))
    ds.compress(JPEG2000Lossless)
    data = to_bytes(ds)
    start = data.index(b"\xff\x4f\xff\x51")  # J2K SOC + SIZ markers open the codestream
    broken = data[:start] + b"\x00" * 16 + data[start + 16 :]  # same lengths, no header
    assert reason_of(broken) == "decode_failed"


def test_absurd_image_size_is_refused_before_allocation():
    ds = make_dataset(gradient_image())
    ds.Rows = 60000
    assert reason_of(to_bytes(ds)) == "too_large"


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_any_bytes_give_an_image_or_a_reasoned_error(data):
    try:
        image = read_dicom_image(b"\0" * 128 + b"DICM" + data)
    except DicomReadError as exc:
        assert exc.reason in REASONS
    else:
        assert image.ndim == 2


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damaged values
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 8))
def test_corrupted_valid_file_gives_an_image_or_a_reasoned_error(position, run):
    data = bytearray(to_bytes(make_dataset(gradient_image(16, 16))))
    at = position % len(data)
    data[at : at + run] = bytes((b ^ 0x5A) for b in data[at : at + run])
    try:
        image = read_dicom_image(bytes(data), image_size=8)
    except DicomReadError as exc:
        assert exc.reason in REASONS
    else:
        assert image.shape == (8, 8) and np.isfinite(image).all()


def test_error_carries_a_stable_reason():
    error = DicomReadError("not_2d", "3 frames")
    assert str(error) == "not_2d: 3 frames" and error.reason == "not_2d"
    with pytest.raises(ValueError, match="unknown DicomReadError reason"):
        DicomReadError("bad", "x")
