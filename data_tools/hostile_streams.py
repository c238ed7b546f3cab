"""Hostile kinds that attack the decoders and the parser (see data_tools.hostile): corrupt and
damaged compressed streams, decompression bombs, and huge, deep or broken structures."""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from data_tools.dicom_write import derive_uid
from data_tools.hostile_bytes import (
    PRIVATE_GROUP,
    UNDEFINED,
    Bases,
    deflate_with_zeros,
    element,
    encapsulated,
    file_meta,
    item,
    patch,
    rle_frame,
    sequence,
    split_meta,
    to_bytes,
)
from data_tools.hostile_kinds import (
    LOADED,
    MIB,
    Made,
    frame_of,
    pick,
    pixel_offset,
    with_frame,
)


def _overwrite(rng, frame: bytes, start: int, length: int) -> bytes:
    return frame[:start] + rng.bytes(length) + frame[start + length :]


def _cut(rng, frame: bytes, keep_from: int) -> bytes:
    """The stream cut somewhere after its first `keep_from` bytes (no end marker left)."""
    return frame[: int(rng.integers(keep_from, len(frame) - 2))]


def corrupt_jpeg(rng, bases: Bases, small: bool) -> Made:
    data = bases.file(JPEGLosslessSV1)
    frame = frame_of(data)
    variant = int(rng.integers(3))
    if variant == 0:
        frame = _cut(rng, frame, frame.find(b"\xff\xda") + 16)
    elif variant == 1:  # the Huffman table (DHT)
        frame = _overwrite(rng, frame, frame.find(b"\xff\xc4") + 4, 40)
    else:  # the scan header (SOS)
        frame = _overwrite(rng, frame, frame.find(b"\xff\xda") + 4, 8)
    return Made(with_frame(data, frame), ("decode_failed",))


def corrupt_j2k(rng, bases: Bases, small: bool) -> Made:
    data = bases.file(JPEG2000Lossless)
    frame = frame_of(data)
    cod, sot = frame.find(b"\xff\x52"), frame.find(b"\xff\x90")
    variant = int(rng.integers(3))
    if variant == 0:
        frame = _cut(rng, frame, frame.find(b"\xff\x93") + 2)
    elif variant == 1:  # coding style and quantisation segments (COD, QCD)
        frame = _overwrite(rng, frame, cod + 2, sot - cod - 2)
    else:  # the tile-part header (SOT)
        frame = _overwrite(rng, frame, sot + 2, 10)
    return Made(with_frame(data, frame), ("decode_failed",))


def damaged_stream(rng, bases: Bases, small: bool) -> Made:
    """Random bytes inside the entropy-coded data of a JPEG or JPEG 2000 frame: decoders turn
    them into wrong pixels without an error, and DICOM has no checksum to notice."""
    syntax = pick(rng, (JPEGLosslessSV1, JPEG2000Lossless))
    data = bases.file(syntax)
    frame = frame_of(data)
    if syntax == JPEG2000Lossless:
        start = frame.find(b"\xff\x93") + 2  # after SOD
    else:
        start = frame.find(b"\xff\xda") + 16  # after the SOS header
    frame = _overwrite(rng, frame, int(rng.integers(start, len(frame) - 40)), 32)
    ds = pydicom.dcmread(io.BytesIO(with_frame(data, frame)))
    uid = derive_uid("hostile-damaged", str(int(rng.integers(2**62))))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    return Made(to_bytes(ds), ("decode_failed", LOADED), sop_instance_uid=uid)


def corrupt_rle(rng, bases: Bases, small: bool) -> Made:
    data = bases.file(RLELossless)
    frame = frame_of(data)
    variant = int(rng.integers(4))
    if variant == 0:  # segment count out of range or not samples x bytes
        frame = patch(frame, 0, "<L", pick(rng, (0, 1, 3, 16, 255)))
    elif variant == 1:  # offsets not increasing
        frame = patch(frame, 8, "<L", 65)
    elif variant == 2:  # a segment cut short: it decodes to fewer than Rows x Columns bytes
        frame = frame[: int(rng.integers(65, len(frame) - 8))]
    else:
        frame = frame[:64] + rng.bytes(len(frame) - 64)
    return Made(with_frame(data, frame), ("decode_failed",))


def bomb_jpeg(rng, bases: Bases, small: bool) -> Made:
    data = bases.file(JPEGLosslessSV1)
    frame = frame_of(data)
    sof = frame.find(b"\xff\xc3")
    variant = int(rng.integers(3))
    size = (65535, 65535) if variant == 0 else (4096, 4096) if variant == 1 else (5000, 5000)
    frame = patch(frame, sof + 5, ">HH", *size)
    ds = pydicom.dcmread(io.BytesIO(with_frame(data, frame)))
    if variant == 2:  # header and frame agree on a big image the small stream cannot fill
        ds.Rows, ds.Columns = size
    expected = ("too_large",) if variant == 0 else ("decode_failed",)
    return Made(to_bytes(ds), expected)


