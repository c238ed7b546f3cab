"""Size checks on a parsed header, run before any pixel is decoded: the image the header declares
must fit the limits, and a compressed frame must declare that same image."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from hospital_node.data.codestream import (
    HEADER_BYTES,
    CodestreamError,
    FrameHeader,
    j2k_header,
    jpeg_header,
    rle_segment_length,
    rle_segments,
)
from hospital_node.data.dicom_limits import DEFAULT_LIMITS, DicomLimits, DicomReadError, too_large
from hospital_node.data.dicom_scan import Layout

_JPEG = frozenset(JPEGTransferSyntaxes) | frozenset(JPEGLSTransferSyntaxes)
_J2K = frozenset(JPEG2000TransferSyntaxes)


def header_int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute (US or IS), `default` when absent or empty; a value that is not one
    integer means a corrupt header (DicomReadError decode_failed)."""
    try:
        value: Any = ds.get(keyword, default)
        return default if value in (None, "") else int(value)
    except Exception as exc:  # pydicom's value conversion raises many types on bad bytes
        raise DicomReadError(
            "decode_failed", f"{keyword} is not one integer ({exc}); the header is corrupt"
        ) from exc


def _declared(ds: Dataset) -> tuple[int, int, int, int, int]:
    """(rows, columns, frames, samples, bytes per sample) the header declares."""
    rows, columns = header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)
    frames = max(header_int(ds, "NumberOfFrames", 1), 1)
    samples = max(header_int(ds, "SamplesPerPixel", 1), 1)
    bits = max(header_int(ds, "BitsAllocated", 16), 1)
    return rows, columns, frames, samples, -(-bits // 8)


def check_image_size(ds: Dataset, limits: DicomLimits = DEFAULT_LIMITS) -> None:
    """(0028,0010) Rows, (0028,0011) Columns, (0028,0008) Number of Frames, (0028,0002) Samples
    per Pixel and (0028,0100) Bits Allocated within `limits`, before allocating anything."""
    rows, columns, frames, samples, width = _declared(ds)
    if rows < 1 or columns < 1:
        raise DicomReadError(
            "decode_failed",
            f"(0028,0010) Rows {rows} x (0028,0011) Columns {columns}: an image needs both >= 1",
        )
    side = max(rows, columns)
    if side > limits.max_image_side:
        what = "the image side ((0028,0010) Rows / (0028,0011) Columns)"
        raise too_large(what, side, limits.max_image_side, " pixels")
    pixels = rows * columns * frames * samples
    if pixels > limits.max_pixels:
        raise too_large("Rows x Columns x frames x samples", pixels, limits.max_pixels)
    if pixels * width > limits.max_decoded_bytes:
        what = "the decoded pixel data"
        raise too_large(what, pixels * width, limits.max_decoded_bytes, " bytes")


def _check_stream(layout: Layout, ds: Dataset, codec: str, limits: DicomLimits) -> None:
    """A JPEG / JPEG 2000 frame must end with its end marker (EOI / EOC, FFD9: decoders fill a
    cut stream with made-up pixels) and hold a plausible number of bytes for its image."""
    tail = layout.frame_tail(16).rstrip(b"\x00")  # padded to even length with 00 or FF
    if not (tail.endswith(b"\xff\xd9") or tail.endswith(b"\xff\xd9\xff")):
        raise CodestreamError(f"the {codec} stream has no end marker (FFD9): it was cut short")
    rows, columns, _, samples, width = _declared(ds)
    decoded, stored = rows * columns * samples * width, max(layout.frame_size(), 1)
    if decoded > stored * limits.max_compression_ratio:
        raise CodestreamError(
            f"the {codec} frame holds {stored:,} bytes for a {decoded:,}-byte image (more than "
            f"{limits.max_compression_ratio}:1): a decompression bomb"
        )


def _compare(found: FrameHeader, ds: Dataset, codec: str, limits: DicomLimits) -> None:
    """The frame's own size must be the header's; larger than the limits is too_large."""
    rows, columns, _, samples, _ = _declared(ds)
    if max(found.rows, found.columns) > limits.max_image_side or (
        found.rows * found.columns * found.samples > limits.max_pixels
    ):
        what = f"the {codec} frame's own size (rows x columns x samples)"
        raise too_large(what, found.rows * found.columns * found.samples, limits.max_pixels)
    if (found.rows, found.columns, found.samples) != (rows, columns, samples):
        raise DicomReadError(
            "decode_failed",
            f"the {codec} frame declares {found.rows} x {found.columns} x {found.samples} "
            f"(rows x columns x samples) but the header says {rows} x {columns} x {samples}; "
            "refused before decoding (a corrupt file or a decompression bomb), export it again",
        )
    if found.bits > 16:  # radiographs have at most 16 bits; decoders widen deeper samples
        raise DicomReadError("decode_failed", f"the {codec} frame declares {found.bits} bits")
    if found.tiles > limits.max_tiles:
        raise too_large(f"the {codec} frame's tile count", found.tiles, limits.max_tiles)


def _check_rle(ds: Dataset, layout: Layout) -> None:
    """Segments as many as samples x bytes per sample, each decoding to Rows x Columns bytes
    at most (counted from the run headers; pydicom's decoder itself has no bound)."""
    rows, columns, _, samples, width = _declared(ds)
    segments = rle_segments(layout.frame_bytes())
    if len(segments) != samples * width:
        raise CodestreamError(
            f"the RLE frame has {len(segments)} segments; {samples} samples of {width} bytes "
            f"need {samples * width}"
        )
    for index, segment in enumerate(segments):
        if rle_segment_length(segment, rows * columns) > rows * columns:
            raise CodestreamError(
                f"RLE segment {index} decodes to more than Rows x Columns = {rows * columns} "
                "bytes (a decompression bomb)"
            )


def check_encoded_frame(ds: Dataset, layout: Layout, limits: DicomLimits = DEFAULT_LIMITS) -> None:
    """A compressed frame's own header (JPEG SOF, JPEG 2000 SIZ, RLE segments) must declare the
    image checked by check_image_size; read before any decoder allocates what it declares."""
    syntax = UID(layout.transfer_syntax)
    if not syntax.is_compressed:
        if layout.fragments:
            raise DicomReadError(
                "decode_failed",
                f"the pixel data is encapsulated (compressed) frames but (0002,0010) says "
                f"{syntax.name}; the transfer syntax is wrong, export the image again",
            )
        return
    if len(layout.fragments) < 2:
        raise DicomReadError(
            "decode_failed",
            f"(0002,0010) says {syntax.name}, but the pixel data is not encapsulated frames; "
            "the transfer syntax is wrong, export the image again",
        )
    try:
        if syntax == RLELossless:
            _check_rle(ds, layout)
        elif syntax in _J2K:
            _compare(j2k_header(layout.frame_bytes(HEADER_BYTES)), ds, "JPEG 2000", limits)
            _check_stream(layout, ds, "JPEG 2000", limits)
        elif syntax in _JPEG:
            _compare(jpeg_header(layout.frame_bytes(HEADER_BYTES)), ds, "JPEG", limits)
            _check_stream(layout, ds, "JPEG", limits)
    except CodestreamError as exc:
        raise DicomReadError(
            "decode_failed", f"{exc}; the compressed image is corrupt, export it again"
        ) from exc
