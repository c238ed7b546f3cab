"""Structural pre-scan of a DICOM Part 10 byte string: counts, nesting and sizes bounded before
pydicom parses it.

pydicom builds a Python object for every data element and sequence item as it reads, and inflates
a Deflated data set in one call; 8 MB of empty sequence items cost it about 0.7 GB and a minute,
a 1 MB deflate stream can inflate to 1 GB. This walk reads only tags and lengths (PS3.5 sec. 7),
mirrors the encoding choices pydicom makes (implicit/explicit VR sniffing, undefined-length
sequences, VR UN as an implicit sequence), and refuses the file before any of that is allocated.
It also finds the Pixel Data (7FE0,0010) so that compressed frames can be checked before decoding.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR

from hospital_node.data.dicom_limits import DicomLimits, DicomReadError, too_large

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX_TAG = 0x00020010
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 table 7.1-1).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
_PREAMBLE = 128
_INFLATE_CHUNK = 1 << 20


@dataclass
class Layout:
    """Where things are: `body` is the data set the offsets refer to (the inflated one for
    Deflated files); Pixel Data is either native (`pixel_span`) or encapsulated (`fragments`,
    the Basic Offset Table first)."""

    transfer_syntax: str
    body: bytes
    elements: int = 0
    depth: int = 0
    pixel_span: tuple[int, int] | None = None  # (offset, length) of native pixel data
    fragments: list[tuple[int, int]] = field(default_factory=list)

    def frame_bytes(self, limit: int | None = None) -> bytes:
        """The fragments after the Basic Offset Table joined (one frame), or their first
        `limit` bytes."""
        parts, total = [], 0
        for offset, length in self.fragments[1:]:
            parts.append(self.body[offset : offset + length])
            total += length
            if limit is not None and total >= limit:
                break
        joined = b"".join(parts)
        return joined if limit is None else joined[:limit]

    def frame_size(self) -> int:
        """Bytes of the fragments after the Basic Offset Table (the compressed frame)."""
        return sum(length for _, length in self.fragments[1:])

    def frame_tail(self, size: int) -> bytes:
        """The last `size` bytes of the last fragment (where an end marker must be)."""
        offset, length = self.fragments[-1]
        return self.body[offset + max(length - size, 0) : offset + length]


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _cut(what: str) -> DicomReadError:
    return DicomReadError(
        "truncated", f"{what}; the file was cut short, copy it again from the archive"
    )


def _is_letter_pair(vr: bytes) -> bool:
    """pydicom's test for an explicit VR at the start of a data set (two capitals)."""
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