def bomb_j2k(rng, bases: Bases, small: bool) -> Made:
    data = bases.file(JPEG2000Lossless)
    frame = frame_of(data)
    soc = frame.find(b"\xff\x4f\xff\x51")
    variant = int(rng.integers(4))
    ds = pydicom.dcmread(io.BytesIO(data))
    if variant == 3:  # tiles of 1 x 1 or 2 x 2 pixels: one decoder structure per tile
        tile = int(rng.integers(1, 3))
        frame = patch(frame, soc + 8, ">LL", 512, 512)
        frame = patch(frame, soc + 24, ">LL", tile, tile)
        ds.Rows = ds.Columns = 512
        ds.PixelData = encapsulated(frame)
        return Made(to_bytes(ds), ("too_large",))
    side = (60000, 4096, 6000)[variant]
    frame = patch(frame, soc + 8, ">LL", side, side)  # Xsiz, Ysiz
    frame = patch(frame, soc + 24, ">LL", side, side)  # one tile
    ds.PixelData = encapsulated(frame)
    if variant == 2:
        ds.Rows = ds.Columns = side
    return Made(to_bytes(ds), ("too_large",) if variant == 0 else ("decode_failed",))


def bomb_rle(rng, bases: Bases, small: bool) -> Made:
    ds = bases.dataset(ExplicitVRLittleEndian, bits=8)
    pairs = int(rng.integers(40, 1_000 if small else 500_000))
    segment = b"\x81\x00" * pairs  # each pair: one byte repeated 128 times (PS3.5 G.3.1)
    if rng.random() < 0.3:  # a literal run past the end of a full segment
        segment = b"\x81\x00" * 32 + b"\x7f" + rng.bytes(128)
    ds.PixelData = encapsulated(rle_frame([segment]))
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = RLELossless
    return Made(to_bytes(ds), ("decode_failed",))


def bomb_deflate(rng, bases: Bases, small: bool) -> Made:
    data = bases.file()
    meta, body = split_meta(data)
    uid = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    if rng.random() < 0.15:  # not a deflate stream at all
        meta = file_meta(uid, DeflatedExplicitVRLittleEndian)
        return Made(meta + rng.bytes(2000), ("not_dicom",))
    zeros = int(rng.integers(129 * MIB, (131 if small else 1024) * MIB))
    return Made(
        file_meta(uid, DeflatedExplicitVRLittleEndian) + deflate_with_zeros(body, zeros),
        ("too_large",),
    )


def deep_sequence(rng, bases: Bases, small: bool) -> Made:
    depth = int(rng.integers(17, 40 if small else 20_000))
    if rng.random() < 0.5 or depth > 400:  # undefined lengths: opened n times, closed n times
        opening = element(0x0040, 0xA730, "SQ", b"", UNDEFINED)
        opening += struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED)
        closing = struct.pack("<HHLHHL", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
        nested = opening * (depth - 1) + closing * (depth - 1)
        tail = sequence(PRIVATE_GROUP, 0x1010, item(nested, undefined=True))
    else:
        inner = b""
        for _ in range(depth - 1):
            inner = sequence(0x0040, 0xA730, item(inner), undefined=False)
        tail = sequence(PRIVATE_GROUP, 0x1010, item(inner), undefined=False)
    return Made(bases.file() + tail, ("too_large",))


def many_items(rng, bases: Bases, small: bool) -> Made:
    count = int(rng.integers(20_001, 25_000 if small else 1_000_000))
    items = item() * count
    tail = sequence(PRIVATE_GROUP, 0x1010, items, undefined=bool(rng.random() < 0.5))
    return Made(bases.file() + tail, ("too_large",))


def many_elements(rng, bases: Bases, small: bool) -> Made:
    count = int(rng.integers(20_001, 25_000 if small else 1_000_000))
    tail = b"".join(
        element(PRIVATE_GROUP + 2 * (i // 0xF000), 0x1000 + i % 0xF000, "LO", b"")
        for i in range(count)
    )
    return Made(bases.file() + tail, ("too_large",))


def huge_element(rng, bases: Bases, small: bool) -> Made:
    data = bases.file()
    variant = int(rng.integers(3))
    if variant == 0:  # an element that declares ~4 GB and holds 100 bytes
        return Made(
            data + element(PRIVATE_GROUP, 0x1010, "OB", rng.bytes(100), 0xFFFFFFF0), ("truncated",)
        )
    if variant == 1:  # the Pixel Data length field says 2-4 GB
        at = pixel_offset(data) - 4
        return Made(patch(data, at, "<L", int(rng.integers(2**31, 2**32 - 2))), ("truncated",))
    size = int(rng.integers(129 * MIB, (130 if small else 4096) * MIB))
    return Made(data, ("too_large",), size=size)  # a sparse file bigger than the limit


def broken_sequence(rng, bases: Bases, small: bool) -> Made:
    stray = element(0x0008, 0x0060, "CS", b"DX")  # a data element where an item must be
    undefined = bool(rng.random() < 0.5)
    if undefined and rng.random() < 0.5:  # never closed: the file ends inside it
        tail = element(PRIVATE_GROUP, 0x1010, "SQ", b"", UNDEFINED) + item(b"") * 3
        return Made(bases.file() + tail, ("truncated",))
    return Made(
        bases.file() + sequence(PRIVATE_GROUP, 0x1010, stray, undefined=undefined), ("not_dicom",)
    )
