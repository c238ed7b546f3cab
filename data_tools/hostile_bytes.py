"""Byte-level builders for hostile DICOM files: valid phantom radiographs to start from, and raw
data elements, sequences and patches (explicit VR little endian, PS3.5 sec. 7)."""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from data_tools.dicom_write import AcquisitionProfile, StudyMeta, derive_uid, write_dicom
from data_tools.labels import NUM_FINDINGS
from data_tools.phantom import PhantomConfig, render_phantom, sample_anatomy

UNDEFINED = 0xFFFFFFFF
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
PRIVATE_GROUP = 0x7FE1  # odd (private) group after Pixel Data: appended elements stay in order
_ZERO_CHUNK = bytes(1 << 24)


def element(group: int, elem: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian data element; `length` overrides the declared length."""
    declared = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack("<HH2sHL", group, elem, vr.encode(), 0, declared) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), declared) + value


def item(content: bytes = b"", *, undefined: bool = False) -> bytes:
    """A sequence item (FFFE,E000) of defined length, or undefined length with its delimiter."""
    if undefined:
        return struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED) + content + _tag_end(0xE00D)
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(content)) + content


def sequence(group: int, elem: int, items: bytes, *, undefined: bool = True) -> bytes:
    """An SQ element holding `items`, of undefined length (closed by (FFFE,E0DD)) or defined."""
    if undefined:
        return element(group, elem, "SQ", items + _tag_end(0xE0DD), length=UNDEFINED)
    return element(group, elem, "SQ", items)


def _tag_end(elem: int) -> bytes:
    return struct.pack("<HHL", 0xFFFE, elem, 0)


def to_bytes(ds: Dataset) -> bytes:
    """A dataset as a Part 10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def split_meta(data: bytes) -> tuple[bytes, bytes]:
    """(preamble + file meta, data set) of a Part 10 file written with a group length."""
    (group_length,) = struct.unpack_from("<L", data, 132 + 8)
    end = 132 + 12 + group_length
    return data[:end], data[end:]


def file_meta(sop_instance_uid: str, syntax: str) -> bytes:
    """Preamble, 'DICM' and a file meta group for `syntax` (PS3.10 sec. 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = derive_uid("hostile")
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def deflate_with_zeros(body: bytes, zeros: int) -> bytes:
    """Raw deflate (PS3.5 A.5) of `body` followed by a private OB of `zeros` zero bytes, made in
    chunks so the inflated size never sits in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    header = element(PRIVATE_GROUP, 0x1000, "OB", b"", zeros)
    parts = [packer.compress(body), packer.compress(header)]
    left = zeros
    while left > 0:
        parts.append(packer.compress(_ZERO_CHUNK[: min(left, len(_ZERO_CHUNK))]))
        left -= min(left, len(_ZERO_CHUNK))
    parts.append(packer.flush())
    return b"".join(parts)


def patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """`data` with struct `fmt` packed at `offset` (same length)."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


class Bases:
    """Valid radiographs written by the phantom writer (data_tools.dicom_write), a few per kind
    of file, reused and mutated by the hostile kinds."""

    VARIANTS = 3

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._files: dict[tuple, list[bytes]] = {}
        self._folder = tempfile.TemporaryDirectory(prefix="ecl-hostile-")

    def close(self) -> None:
        self._folder.cleanup()

    def file(
        self,
        syntax: str = ExplicitVRLittleEndian,
        size: int = 64,
        bits: int = 12,
        photometric: str = "MONOCHROME2",
    ) -> bytes:
        """A valid single-frame DX file (phantom image) in `syntax`; RLE via pydicom."""
        key = (syntax, size, bits, photometric)
        made = self._files.setdefault(key, [])
        if len(made) < self.VARIANTS:
            made.append(self._write(*key))
        return made[int(self.rng.integers(len(made)))]

    def dataset(self, *args: object, **kwargs: object) -> Dataset:
        """file(...) parsed with pydicom, ready to be changed and written again."""
        return pydicom.dcmread(io.BytesIO(self.file(*args, **kwargs)))  # type: ignore[arg-type]

    def _write(self, syntax: str, size: int, bits: int, photometric: str) -> bytes:
        encoded = ExplicitVRLittleEndian if syntax == RLELossless else syntax
        profile = AcquisitionProfile(
            "HOSTILE", "DX", photometric, bits, matrix=size, transfer_syntax=encoded
        )
        n = sum(len(v) for v in self._files.values())
        uid = derive_uid("hostile-base", str(n))
        meta = StudyMeta(
            patient_id=f"HOSTILE-{n}",
            sop_instance_uid=uid,
            study_instance_uid=derive_uid("hostile-study", str(n)),
            series_instance_uid=derive_uid("hostile-series", str(n)),
        )
        config = PhantomConfig(size=size)
        image = render_phantom(
            np.zeros(NUM_FINDINGS, dtype=int), sample_anatomy(self.rng, config), self.rng, config
        )
        path = Path(self._folder.name) / f"{n}.dcm"
        write_dicom(path, image, profile, meta)
        if syntax != RLELossless:
            return path.read_bytes()
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless, generate_instance_uid=False)
        return to_bytes(ds)


def rle_frame(segments: list[bytes]) -> bytes:
    """An RLE Lossless frame: the 64-byte header (PS3.5 G.5) then the segments."""
    offsets, position = [], 64
    for segment in segments:
        offsets.append(position)
        position += len(segment)
    header = struct.pack("<16L", len(segments), *offsets, *([0] * (15 - len(segments))))
    return header + b"".join(segments)


def encapsulated(frame: bytes) -> bytes:
    """A single frame as encapsulated Pixel Data fragments (empty Basic Offset Table first)."""
    return encapsulate([frame])
