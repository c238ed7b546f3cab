"""The kinds of hostile DICOM file (see data_tools.hostile): each maker draws one file from `rng`
and says which reason(s) the loader may give for it."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from data_tools.hostile_bytes import (
    UNDEFINED,
    Bases,
    element,
    encapsulated,
    file_meta,
    split_meta,
    to_bytes,
)

MIB = 2**20
LOADED = "loaded"
COMPRESSED = (JPEGLosslessSV1, JPEG2000Lossless, RLELossless)
ANY_SYNTAX = (ExplicitVRLittleEndian, *COMPRESSED)
ANY_REASON = (
    "not_dicom",
    "truncated",
    "too_large",
    "no_pixel_data",
    "unsupported_modality",
    "unsupported_transfer_syntax",
    "not_2d",
    "decode_failed",
)


@dataclass(frozen=True)
class Made:
    """A drawn file: content, acceptable reasons, and a sparse size when it must be bigger."""

    data: bytes
    expected: tuple[str, ...]  # reasons; LOADED: the file decodes (its damage is undetectable)
    size: int = 0
    sop_instance_uid: str = ""  # the file's own, when it may load (labels.csv must match it)


def pick(rng: np.random.Generator, options: tuple | list):
    return options[int(rng.integers(len(options)))]


def pixel_offset(data: bytes) -> int:
    """Where the top-level Pixel Data value starts (pydicom's value_tell)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return int(ds.get_item(0x7FE00010).value_tell)


def frame_of(data: bytes) -> bytes:
    """The single compressed frame of an encapsulated file."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def with_frame(data: bytes, frame: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = encapsulated(frame)
    return to_bytes(ds)


def with_syntax(data: bytes, syntax: str) -> bytes:
    """The same data set under another (0002,0010) Transfer Syntax UID."""
    _, body = split_meta(data)
    uid = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    return file_meta(uid, syntax) + body


def _replace_value(data: bytes, tag: tuple[int, int], vr: bytes, old: bytes, new: bytes) -> bytes:
    """Swap the value of one explicit VR element for bytes of the same length."""
    encoded = struct.pack("<HH2sH", *tag, vr, len(old))
    at = data.index(encoded + old)
    return data[: at + len(encoded)] + new + data[at + len(encoded) + len(old) :]


def recompress_rle(path: Path) -> None:
    """Re-encode a written file as RLE Lossless (pydicom's encoder), in place."""
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def truncated(rng, bases: Bases, small: bool) -> Made:
    data = bases.file(pick(rng, ANY_SYNTAX))
    start = pixel_offset(data)
    if rng.random() < 0.75:  # inside the pixel data
        return Made(data[: int(rng.integers(start + 1, len(data)))], ("truncated",))
    cut = int(rng.integers(400, start - 12))  # inside the header, after the file meta
    return Made(data[:cut], ("truncated", "no_pixel_data", "unsupported_modality"))


def garbage(rng, bases: Bases, small: bool) -> Made:
    variant = int(rng.integers(6))
    noise = rng.bytes(int(rng.integers(1, 4096)))
    if variant == 0:
        return Made(b"", ("not_dicom",))
    if variant == 1:
        return Made(noise, ("not_dicom",))
    if variant == 2:
        text = b"patient 123, chest PA, see report\n" * int(rng.integers(1, 200))
        return Made(text, ("not_dicom",))
    if variant == 3:
        return Made(b"\x89PNG\r\n\x1a\n" + noise, ("not_dicom",))
    if variant == 4:
        return Made(b"\0" * 128 + b"DICM", ("truncated",))
    return Made(b"\0" * 128 + b"DICM" + noise, ("not_dicom", "truncated", "too_large"))


def no_pixel_data(rng, bases: Bases, small: bool) -> Made:
    ds = bases.dataset()
    del ds.PixelData
    if rng.random() < 0.5:  # float pixel data is not a radiograph format
        ds.FloatPixelData = np.zeros(64 * 64, np.float32).tobytes()
    return Made(to_bytes(ds), ("no_pixel_data",))


def other_modality(rng, bases: Bases, small: bool) -> Made:
    ds = bases.dataset(pick(rng, ANY_SYNTAX))
    modality = pick(rng, ("CT", "MR", "US", "NM", "PT", "SEG", "MG", "XA", ""))
    if modality:
        ds.Modality = modality
    else:
        del ds.Modality
    return Made(to_bytes(ds), ("unsupported_modality",))


def multi_frame(rng, bases: Bases, small: bool) -> Made:
    ds = bases.dataset()
    frames = int(rng.integers(2, 9))
    if rng.random() < 0.7:
        stack = np.stack([ds.pixel_array] * frames)
        ds.set_pixel_data(stack, "MONOCHROME2", 12, generate_instance_uid=False)
    else:  # only the header says so
        ds.NumberOfFrames = frames
    return Made(to_bytes(ds), ("not_2d",))


def colour(rng, bases: Bases, small: bool) -> Made:
    ds = bases.dataset()
    variant = int(rng.integers(3))
    if variant == 0:
        grey = (ds.pixel_array >> 4).astype(np.uint8)
        ds.set_pixel_data(np.stack([grey] * 3, axis=-1), "RGB", 8, generate_instance_uid=False)
    else:
        ds.PhotometricInterpretation = ("PALETTE COLOR", "YBR_FULL")[variant - 1]
    return Made(to_bytes(ds), ("not_2d",))


def unknown_syntax(rng, bases: Bases, small: bool) -> Made:
    uid = pick(
        rng,
        (
            "1.2.840.10008.1.2.4.100",
            "1.2.840.10008.1.2.4.110",
            "1.2.840.10008.1.2.8.1",
            f"1.2.999.{int(rng.integers(1, 10**9))}",
        ),
    )
    return Made(with_syntax(bases.file(), uid), ("unsupported_transfer_syntax",))


def wrong_syntax(rng, bases: Bases, small: bool) -> Made:
    variant = int(rng.integers(6))
    if variant == 0:  # native pixel data under a compressed syntax
        return Made(with_syntax(bases.file(), pick(rng, COMPRESSED)), ("decode_failed",))
    if variant == 5:  # little endian bytes read as big endian: anything but a crash
        return Made(with_syntax(bases.file(), ExplicitVRBigEndian), ANY_REASON)
    pairs = (
        (JPEG2000Lossless, JPEGLosslessSV1),
        (JPEGLosslessSV1, JPEG2000Lossless),
        (RLELossless, JPEGLosslessSV1),
        (JPEG2000Lossless, ExplicitVRLittleEndian),
    )
    real, claimed = pairs[variant - 1]
    return Made(with_syntax(bases.file(real), claimed), ("decode_failed",))


def huge_header(rng, bases: Bases, small: bool) -> Made:
    ds = bases.dataset()
    variant = int(rng.integers(4))
    if variant == 0:
        ds.Rows, ds.Columns = pick(rng, ((65535, 65535), (65535, 64), (64, 9000)))
    elif variant == 1:
        ds.NumberOfFrames = int(rng.integers(10_000, 10**9))
    elif variant == 2:
        ds.Rows = ds.Columns = int(rng.integers(6001, 8193))
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
        ds.Rows = ds.Columns = int(rng.integers(5000, 6000))
    return Made(to_bytes(ds), ("too_large",))


def bad_meta(rng, bases: Bases, small: bool) -> Made:
    data = bases.file()
    meta, body = split_meta(data)
    variant = int(rng.integers(3))
    if variant == 0:  # no (0002,0010): only the group length and the SOP class
        head = b"\0" * 128 + b"DICM" + element(0x0002, 0x0002, "UI", b"1.2.840.10008.5.1.4.1.1.1\0")
        return Made(head + body, ("truncated",))
    if variant == 1:  # a file meta element of undefined length
        return Made(meta + element(0x0002, 0x0100, "OB", b"", UNDEFINED) + body, ("not_dicom",))
    cut = element(0x0002, 0x0102, "OB", b"", 10**6)  # declares 1 MB, the file ends first
    return Made(meta + cut + body[:200], ("truncated",))


def bad_values(rng, bases: Bases, small: bool) -> Made:
    ds = bases.dataset()
    variant = int(rng.integers(6))
    if variant == 0:
        ds.Rows = 0
    elif variant == 1:  # pydicom refuses to write these values: patch the bytes
        ds.RescaleSlope, ds.RescaleIntercept = "9.99", "0"
        del ds.WindowCenter, ds.WindowWidth
        bad = pick(rng, (b"nan ", b"inf ", b"-inf"))
        return Made(
            _replace_value(to_bytes(ds), (0x0028, 0x1053), b"DS", b"9.99", bad), ("decode_failed",)
        )
    elif variant == 2:
        ds.NumberOfFrames = "99"
        return Made(
            _replace_value(to_bytes(ds), (0x0028, 0x0008), b"IS", b"99", b"1A"), ("decode_failed",)
        )
    elif variant == 3:  # pydicom refuses the depth, or finds too few bytes for it
        ds.BitsAllocated = pick(rng, (0, 7, 64))
        return Made(to_bytes(ds), ("decode_failed", "truncated"))
    elif variant == 4:
        ds["Rows"].VR, ds["Rows"].value = "OB", b"\x01\x02\x03"
    else:
        ds.PhotometricInterpretation = ""
        return Made(to_bytes(ds), ("not_2d",))
    return Made(to_bytes(ds), ("decode_failed",))
