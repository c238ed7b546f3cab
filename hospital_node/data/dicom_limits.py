"""The reasons a DICOM file is refused, the error that carries them, and the size limits checked
before anything is decoded."""

from __future__ import annotations

from dataclasses import dataclass

# Stable codes for reports and the app; the order is the order checks run in.
REASONS = (
    "too_large",
    "not_dicom",
    "truncated",
    "no_pixel_data",
    "unsupported_modality",
    "unsupported_transfer_syntax",
    "not_2d",
    "decode_failed",
)

_MIB = 2**20


class DicomReadError(Exception):
    """A file that cannot become a training image; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown DicomReadError reason {reason!r}; use one of {REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class DicomLimits:
    """Ceilings checked from sizes and headers BEFORE a file is parsed or decoded, so that a
    hostile file costs a bounded amount of memory and time (benchmarks/hostile_dicom.py measures
    the bound).

    The largest chest detectors are about 4300 x 4300 pixels of 16 bits (37 MB); the defaults
    leave room for twice that. `max_elements` counts data elements, sequence items and pixel
    fragments at every nesting level (a real CR/DX header has a few hundred); pydicom builds a
    Python object for each, about 0.3-0.7 kB apiece.
    """

    max_file_bytes: int = 128 * _MIB  # the file, or an upload, before it is read
    max_inflated_bytes: int = 128 * _MIB  # a Deflated Explicit VR data set once inflated
    max_elements: int = 20_000
    max_depth: int = 16  # sequence nesting
    max_image_side: int = 8192  # (0028,0010) Rows, (0028,0011) Columns
    max_pixels: int = 36_000_000  # Rows x Columns x frames x samples
    max_decoded_bytes: int = 96 * _MIB  # the same times bytes per sample
    max_tiles: int = 4096  # JPEG 2000 tiles in one frame (openjpeg allocates per tile)
    # Decoded bytes per compressed byte: lossless radiographs compress 2-4:1, lossy ones rarely
    # past 50:1; a 7 kB stream that declares a 6000 x 6000 frame (10 000:1) is a bomb that
    # costs seconds of decoding even within the size limits.
    max_compression_ratio: int = 200

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DicomLimits.{name}={value!r}: use a positive integer")


DEFAULT_LIMITS = DicomLimits()


def too_large(what: str, value: int, limit: int, unit: str = "") -> DicomReadError:
    """The error for a size over its limit; the detail names both numbers and what to do."""
    return DicomReadError(
        "too_large",
        f"{what} is {value:,}{unit}, above the limit of {limit:,}{unit}; a chest radiograph is "
        "far smaller, so the file is corrupt or not a single radiograph: export the image again",
    )
