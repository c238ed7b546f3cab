"""NIH PNG -> DICOM export: one file per image, parallel, resumable, never a partial .dcm."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from tqdm import tqdm

from data_tools.dicom_write import (
    AcquisitionProfile,
    StudyMeta,
    build_dataset,
    derive_uid,
    stored_values,
)
from data_tools.labels import DICOM_DIRNAME
from data_tools.nih_release import NihImage

logger = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# Fallback field of view when the table has no original geometry: the NIH median is about
# 2500 px at 0.143 mm.
NOMINAL_FIELD_MM = 360.0
PARTIAL_SUFFIX = ".partial"
# Attributes that dicom_write fills for synthetic phantoms, corrected for real NIH images.
_NIH_ATTRIBUTES = {
    "InstitutionName": "NIH Clinical Center (ChestX-ray14 release)",
    "DeidentificationMethod": "NIH ChestX-ray14 public release; PatientID is a pseudonym",
    "ImageType": ["DERIVED", "SECONDARY"],  # resized from the released PNG
    "StudyDate": "",  # the release has no dates (type 2: present, empty)
    "SeriesDate": "",
    "ContentDate": "",
    "StudyTime": "",
    "SeriesTime": "",
    "ContentTime": "",
}


@dataclass(frozen=True)
class ExportJob:
    """One PNG to convert; `dcm_path` is absolute."""

    png_path: Path
    dcm_path: Path
    meta: StudyMeta


@dataclass(frozen=True)
class ExportResult:
    """What happened to one job: 'written', 'skipped' (complete file there) or 'failed'."""

    dcm_path: Path
    status: str
    reason: str = ""


def nih_profile(size: int) -> AcquisitionProfile:
    """DX, MONOCHROME2, 8 bits stored, Explicit VR Little Endian, `size` x `size` pixels."""
    return AcquisitionProfile(
        name="nih-chestxray14-png",
        modality="DX",
        photometric="MONOCHROME2",
        bits_stored=8,
        pixel_spacing_mm=round(NOMINAL_FIELD_MM / size, 6),
        matrix=size,
        transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
        manufacturer="Unknown (converted from NIH ChestX-ray14 PNG)",
    )


def pseudonym(patient_id: str, key: str) -> str:
    """Keyed hash of the NIH patient id: a stable pseudonym, not anonymisation (the key is
    the seed, and the NIH ids are public, so anyone can recompute the mapping)."""
    digest = hmac.new(key.encode(), patient_id.encode(), hashlib.sha256).hexdigest()
    return f"NIH{digest[:12].upper()}"


def scaled_spacing(image: NihImage, size: int) -> float | None:
    """(0028,0030) Pixel Spacing after resizing the original scan to `size` px.

    The table gives the original width x height and spacing; NIH resized every scan to a
    square PNG, so the field of view is kept and the mean of both axes is used.
    """
    if image.original_size is None or image.original_spacing_mm is None:
        return None
    (width, height), (sx, sy) = image.original_size, image.original_spacing_mm
    return round((sx * width + sy * height) / 2 / size, 6)


def study_meta(image: NihImage, size: int, key: str) -> StudyMeta:
    """Per-image DICOM identity: UIDs derived from the image index (stable across runs)."""
    return StudyMeta(
        patient_id=pseudonym(image.patient_id, key),
        sop_instance_uid=derive_uid("nih-chestxray14", "sop", image.image_index),
        study_instance_uid=derive_uid("nih-chestxray14", "study", image.image_index),
        series_instance_uid=derive_uid("nih-chestxray14", "series", image.image_index),
        patient_age=image.age_years,
        patient_sex=image.sex,
        view_position=image.view_position or "PA",
        pixel_spacing_mm=scaled_spacing(image, size),
    )


def dicom_relpath(meta: StudyMeta, image_index: str) -> str:
    """Path inside the site folder: dicom/<pseudonym>/<NIH image stem>.dcm."""
    return f"{DICOM_DIRNAME}/{meta.patient_id}/{Path(image_index).stem}.dcm"


def load_png(path: Path, size: int) -> np.ndarray:
    """PNG (grey, RGB, RGBA, 8 or 16 bit) -> float32 [size, size] in [0, 1], 1 = bright."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L"):
            pixels = np.asarray(img, dtype=np.float32) / 65535.0
        elif img.mode in ("I", "F"):
            pixels = np.asarray(img, dtype=np.float32)
            pixels = pixels / max(float(pixels.max()), 1.0)
        else:
            pixels = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    resized = Image.fromarray(pixels, mode="F").resize((size, size), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def is_complete_dicom(path: Path, size: int) -> bool:
    """True if `path` is a readable DICOM of `size` x `size` with all its pixel bytes."""
    try:
        if path.stat().st_size == 0:
            return False
        ds = pydicom.dcmread(path)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
        return int(ds.Rows) == size == int(ds.Columns) and len(ds.PixelData) >= expected
    except Exception as exc:  # any failure to read means "write it again"
        logger.debug("%s incomplete (%s); rewriting", path, exc)
        return False


def write_nih_dicom(
    path: Path, image: np.ndarray, profile: AcquisitionProfile, meta: StudyMeta
) -> None:
    """dicom_write's dataset for `image`, with the phantom-only attributes (synthetic
    institution, de-identification note, dates) replaced by what holds for NIH images."""
    ds = build_dataset(stored_values(image, profile), profile, meta)
    for keyword, value in _NIH_ATTRIBUTES.items():
        setattr(ds, keyword, value)
    ds.PatientName = meta.patient_id
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def export_one(job: ExportJob, profile: AcquisitionProfile) -> ExportResult:
    """Convert one PNG unless a complete DICOM is already there (temp file + rename)."""
    if job.dcm_path.exists() and is_complete_dicom(job.dcm_path, profile.matrix):
        return ExportResult(job.dcm_path, "skipped")
    try:
        pixels = load_png(job.png_path, profile.matrix)
    except (OSError, ValueError) as exc:
        return ExportResult(job.dcm_path, "failed", f"cannot read {job.png_path.name}: {exc}")
    job.dcm_path.parent.mkdir(parents=True, exist_ok=True)
    partial = job.dcm_path.with_name(job.dcm_path.name + PARTIAL_SUFFIX)
    write_nih_dicom(partial, pixels, profile, job.meta)
    os.replace(partial, job.dcm_path)
    return ExportResult(job.dcm_path, "written")


def _export_chunk(jobs: Sequence[ExportJob], profile: AcquisitionProfile) -> list[ExportResult]:
    return [export_one(job, profile) for job in jobs]


def export_images(
    jobs: Sequence[ExportJob],
    profile: AcquisitionProfile,
    *,
    workers: int = 1,
    progress: bool = True,
    chunk_size: int = 64,
) -> list[ExportResult]:
    """Run every job (in `workers` processes when > 1) with a tqdm bar; results in job order."""
    chunks = [jobs[k : k + chunk_size] for k in range(0, len(jobs), chunk_size)]
    results: list[ExportResult] = []
    with tqdm(total=len(jobs), unit="img", desc="DICOM export", disable=not progress) as bar:
        if workers <= 1:
            for chunk in chunks:
                results += _export_chunk(chunk, profile)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for done in pool.map(_export_chunk, chunks, [profile] * len(chunks)):
                    results += done
                    bar.update(len(done))
    return results


def remove_stale_files(dicom_root: Path, keep: set[Path]) -> int:
    """Delete .dcm / .partial files under a site's dicom/ that the plan no longer holds
    (left by a killed run or an earlier run on fewer archives); returns how many."""
    removed = 0
    if not dicom_root.is_dir():
        return 0
    for path in sorted(dicom_root.rglob("*")):
        stale = path.suffix in (".dcm", PARTIAL_SUFFIX) and path not in keep
        if path.is_file() and stale:
            path.unlink()
            removed += 1
    return removed
