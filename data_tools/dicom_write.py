"""Write phantom images as DICOM radiographs with per-hospital acquisition profiles and UIDs.

Pixel mapping (the reader, hospital_node.data.site, inverts exactly this). With phantom intensity
v in [0, 1] (1 = radio-dense), B = (0028,0101) Bits Stored and M = 2**B - 1:

1. q = round(v * M) (quantisation to Bits Stored, unsigned, (0028,0103) Pixel Representation 0).
2. Stored value s = q for (0028,0004) Photometric Interpretation MONOCHROME2 and s = M - q for
   MONOCHROME1 (where the minimum value is displayed white).
3. Modality LUT: u = slope * s + intercept with (0028,1053) Rescale Slope and (0028,1052) Rescale
   Intercept (u in "rescaled units"; slope > 0 in every profile).
4. (0028,1050) Window Center c and (0028,1051) Window Width w (VOI LUT Function LINEAR) default to
   c = intercept + slope * M / 2 + 0.5 and w = slope * M + 1. By the DICOM LINEAR formula
   (PS3.3 C.11.2.1.2) the window maps u = intercept -> 0 and u = intercept + slope * M -> 1
   linearly, i.e. windowed = s / M: a VOI-windowed read returns the phantom intensity
   (MONOCHROME2) or 1 minus it (MONOCHROME1, to be inverted for display).

So MONOCHROME1 and MONOCHROME2 files of the same phantom read back to the same image up to the
quantisation step 1 / M. `read_intensity` is that inverse, used by the tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
)

DX_FOR_PRESENTATION = UID(
    "1.2.840.10008.5.1.4.1.1.1.1"
)  # Digital X-Ray Image Storage - For Presentation
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")  # Computed Radiography Image Storage
SOP_CLASS_BY_MODALITY = {"DX": DX_FOR_PRESENTATION, "CR": CR_IMAGE_STORAGE}
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, JPEGLosslessSV1, JPEG2000Lossless)

# Product UID root: the UUID-derived OID 2.25.<uuid5(NAMESPACE_URL, "urn:ecl-hospitals:
# synthetic-dicom") as an integer> (ISO/IEC 9834-8: needs no registration; sub-arcs are ours).
UID_ROOT = "2.25.98535335330188520656036392446691908854"
IMPLEMENTATION_VERSION_NAME = "ECL_SYNTH_1"
J2K_MIN_SIZE = 32  # openjpeg (via pylibjpeg) always uses 6 resolution levels


class DicomWriteError(ValueError):
    """An image or profile that cannot be written as asked."""


@dataclass(frozen=True)
class AcquisitionProfile:
    """How one hospital's scanner stores a radiograph (see the module docstring for the mapping).

    `noise` is extra detector noise (phantom intensity units) that the synthesiser adds when it
    renders this site's images; `write_dicom` itself adds none. `ap_fraction` is the share of
    AP (portable) views. DX files keep Rescale Slope 1 / Intercept 0 (the DX Image module fixes
    them); only CR profiles use other values.
    """

    name: str
    modality: str = "DX"  # "DX" | "CR"
    photometric: str = "MONOCHROME2"  # or "MONOCHROME1"
    bits_stored: int = 12  # 8 | 12 | 16
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None  # rescaled units; None -> the full-range window above
    window_width: float | None = None
    pixel_spacing_mm: float = 0.143
    matrix: int = 128  # written image size (square)
    noise: float = 0.0
    transfer_syntax: str = ExplicitVRLittleEndian
    manufacturer: str = "Synthetic"
    ap_fraction: float = 0.4

    def __post_init__(self) -> None:
        problems = []
        if self.modality not in SOP_CLASS_BY_MODALITY:
            problems.append(f"modality {self.modality!r} (use DX or CR)")
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            problems.append(f"photometric {self.photometric!r} (use MONOCHROME1 or MONOCHROME2)")
        if self.bits_stored not in (8, 12, 16):
            problems.append(f"bits_stored {self.bits_stored} (use 8, 12 or 16)")
        if self.rescale_slope <= 0:
            problems.append(f"rescale_slope {self.rescale_slope} (must be > 0)")
        if self.transfer_syntax not in TRANSFER_SYNTAXES:
            problems.append(
                f"transfer_syntax {self.transfer_syntax} (use one of {TRANSFER_SYNTAXES})"
            )
        if problems:
            raise DicomWriteError(f"profile {self.name!r}: unsupported " + "; ".join(problems))

    @property
    def max_stored(self) -> int:
        """M = 2**bits_stored - 1."""
        return 2**self.bits_stored - 1

    def window(self) -> tuple[float, float]:
        """(Window Center, Window Width) written to (0028,1050)/(0028,1051)."""
        slope, intercept, m = self.rescale_slope, self.rescale_intercept, self.max_stored
        center = (
            intercept + slope * m / 2.0 + 0.5 if self.window_center is None else self.window_center
        )
        width = slope * m + 1.0 if self.window_width is None else self.window_width
        return center, width


@dataclass(frozen=True)
class StudyMeta:
    """Per-image identifiers and demographics (pseudonymous)."""

    patient_id: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_age: int | None = None  # years
    patient_sex: str | None = None  # "M" | "F"
    view_position: str = "PA"
    pixel_spacing_mm: float | None = None  # overrides the profile's when given
    study_date: str = "20200101"  # YYYYMMDD, synthetic
    instance_number: int = 1


# The eight default hospitals: every photometric, bit depth and transfer syntax appears at least
# twice; pixel spacing keeps a 34-38 cm field of view at each matrix size.
SITE_PROFILES: tuple[AcquisitionProfile, ...] = (
    AcquisitionProfile(
        "N1",
        "DX",
        "MONOCHROME2",
        12,
        pixel_spacing_mm=2.8,
        matrix=128,
        manufacturer="Synthetic Aurora",
    ),
    AcquisitionProfile(
        "N2",
        "CR",
        "MONOCHROME1",
        12,
        pixel_spacing_mm=2.5,
        matrix=144,
        noise=0.01,
        transfer_syntax=JPEGLosslessSV1,
        manufacturer="Synthetic Boreal",
        ap_fraction=0.6,
    ),
    AcquisitionProfile(
        "N3",
        "DX",
        "MONOCHROME2",
        16,
        pixel_spacing_mm=2.2,
        matrix=160,
        noise=0.005,
        transfer_syntax=JPEG2000Lossless,
        manufacturer="Synthetic Cirrus",
    ),
    AcquisitionProfile(
        "N4",
        "CR",
        "MONOCHROME2",
        8,
        pixel_spacing_mm=3.2,
        matrix=112,
        noise=0.02,
        manufacturer="Synthetic Delta",
        ap_fraction=0.5,
    ),
    AcquisitionProfile(
        "N5",
        "CR",
        "MONOCHROME1",
        16,
        rescale_slope=0.25,
        rescale_intercept=-1024.0,
        pixel_spacing_mm=2.8,
        matrix=128,
        noise=0.01,
        transfer_syntax=JPEG2000Lossless,
        manufacturer="Synthetic Eon",
    ),
    AcquisitionProfile(
        "N6",
        "DX",
        "MONOCHROME1",
        12,
        pixel_spacing_mm=2.0,
        matrix=176,
        transfer_syntax=JPEGLosslessSV1,
        manufacturer="Synthetic Fjord",
        ap_fraction=0.3,
    ),
    AcquisitionProfile(
        "N7",
        "CR",
        "MONOCHROME2",
        12,
        rescale_slope=2.0,
        rescale_intercept=-2048.0,
        pixel_spacing_mm=2.8,
        matrix=128,
        noise=0.015,
        manufacturer="Synthetic Gale",
    ),
    AcquisitionProfile(
        "N8",
        "DX",
        "MONOCHROME2",
        16,
        pixel_spacing_mm=1.9,
        matrix=192,
        transfer_syntax=JPEGLosslessSV1,
        manufacturer="Synthetic Halo",
        ap_fraction=0.2,
    ),
)


def derive_uid(*parts: str) -> str:
    """Deterministic valid UID under UID_ROOT from `parts` (SHA-256 of the parts, reduced to the
    digits that fit in 64 characters: ~66 bits, collisions negligible for millions of images)."""
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    digits = 64 - len(UID_ROOT) - 1
    value = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest(), "big")
    return f"{UID_ROOT}.{value % 10**digits or 1}"


def stored_values(image: np.ndarray, profile: AcquisitionProfile) -> np.ndarray:
    """Phantom intensity [H, W] in [0, 1] -> stored pixel values (steps 1-2 of the mapping)."""
    if image.ndim != 2:
        raise DicomWriteError(f"image must be 2-D [H, W], got shape {image.shape}")
    if not np.isfinite(image).all():
        raise DicomWriteError("image has NaN or infinite values")
    m = profile.max_stored
    q = np.rint(np.clip(image, 0.0, 1.0) * m).astype(np.uint32)
    stored = m - q if profile.photometric == "MONOCHROME1" else q
    return stored.astype(np.uint8 if profile.bits_stored == 8 else np.uint16)


def read_intensity(ds: Dataset) -> np.ndarray:
    """Inverse of the mapping: a dataset written here -> intensity in [0, 1] (1 = radio-dense).

    Reads (0028,0101) Bits Stored, (0028,1052)/(0028,1053) Rescale Intercept/Slope, the window
    (0028,1050)/(0028,1051) and (0028,0004) Photometric Interpretation.
    """
    slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    rescaled = ds.pixel_array.astype(np.float64) * slope + intercept
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    low = center - 0.5 - (width - 1.0) / 2.0
    windowed = np.clip((rescaled - low) / (width - 1.0), 0.0, 1.0)
    return (1.0 - windowed if ds.PhotometricInterpretation == "MONOCHROME1" else windowed).astype(
        np.float32
    )


def _resample(image: np.ndarray, matrix: int) -> np.ndarray:
    """Bilinear resample to matrix x matrix (only when the caller rendered another size)."""
    from scipy.ndimage import zoom

    return zoom(image, (matrix / image.shape[0], matrix / image.shape[1]), order=1)


def _file_meta(ds: Dataset, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(derive_uid("implementation", IMPLEMENTATION_VERSION_NAME))
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def build_dataset(stored: np.ndarray, profile: AcquisitionProfile, meta: StudyMeta) -> Dataset:
    """The DICOM dataset (uncompressed pixel data, Explicit VR Little Endian) of one image."""
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS_BY_MODALITY[profile.modality]
    ds.SOPInstanceUID = meta.sop_instance_uid
    ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
    _set_patient_and_study(ds, profile, meta)
    ds.set_pixel_data(stored, profile.photometric, profile.bits_stored, generate_instance_uid=False)
    spacing = meta.pixel_spacing_mm or profile.pixel_spacing_mm
    ds.PixelSpacing = [f"{spacing:.4g}", f"{spacing:.4g}"]
    ds.ImagerPixelSpacing = ds.PixelSpacing
    ds.RescaleIntercept = f"{profile.rescale_intercept:g}"
    ds.RescaleSlope = f"{profile.rescale_slope:g}"
    ds.RescaleType = "US"
    center, width = profile.window()
    ds.WindowCenter = f"{center:.10g}"
    ds.WindowWidth = f"{width:.10g}"
    ds.VOILUTFunction = "LINEAR"
    ds.PresentationLUTShape = "INVERSE" if profile.photometric == "MONOCHROME1" else "IDENTITY"
    # (0028,1041): +1 = lower stored values mean less X-ray intensity reached the detector.
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1 if profile.photometric == "MONOCHROME1" else -1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def _set_patient_and_study(ds: Dataset, profile: AcquisitionProfile, meta: StudyMeta) -> None:
    """Patient, study, series, equipment and acquisition attributes (pseudonymous)."""
    ds.PatientName = f"SYNTH^{meta.patient_id}"
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = meta.patient_sex or "O"
    if meta.patient_age is not None:
        ds.PatientAge = f"{min(max(meta.patient_age, 0), 999):03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom; no real patient"
    ds.StudyInstanceUID = meta.study_instance_uid
    ds.SeriesInstanceUID = meta.series_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = meta.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = meta.instance_number
    ds.Modality = profile.modality
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = f"Synthetic hospital {profile.name}"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = meta.view_position
    ds.PatientOrientation = ["L", "F"]  # columns run to the patient's left, rows to the feet
    if profile.modality == "DX":  # DX Series, DX Anatomy Imaged, DX Detector, Acquisition Context
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"  # unpaired body part
        ds.DetectorType = "SCINTILLATOR"
        ds.AcquisitionContextSequence = []


def _encode(ds: Dataset, stored: np.ndarray, transfer_syntax: str) -> None:
    """Compress the pixel data in place into `transfer_syntax` (lossless)."""
    if transfer_syntax == JPEG2000Lossless:
        if min(stored.shape) < J2K_MIN_SIZE:
            raise DicomWriteError(
                f"JPEG 2000 encoding (openjpeg, 6 wavelet levels) needs >= {J2K_MIN_SIZE} px a "
                f"side, got {stored.shape}; use a larger matrix or another transfer syntax"
            )
        ds.compress(
            JPEG2000Lossless, stored, encoding_plugin="pylibjpeg", generate_instance_uid=False
        )
    elif transfer_syntax == JPEGLosslessSV1:
        try:
            import imagecodecs
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise DicomWriteError(
                "JPEG Lossless (1.2.840.10008.1.2.4.70) needs the 'imagecodecs' package: "
                "pip install imagecodecs, or pick another transfer syntax"
            ) from exc
        frame = imagecodecs.jpeg8_encode(
            stored, lossless=True, predictor=1, bitspersample=int(ds.BitsStored)
        )
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def write_dicom(
    path: Path, image: np.ndarray, profile: AcquisitionProfile, meta: StudyMeta
) -> None:
    """Write `image` (float [H, W] in [0, 1], 1 = radio-dense) as one DICOM file at `path`.

    Resamples to profile.matrix if needed, quantises to Bits Stored, inverts for MONOCHROME1,
    writes the rescale and the full-range VOI window (module docstring) and encodes in
    profile.transfer_syntax. Creates parent folders. Output bytes depend only on the inputs.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise DicomWriteError(f"image must be 2-D [H, W], got shape {image.shape}")
    if image.shape != (profile.matrix, profile.matrix):
        image = _resample(image, profile.matrix)
    stored = stored_values(image, profile)
    ds = build_dataset(stored, profile, meta)
    if profile.transfer_syntax != ExplicitVRLittleEndian:
        _encode(ds, stored, profile.transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