class _Walk:
    """One pass over a data set; raises DicomReadError on a limit or a broken structure."""

    def __init__(self, body: bytes, little: bool, limits: DicomLimits, layout: Layout) -> None:
        self.body, self.limits, self.layout = body, limits, layout
        endian = "<" if little else ">"
        self.tag_struct = struct.Struct(endian + "HH")
        self.u16 = struct.Struct(endian + "H")
        self.u32 = struct.Struct(endian + "L")
        self.delimiter = struct.pack(endian + "HH", 0xFFFE, 0xE0DD)

    def count(self, depth: int) -> None:
        layout = self.layout
        layout.elements += 1
        layout.depth = max(layout.depth, depth)
        if layout.elements > self.limits.max_elements:
            what = "the number of data elements, items and fragments"
            raise too_large(what, layout.elements, self.limits.max_elements)
        if depth > self.limits.max_depth:
            raise too_large("sequence nesting", depth, self.limits.max_depth, " levels")

    def need(self, pos: int, size: int, end: int, what: str) -> None:
        if pos + size > end:
            raise _cut(f"{what} at byte {pos} needs {size:,} bytes, {max(end - pos, 0):,} remain")

    def tag_at(self, pos: int) -> int:
        group, element = self.tag_struct.unpack_from(self.body, pos)
        return group << 16 | element

    def header(self, pos: int, end: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, header size) of the element at `pos`, read as
        pydicom's data_element_generator does (an invalid explicit VR means implicit)."""
        self.need(pos, 8, end, "a data element header")
        tag = self.tag_at(pos)
        vr = None if implicit else self.body[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            self.need(pos, 12, end, "a data element header")
            return tag, vr, self.u32.unpack_from(self.body, pos + 8)[0], 12
        if vr is not None and b"AA" <= vr <= b"ZZ":
            return tag, vr, self.u16.unpack_from(self.body, pos + 6)[0], 8
        return tag, None, self.u32.unpack_from(self.body, pos + 4)[0], 8

    def dataset(self, pos: int, end: int, depth: int, implicit: bool, top: bool) -> int:
        """Walk a data set from `pos` to `end`; an item of undefined length (`end` is then the
        enclosing one) stops after its Item Delimitation. Returns the position reached."""
        if pos + 6 <= end:  # pydicom sniffs the first element's VR (filereader._is_implicit_vr)
            found = not _is_letter_pair(self.body[pos + 4 : pos + 6])
            implicit = found if top else (implicit or found)
        while pos < end:
            if top and end - pos < 8:
                return end  # pydicom ignores a few trailing bytes
            tag, vr, length, size = self.header(pos, end, implicit)
            pos += size
            if tag == ITEM_END:
                return pos
            self.count(depth)
            pos = self.value(pos, end, depth, implicit, (tag, vr, length), top)
        return pos

    def value(
        self, pos: int, end: int, depth: int, implicit: bool, element: tuple, top: bool
    ) -> int:
        """Skip one element's value, walking into it where pydicom would parse it."""
        tag, vr, length = element
        sequence = self.is_sequence(tag, vr, pos, end, length)
        inner_implicit = implicit or vr == b"UN"  # PS3.5 6.2.2: UN sequences are implicit VR
        if length != UNDEFINED:
            self.need(pos, length, end, f"the value of {_tag_text(tag)}")
            if sequence:
                self.sequence(pos, pos + length, depth + 1, inner_implicit, closed=False)
            elif tag == PIXEL_DATA and top:
                self.layout.pixel_span = (pos, length)
            return pos + length
        if tag == PIXEL_DATA and top:
            return self.fragments(pos, end, depth)
        if sequence:
            return self.sequence(pos, end, depth + 1, inner_implicit, closed=True)
        found = self.body.find(self.delimiter, pos, end)  # pydicom scans for (FFFE,E0DD)
        if found < 0 or found + 8 > end:
            raise _cut(f"the undefined-length value of {_tag_text(tag)} has no end")
        return found + 8

    def is_sequence(self, tag: int, vr: bytes | None, pos: int, end: int, length: int) -> bool:
        """Whether pydicom reads (or, on access, converts) this value as a sequence."""
        if vr in (b"SQ", b"UN") and (vr == b"SQ" or length == UNDEFINED):
            return True
        if vr is not None and vr != b"UN":
            return False
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:  # private tag: pydicom looks for an Item tag next
            return length == UNDEFINED and pos + 4 <= end and self.tag_at(pos) == ITEM

    def sequence(self, pos: int, end: int, depth: int, implicit: bool, closed: bool) -> int:
        """Walk sequence items up to `end`, or to (FFFE,E0DD) when `closed` (undefined length);
        returns the position after the sequence."""
        while pos < end:
            self.need(pos, 8, end, "a sequence item header")
            tag, length = self.tag_at(pos), self.u32.unpack_from(self.body, pos + 4)[0]
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise DicomReadError(
                    "not_dicom",
                    f"a sequence holds {_tag_text(tag)} at byte {pos - 8} where an item must "
                    "be; the header is corrupt",
                )
            self.count(depth)
            if length == UNDEFINED:
                pos = self.dataset(pos, end, depth, implicit, top=False)
                if self.tag_at(pos - 8) != ITEM_END:
                    raise _cut("a sequence item of undefined length has no end")
            else:
                self.need(pos, length, end, "a sequence item")
                self.dataset(pos, pos + length, depth, implicit, top=False)
                pos += length
        if closed:
            raise _cut("a sequence of undefined length has no end")
        return pos

    def fragments(self, pos: int, end: int, depth: int) -> int:
        """Encapsulated Pixel Data: items of defined length up to (FFFE,E0DD) (PS3.5 A.4)."""
        while True:
            self.need(pos, 8, end, "a pixel data fragment header")
            tag, length = self.tag_at(pos), self.u32.unpack_from(self.body, pos + 4)[0]
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM or length == UNDEFINED:
                raise DicomReadError(
                    "decode_failed",
                    f"encapsulated pixel data is malformed at byte {pos - 8}: "
                    "expected a fragment item of defined length; export the image again",
                )
            self.count(depth + 1)
            self.need(pos, length, end, "a pixel data fragment")
            self.layout.fragments.append((pos, length))
            pos += length


def _file_meta(data: bytes, limits: DicomLimits) -> tuple[str, int, int]:
    """(Transfer Syntax UID, offset of the data set, element count) from the group 0002
    elements (explicit VR little endian, PS3.10 sec. 7.1)."""
    layout = Layout(transfer_syntax="", body=data)
    walk = _Walk(data, True, limits, layout)
    pos, syntax = _PREAMBLE + 4, ""
    implicit = not _is_letter_pair(data[pos + 4 : pos + 6])  # as pydicom reads a bad meta
    while pos + 8 <= len(data) and walk.tag_at(pos) >> 16 == 0x0002:
        tag, _, length, size = walk.header(pos, len(data), implicit)
        walk.count(0)
        if length == UNDEFINED:
            raise DicomReadError("not_dicom", "a file meta element has no defined length")
        walk.need(pos + size, length, len(data), "a file meta element")
        if tag == TRANSFER_SYNTAX_TAG:
            syntax = data[pos + size : pos + size + length].decode("ascii", "replace")
            syntax = syntax.strip("\x00 ")
        pos += size + length
    return syntax, pos, layout.elements


def _inflated_size(data: bytes, limit: int) -> int:
    """Bytes a raw deflate stream inflates to, counted 1 MiB at a time (nothing kept) and
    stopped as soon as the count passes `limit`."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    for start in range(0, len(data), _INFLATE_CHUNK):
        pending = data[start : start + _INFLATE_CHUNK]
        while pending:
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            if total > limit:
                return total
            pending = inflater.unconsumed_tail
    return total


def _inflate(data: bytes, limits: DicomLimits) -> bytes:
    """A raw deflate stream (PS3.5 A.5) inflated, refused when it passes `max_inflated_bytes`
    or `max_compression_ratio` times its own size (a deflate bomb): the size is counted first,
    so a bomb never holds more than 1 MiB of its output."""
    limit = min(limits.max_inflated_bytes, max(len(data), 1) * limits.max_compression_ratio)
    try:
        total = _inflated_size(data, limit)
        if total > limit:
            what = "the inflated (Deflated Explicit VR) data set"
            raise too_large(what, total, limit, " bytes")
        return zlib.decompress(data, -zlib.MAX_WBITS)  # as pydicom does; bounded by the count
    except zlib.error as exc:
        raise DicomReadError("not_dicom", f"the deflated data set is corrupt ({exc})") from exc


def scan_part10(data: bytes, limits: DicomLimits) -> Layout:
    """Check a Part 10 file's structure against `limits` without building it; the Layout says
    where its Pixel Data lies. Raises DicomReadError (too_large, not_dicom, truncated)."""
    if len(data) > limits.max_file_bytes:
        raise too_large("the file", len(data), limits.max_file_bytes, " bytes")
    if data[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise DicomReadError(
            "not_dicom",
            "no 128-byte preamble with the 'DICM' prefix, so not a DICOM Part 10 file; "
            "export the image from the archive as DICOM",
        )
    syntax, start, meta_elements = _file_meta(data, limits)
    if not syntax:
        raise DicomReadError(
            "truncated",
            "file meta lacks (0002,0010) Transfer Syntax UID; the file was cut short or "
            "written incompletely, copy it again from the archive",
        )
    body = data
    if syntax == DEFLATED:
        body, start = _inflate(data[start:], limits), 0
    layout = Layout(transfer_syntax=syntax, body=body, elements=meta_elements)
    walk = _Walk(body, syntax != EXPLICIT_BIG, limits, layout)
    walk.dataset(start, len(body), 0, implicit=syntax == IMPLICIT_LITTLE, top=True)
    return layout
