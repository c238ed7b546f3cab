"""Limits checked before parsing and decoding: the structure scan, frame headers, bombs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from dicom_factory import gradient_image, make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from data_tools.hostile_bytes import (
    PRIVATE_GROUP,
    deflate_with_zeros,
    element,
    file_meta,
    item,
    sequence,
    split_meta,
)
from hospital_node.data.codestream import (
    CodestreamError,
    j2k_header,
    jpeg_header,
    rle_segment_length,
    rle_segments,
)
from hospital_node.data.dicom import read_dicom_image, read_part10
from hospital_node.data.dicom_limits import REASONS, DicomLimits, DicomReadError
from hospital_node.data.dicom_scan import scan_part10


def to_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def plain() -> bytes:
    return to_bytes(make_dataset(gradient_image(64, 64)))


def reason_of(data: bytes, limits: DicomLimits | None = None) -> DicomReadError:
    with pytest.raises(DicomReadError) as info:
        read_dicom_image(data, **({"limits": limits} if limits else {}))
    return info.value


# --- the structure scan ------------------------------------------------------------------------


def test_scan_counts_elements_and_finds_native_pixel_data():
    data = plain()
    ds, layout = read_part10(data)
    offset, length = layout.pixel_span
    assert length == 64 * 64 * 2
    assert data[offset : offset + length] == ds.PixelData
    assert layout.elements == len(ds.file_meta) + len(ds)  # every element counted once
    assert layout.depth == 0 and layout.fragments == []


def test_scan_finds_the_fragments_of_a_compressed_frame():
    ds = make_dataset(gradient_image(64, 64))
    ds.compress(JPEG2000Lossless)
    layout = scan_part10(to_bytes(ds), DicomLimits())
    assert len(layout.fragments) == 2  # the Basic Offset Table, then the frame
    assert layout.frame_bytes().startswith(b"\xff\x4f\xff\x51")


@pytest.mark.parametrize("undefined", [True, False])
def test_element_count_limit_counts_nested_items(undefined):
    tail = sequence(
        PRIVATE_GROUP, 0x1010, item(element(0x0008, 0x0060, "CS", b"DX")) * 30, undefined=undefined
    )
    data = plain() + tail
    scan_part10(data, DicomLimits(max_elements=100))  # 30 items + 30 elements + the header fit
    error = reason_of(data, DicomLimits(max_elements=40))
    assert error.reason == "too_large" and "data elements, items and fragments" in error.detail


def test_nesting_limit():
    inner = b""
    for _ in range(5):
        inner = sequence(0x0040, 0xA730, item(inner))
    data = plain() + sequence(PRIVATE_GROUP, 0x1010, item(inner))
    assert scan_part10(data, DicomLimits()).depth == 6
    assert reason_of(data, DicomLimits(max_depth=5)).reason == "too_large"


def test_a_sequence_holding_a_data_element_is_not_dicom():
    data = plain() + sequence(PRIVATE_GROUP, 0x1010, element(0x0008, 0x0060, "CS", b"DX"))
    assert reason_of(data).reason == "not_dicom"


@pytest.mark.parametrize(
    "tail",
    [
        element(PRIVATE_GROUP, 0x1010, "SQ", b"", 0xFFFFFFFF) + item() * 2,  # no (FFFE,E0DD)
        element(PRIVATE_GROUP, 0x1010, "OB", b"x" * 10, 1000),  # value past the end
    ],
)
def test_structures_cut_by_the_end_of_file_are_truncated(tail):
    assert reason_of(plain() + tail).reason == "truncated"


def test_file_size_is_checked_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.dcm"
    path.write_bytes(plain())
    size = path.stat().st_size
    limits = DicomLimits(max_file_bytes=1000)
    assert reason_of(path.read_bytes(), limits).reason == "too_large"

    def never(*args, **kwargs):
        raise AssertionError("a file over the limit was opened")

    monkeypatch.setattr(type(path), "open", never)
    with pytest.raises(DicomReadError, match=f"too_large: the file is {size:,} bytes"):
        read_dicom_image(path, limits=limits)


def test_deflate_bomb_is_refused_while_inflating():
    meta, body = split_meta(plain())
    bomb = file_meta("1.2.3.4", "1.2.840.10008.1.2.1.99") + deflate_with_zeros(body, 50 * 2**20)
    assert len(bomb) < 100_000
    error = reason_of(bomb)
    assert error.reason == "too_large" and "Deflated" in error.detail


def test_a_small_deflated_file_still_loads():
    meta, body = split_meta(plain())
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = file_meta("1.2.3.4", "1.2.840.10008.1.2.1.99") + packer.compress(body)
    deflated += packer.flush()
    assert read_dicom_image(deflated).shape == (64, 64)


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=400))
def test_scan_of_any_data_set_bytes_gives_a_layout_or_a_reasoned_error(body):
    data = file_meta("1.2.3.4", "1.2.840.10008.1.2.1") + body
    try:
        scan_part10(data, DicomLimits(max_elements=50))
    except DicomReadError as exc:
        assert exc.reason in REASONS


# --- frame headers -----------------------------------------------------------------------------


def compressed(syntax) -> bytes:
    from dicom_factory import compress

    ds = make_dataset(np.random.default_rng(0).integers(0, 4095, (64, 48)).astype(np.uint16))
    compress(ds, syntax)
    return to_bytes(ds)


def test_jpeg_and_j2k_headers_give_the_frame_size():
    jpeg = scan_part10(compressed(JPEGLosslessSV1), DicomLimits()).frame_bytes()
    j2k = scan_part10(compressed(JPEG2000Lossless), DicomLimits()).frame_bytes()
    for header in (jpeg_header(jpeg), j2k_header(j2k)):
        assert (header.rows, header.columns, header.samples) == (64, 48, 1)
    assert jpeg_header(jpeg).bits == 12 and j2k_header(j2k).tiles == 1
    with pytest.raises(CodestreamError, match="SOI"):
        jpeg_header(j2k)
    with pytest.raises(CodestreamError, match="SOC"):
        j2k_header(jpeg)


@pytest.mark.parametrize(
    ("segment", "length"),
    [(b"\x81\x00", 128), (b"\x02abc", 3), (b"\x80", 0), (b"\xff\x07" * 3, 6), (b"\x05ab", 2)],
)
def test_rle_segment_length_golden(segment, length):
    assert rle_segment_length(segment, limit=10**6) == length


def test_rle_length_stops_counting_past_its_limit():
    assert rle_segment_length(b"\x81\x00" * 10**6, limit=1000) == 1024


def test_rle_segments_follow_the_header():
    frame = scan_part10(compressed(RLELossless), DicomLimits()).frame_bytes()
    segments = rle_segments(frame)
    assert len(segments) == 2  # 16-bit samples: high bytes, low bytes
    assert all(rle_segment_length(s, 10**6) == 64 * 48 for s in segments)
    with pytest.raises(CodestreamError, match="offsets"):
        rle_segments(frame[:4] + struct.pack("<L", 63) + frame[8:])


def test_a_frame_that_declares_another_size_is_refused_before_decoding():
    data = bytearray(compressed(JPEG2000Lossless))
    soc = data.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">LL", data, soc + 8, 4096, 4096)  # SIZ: Xsiz, Ysiz
    error = reason_of(bytes(data))
    assert error.reason == "decode_failed" and "4096 x 4096" in error.detail


def test_a_stream_cut_before_its_end_marker_is_refused():
    ds = make_dataset(np.random.default_rng(0).integers(0, 4095, (64, 48)).astype(np.uint16))
    ds.compress(JPEG2000Lossless)
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) * 2 // 3]])
    error = reason_of(to_bytes(ds))
    assert error.reason == "decode_failed" and "end marker" in error.detail


def test_compression_ratio_limit():
    data = compressed(JPEGLosslessSV1)
    read_dicom_image(data)
    error = reason_of(data, DicomLimits(max_compression_ratio=1))
    assert error.reason == "decode_failed" and "decompression bomb" in error.detail


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_pixels"):
        DicomLimits(max_pixels=0)
