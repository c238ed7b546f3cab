"""Real DICOM files for the loader tests, written with pydicom (imagecodecs for JPEG Lossless)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from data_tools.labels import LABEL_COLUMNS

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.10.999."


def make_uid(name: str) -> str:
    """A deterministic UID for a test object."""
    return UID_ROOT + str(abs(hash_text(name)) % 10**20)


def hash_text(text: str) -> int:
    """A stable (non-salted) integer hash of a string."""
    value = 0
    for ch in text.encode():
        value = (value * 131 + ch) % (2**61 - 1)
    return value


def gradient_image(rows: int = 48, cols: int = 40, *, bits: int = 12) -> np.ndarray:
    """Stored values: a diagonal ramp plus a bright square, spanning 0..2**bits-1."""
    y, x = np.mgrid[0:rows, 0:cols]
    ramp = (x / (cols - 1) + y / (rows - 1)) / 2
    ramp[rows // 4 : rows // 2, cols // 4 : cols // 2] = 1.0
    return np.round(ramp * (2**bits - 1)).astype(np.uint16)


def make_dataset(
    pixels: np.ndarray,
    *,
    name: str = "img",
    modality: str | None = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
) -> Dataset:
    """An uncompressed single-frame dataset; `pixels` is [R, C] or [F, R, C] or [R, C, 3]."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT_STORAGE if modality == "CT" else DX_STORAGE
    ds.SOPInstanceUID = make_uid(name)
    ds.StudyInstanceUID = make_uid(name + "/study")
    ds.SeriesInstanceUID = make_uid(name + "/series")
    ds.PatientID = f"P-{name}"
    if modality is not None:
        ds.Modality = modality
    ds.ViewPosition = "PA"
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    return ds


def encode_jpeg_lossless(ds: Dataset) -> None:
    """Re-encode Pixel Data as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70) with imagecodecs."""
    import imagecodecs

    frame = imagecodecs.jpeg8_encode(
        ds.pixel_array, lossless=True, bitspersample=int(ds.BitsStored), predictor=1
    )
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def compress(ds: Dataset, syntax: UID) -> None:
    """Re-encode Pixel Data in place to a lossless transfer syntax."""
    if syntax == JPEGLosslessSV1:
        encode_jpeg_lossless(ds)
    elif syntax in (JPEG2000Lossless, RLELossless):
        ds.compress(syntax, generate_instance_uid=False)
    else:
        raise ValueError(f"no test encoder for {syntax}")


def write(ds: Dataset, path: Path, *, syntax: UID | None = None) -> Path:
    """Save `ds` as a Part 10 file, compressed to `syntax` when given."""
    if syntax is not None:
        compress(ds, syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_labels(site: Path, rows: Sequence[dict[str, str]]) -> None:
    """labels.csv with the given records; missing finding columns default to 0."""
    site.mkdir(parents=True, exist_ok=True)
    with (site / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "0") for c in LABEL_COLUMNS})


def label_row(ds_or_uid: Dataset | str, path: str, *, split: str = "train", **extra: str) -> dict:
    """A labels.csv record for a file; `extra` sets finding columns (default 0)."""
    uid = ds_or_uid if isinstance(ds_or_uid, str) else str(ds_or_uid.SOPInstanceUID)
    record = {"path": path, "sop_instance_uid": uid, "patient_id": f"P-{path}", "split": split}
    record.update(extra)
    return record


def write_site(site: Path, n: int, *, splits: Sequence[str] = ("train", "val", "test")) -> None:
    """A clean site of `n` DX images (alternating splits), first finding = i % 2."""
    rows = []
    for i in range(n):
        ds = make_dataset(gradient_image() // (1 + i % 3), name=f"{site.name}-{i}")
        rel = f"dicom/{i:03d}.dcm"
        write(ds, site / rel)
        rows.append(label_row(ds, rel, split=splits[i % len(splits)], Atelectasis=str(i % 2)))
    write_labels(site, rows)
