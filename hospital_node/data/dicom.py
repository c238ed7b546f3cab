"""Decode one chest radiograph DICOM into a display-convention float image in [0, 1]."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.transforms import Resize
from monai.utils import convert_to_numpy
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import UID

from hospital_node.data.dicom_checks import check_encoded_frame, check_image_size, header_int
from hospital_node.data.dicom_limits import (
    DEFAULT_LIMITS,
    REASONS,
    DicomLimits,
    DicomReadError,
    too_large,
)
from hospital_node.data.dicom_scan import Layout, scan_part10

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LIMITS",
    "REASONS",
    "DicomLimits",
    "DicomReadError",
    "dicom_summary",
    "read_dataset",
    "read_dicom",
    "read_dicom_image",
    "read_part10",
    "resize_image",
]

# Projection radiography only: Computed Radiography and Digital Radiography.
ACCEPTED_MODALITIES = ("CR", "DX")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Bump when any step below changes its output or which files are accepted: it is part of the
# on-disk cache key. 2: size limits and frame-header checks before decoding (dicom_limits.py).
PIPELINE_VERSION = 2
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _read_bytes(source: Path | bytes, limits: DicomLimits) -> bytes:
    """The file's bytes, refused on its size before it is read (a path) or kept (an upload)."""
    in_memory = isinstance(source, bytes | bytearray)
    size = len(source) if in_memory else Path(source).stat().st_size
    if size > limits.max_file_bytes:
        raise too_large("the file", size, limits.max_file_bytes, " bytes")
    if in_memory:
        return bytes(source)
    with Path(source).open("rb") as fh:
        data = fh.read(limits.max_file_bytes + 1)  # the file may have grown since stat
    if len(data) > limits.max_file_bytes:
        raise too_large("the file", len(data), limits.max_file_bytes, " bytes")
    return data


