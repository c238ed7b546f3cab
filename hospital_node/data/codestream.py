"""What a compressed frame says about itself, read from its header before any decoder runs.

Decoders allocate what the codestream declares (JPEG SOF, JPEG 2000 SIZ), not what the DICOM
header says, and pydicom's RLE decoder grows its output until the segment ends; a few kB can
therefore claim gigabytes (a decompression bomb). These readers parse only the headers (and, for
RLE, the run headers) so the caller can compare them with (0028,0010) Rows, (0028,0011) Columns
and (0028,0002) Samples per Pixel first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 (ITU T.81 table B.1) and SOF55 (JPEG-LS).
JPEG_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)})
JPEG_SOF |= frozenset({*range(0xCD, 0xD0), 0xF7})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
HEADER_BYTES = 1 << 16  # how much of a frame the JPEG / JPEG 2000 readers look at
RLE_HEADER = struct.Struct("<16L")  # segment count + 15 offsets (PS3.5 G.5)


class CodestreamError(ValueError):
    """A frame header that is missing or cannot be read; the message says what."""


@dataclass(frozen=True)
class FrameHeader:
    """Size of a compressed frame as its own header declares it."""

    rows: int
    columns: int
    samples: int
    bits: int
    tiles: int = 1


def jpeg_header(stream: bytes) -> FrameHeader:
    """The first start-of-frame segment of a JPEG / JPEG-LS stream: P, Y, X, Nf (T.81 B.2.2)."""
    if stream[:2] != b"\xff\xd8":
        raise CodestreamError("the JPEG stream does not start with SOI (FFD8)")
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            raise CodestreamError(f"no JPEG marker at byte {pos} before the frame header")
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise CodestreamError("the JPEG stream reaches its scan without a frame header")
        length = int.from_bytes(stream[pos + 2 : pos + 4], "big")
        if marker in JPEG_SOF:
            if length < 8 or pos + 10 > len(stream):
                raise CodestreamError("the JPEG frame header is cut short")
            bits = stream[pos + 4]
            rows, columns = struct.unpack_from(">HH", stream, pos + 5)
            return FrameHeader(rows=rows, columns=columns, samples=stream[pos + 9], bits=bits)
        if length < 2:
            raise CodestreamError(f"JPEG marker FF{marker:02X} has a length below 2")
        pos += 2 + length
    raise CodestreamError("no JPEG frame header (SOF) in the first bytes of the frame")


def j2k_header(stream: bytes) -> FrameHeader:
    """The SIZ segment of a JPEG 2000 / HTJ2K codestream (ISO 15444-1 A.5.1), also inside a
    JP2 file: image and tile sizes, component count and depth."""
    start = 0 if stream.startswith(J2K_SOC_SIZ) else stream.find(J2K_SOC_SIZ)
    if start < 0:
        raise CodestreamError("no JPEG 2000 codestream (SOC + SIZ markers) in the frame")
    pos = start + 4
    if pos + 40 > len(stream):
        raise CodestreamError("the JPEG 2000 SIZ segment is cut short")
    fields = struct.unpack_from(">HHLLLLLLLLH", stream, pos)
    _, _, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, csiz = fields
    if xsiz <= xosiz or ysiz <= yosiz or xtsiz == 0 or ytsiz == 0 or csiz == 0:
        raise CodestreamError("the JPEG 2000 SIZ segment declares an empty image or tile")
    if pos + 38 + 3 * csiz > len(stream):
        raise CodestreamError("the JPEG 2000 SIZ segment is cut short")
    depth = max((stream[pos + 38 + 3 * c] & 0x7F) + 1 for c in range(csiz))
    factors = (stream[pos + 39 + 3 * c : pos + 41 + 3 * c] for c in range(csiz))
    if any(f != b"\x01\x01" for f in factors):
        raise CodestreamError("the JPEG 2000 components are subsampled; a radiograph is not")
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    return FrameHeader(
        rows=ysiz - yosiz, columns=xsiz - xosiz, samples=csiz, bits=depth, tiles=tiles
    )


def rle_segment_length(segment: bytes, limit: int) -> int:
    """Bytes a PackBits-style RLE segment (PS3.5 G.3.1) decodes to, counted from its run
    headers without decoding; stops as soon as the count passes `limit`."""
    total = pos = 0
    size = len(segment)
    while pos < size and total <= limit:
        header = segment[pos]
        if header < 128:  # literal run of header + 1 bytes
            run = min(header + 1, size - pos - 1)
            total += run
            pos += run + 1
        elif header > 128:  # the next byte repeated 257 - header times
            total += 257 - header
            pos += 2
        else:  # 128: no operation
            pos += 1
    return total


def rle_segments(frame: bytes) -> list[bytes]:
    """The segments of an RLE Lossless frame, from its 64-byte header (PS3.5 G.5)."""
    if len(frame) < RLE_HEADER.size:
        raise CodestreamError("the RLE frame is shorter than its 64-byte header")
    count, *offsets = RLE_HEADER.unpack_from(frame)
    if not 1 <= count <= 15:
        raise CodestreamError(f"the RLE header declares {count} segments; 1-15 are allowed")
    bounds = [*offsets[:count], len(frame)]
    steps = zip(bounds, bounds[1:], strict=False)
    if bounds[0] != RLE_HEADER.size or any(later <= earlier for earlier, later in steps):
        raise CodestreamError("the RLE segment offsets are not increasing inside the frame")
    return [frame[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