def read_part10(
    source: Path | bytes, limits: DicomLimits = DEFAULT_LIMITS
) -> tuple[Dataset, Layout]:
    """Parse a DICOM Part 10 file (path or in-memory bytes) within `limits`; reject cut-off files.

    The structure is checked first (dicom_scan.scan_part10: sizes, counts, nesting, without
    building anything), then pydicom parses it. pydicom stops quietly at end of file, so
    truncation is detected here too: missing (0002,0010) Transfer Syntax UID, no data elements
    at all, or a last element whose value is shorter than its declared length. OSError from
    reading a path (missing file, permissions) is left to the caller.
    """
    data = _read_bytes(source, limits)
    layout = scan_part10(data, limits)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise DicomReadError(
            "not_dicom",
            "no 128-byte preamble with the 'DICM' prefix, so not a DICOM Part 10 file; "
            "export the image from the archive as DICOM",
        ) from exc
    except EOFError as exc:
        raise DicomReadError("truncated", f"the file ends inside its header: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on garbage; report, never crash
        raise DicomReadError("not_dicom", f"the DICOM header cannot be parsed: {exc}") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise DicomReadError(
            "truncated",
            "file meta lacks (0002,0010) Transfer Syntax UID; the file was cut short or "
            "written incompletely, copy it again from the archive",
        )
    if len(ds) == 0:
        raise DicomReadError("truncated", "no data elements after the file meta; copy it again")
    last = ds.get_item(max(ds.keys()))
    value = getattr(last, "value", None)
    length = getattr(last, "length", None)
    if isinstance(value, bytes) and length not in (None, _UNDEFINED_LENGTH) and len(value) < length:
        raise DicomReadError(
            "truncated",
            f"element {last.tag} declares {length} bytes but the file holds {len(value)}; "
            "copy the file again from the archive",
        )
    return ds, layout


def read_dataset(source: Path | bytes, limits: DicomLimits = DEFAULT_LIMITS) -> Dataset:
    """read_part10 without the layout: the parsed dataset only."""
    return read_part10(source, limits)[0]


def check_modality(ds: Dataset) -> None:
    """Accept only (0008,0060) Modality CR or DX.

    A missing Modality (a Type 1 attribute) is rejected too: a CT or MR slice stripped
    of it must not slip into a chest radiograph training set.
    """
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in ACCEPTED_MODALITIES:
        shown = modality or "missing"
        raise DicomReadError(
            "unsupported_modality",
            f"(0008,0060) Modality is {shown}; only {'/'.join(ACCEPTED_MODALITIES)} "
            "chest radiographs can be used",
        )


def check_pixel_data(ds: Dataset) -> None:
    """Require (7FE0,0010) Pixel Data (float pixel data is not a radiograph format)."""
    if "PixelData" not in ds:
        raise DicomReadError(
            "no_pixel_data", "no (7FE0,0010) Pixel Data element; the file holds no image"
        )


def check_transfer_syntax(ds: Dataset) -> None:
    """Require a (0002,0010) Transfer Syntax UID that an installed pixel decoder handles."""
    uid = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise DicomReadError(
            "unsupported_transfer_syntax",
            f"(0002,0010) Transfer Syntax {uid} ({uid.name}) has no decoder; "
            "convert it to Explicit VR Little Endian, JPEG Lossless or JPEG 2000",
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(f"{k}: {v}" for k, v in decoder.missing_dependencies)
        raise DicomReadError(
            "unsupported_transfer_syntax",
            f"(0002,0010) Transfer Syntax {uid} ({uid.name}) needs a decoder plugin "
            f"that is not installed ({missing}); install the ecl-hospitals dependencies",
        )


def check_single_frame_monochrome(ds: Dataset) -> None:
    """Require one frame (0028,0008) of one sample (0028,0002), MONOCHROME1/2 (0028,0004).

    Sizes were checked before (dicom_checks.check_image_size)."""
    frames = header_int(ds, "NumberOfFrames", 1)
    samples = header_int(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if frames != 1:
        raise DicomReadError("not_2d", f"(0028,0008) Number of Frames is {frames}; need 1")
    if samples != 1 or photometric not in MONOCHROME:
        raise DicomReadError(
            "not_2d",
            f"(0028,0002) Samples per Pixel {samples}, (0028,0004) Photometric "
            f"Interpretation {photometric or 'missing'}; need one grayscale sample",
        )


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Stored values of (7FE0,0010) Pixel Data as a 2-D array (decompressing if needed)."""
    try:
        arr = ds.pixel_array
    except ValueError as exc:
        if "less than expected" in str(exc):
            raise DicomReadError("truncated", f"pixel data is cut short: {exc}") from exc
        raise DicomReadError("decode_failed", f"cannot decode pixel data: {exc}") from exc
    except Exception as exc:  # codec plugins raise many types; report, never crash
        raise DicomReadError("decode_failed", f"cannot decode pixel data: {exc}") from exc
    if arr.ndim != 2:
        raise DicomReadError("not_2d", f"decoded pixel array has shape {arr.shape}; need 2-D")
    return arr


def apply_rescale(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT: (0028,1053) Rescale Slope and (0028,1052) Rescale Intercept (-> float64),
    or (0028,3000) Modality LUT Sequence; stored values pass unchanged when neither is present."""
    return apply_modality_lut(arr, ds)


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """The value range apply_voi_lut maps into (PS3.3 C.11.2.1.2): from the VOI LUT's
    (0028,3002) LUT Descriptor bit depth, or from (0028,0101) Bits Stored and
    (0028,0103) Pixel Representation passed through the rescale, as pydicom does."""
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def _min_max(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64, copy=False)
    low, high = float(arr.min()), float(arr.max())
    if high <= low:
        return np.zeros_like(arr)
    return (arr - low) / (high - low)


def apply_window(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """VOI LUT: (0028,3010) VOI LUT Sequence, else (0028,1050) Window Center and
    (0028,1051) Window Width with (0028,1056) VOI LUT Function; result scaled to [0, 1].

    Without any VOI transform, or with an invalid window, the image is min-max scaled.
    """
    has_voi = bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)
    if not has_voi:
        return _min_max(arr)
    if ds.get("VOILUTSequence") and arr.dtype.kind == "f":
        arr = np.rint(arr).astype(np.int64)  # a VOI LUT is indexed by integer values
    try:
        windowed = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
        low, high = _voi_output_range(ds)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        logger.warning("invalid VOI LUT/window (%s); falling back to min-max scaling", exc)
        return _min_max(arr)
    if high <= low:
        return _min_max(arr)
    return np.clip((windowed - low) / (high - low), 0.0, 1.0)


def apply_photometric(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Invert for (0028,0004) Photometric Interpretation MONOCHROME1 (minimum = white) so every
    image follows MONOCHROME2: bright = radio-dense.

    (2050,0020) Presentation LUT Shape INVERSE also asks for inversion. The DX Image module
    requires INVERSE exactly when the image is MONOCHROME1, so both together mean one inversion,
    not two.
    """
    photometric = str(ds.PhotometricInterpretation).strip()
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        return 1.0 - arr
    return arr


@lru_cache(maxsize=8)
def _resizers(image_size: int) -> tuple[Resize, Resize]:
    """Built once per size: area averaging to shrink (anti-aliased, ~2 ms at 1024 px),
    bilinear to enlarge."""
    shape = (image_size, image_size)
    shrink = Resize(shape, mode="area", dtype=torch.float32)
    enlarge = Resize(shape, mode="bilinear", align_corners=False, dtype=torch.float32)
    return shrink, enlarge


def resize_image(arr: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a [H, W] image to [image_size, image_size] (MONAI Resize, channel-first)."""
    if arr.shape == (image_size, image_size):
        return arr.astype(np.float32, copy=False)
    shrink, enlarge = _resizers(image_size)
    resize = shrink if max(arr.shape) >= image_size else enlarge
    out = convert_to_numpy(resize(arr[None].astype(np.float32, copy=False)), dtype=np.float32)
    return np.clip(out[0], 0.0, 1.0)


# The pipeline, in order; each step is (array, dataset) -> array.
PIXEL_STEPS: tuple[Callable[[np.ndarray, Dataset], np.ndarray], ...] = (
    apply_rescale,
    apply_window,
    apply_photometric,
)


def _checked_image(ds: Dataset, layout: Layout, limits: DicomLimits) -> np.ndarray:
    """Header checks in REASONS order, then decode and the display pipeline."""
    check_modality(ds)
    check_pixel_data(ds)
    check_transfer_syntax(ds)
    check_image_size(ds, limits)
    check_single_frame_monochrome(ds)
    check_encoded_frame(ds, layout, limits)
    arr = decode_pixels(ds)
    for step in PIXEL_STEPS:
        arr = step(arr, ds)
    if not np.isfinite(arr).all():
        raise DicomReadError("decode_failed", "pixel values are not finite after rescale/window")
    return arr


def read_dicom(
    source: Path | bytes, *, image_size: int | None = None, limits: DicomLimits = DEFAULT_LIMITS
) -> tuple[np.ndarray, Dataset]:
    """read_dicom_image plus the parsed dataset (for UIDs and display fields).

    Raises only DicomReadError (with a stable `reason`) or OSError (reading a path).
    """
    ds, layout = read_part10(source, limits)
    try:
        arr = _checked_image(ds, layout, limits)
    except DicomReadError:
        raise
    except Exception as exc:  # a header value pydicom cannot convert, a codec's own error type
        raise DicomReadError("decode_failed", f"{type(exc).__name__}: {exc}") from exc
    image = arr.astype(np.float32)
    if image_size is not None:
        image = resize_image(image, image_size)
    return image, ds


def read_dicom_image(
    source: Path | bytes, *, image_size: int | None = None, limits: DicomLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """A chest radiograph as float32 [H, W] in [0, 1], bright = radio-dense.

    Steps: size and structure limits, parse, check Modality/Pixel Data/Transfer Syntax/image
    size/2-D/compressed frame header, decode, Modality LUT, VOI LUT or window (min-max if none),
    MONOCHROME1 inversion, optional square resize. Raises DicomReadError (with a stable
    `reason`) for any file that cannot be used.
    """
    return read_dicom(source, image_size=image_size, limits=limits)[0]


def dicom_summary(ds: Dataset) -> dict[str, Any]:
    """A few display fields for the app; missing attributes are None."""

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return None if value in (None, "") else str(value)

    def number(keyword: str) -> int | None:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return {
        "modality": text("Modality"),
        "photometric_interpretation": text("PhotometricInterpretation"),
        "bits_allocated": number("BitsAllocated"),
        "bits_stored": number("BitsStored"),
        "rows": number("Rows"),
        "columns": number("Columns"),
        "transfer_syntax": None if syntax is None else f"{UID(syntax).name} ({syntax})",
        "view_position": text("ViewPosition"),
        "body_part_examined": text("BodyPartExamined"),
    }
