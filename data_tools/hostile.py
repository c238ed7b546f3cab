"""Hostile DICOM files: every kind of broken, unsupported or resource-exhausting file a site folder
or an upload may hold, each with the reason hospital_node.data must report for it.

Used by the tests (a few files per kind) and by benchmarks/hostile_dicom.py (1,000 files):
`write_hostile_site` writes them beside good files as one site folder with labels.csv and
expected.json (path -> acceptable reasons).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from data_tools import hostile_kinds as kinds
from data_tools import hostile_streams as streams
from data_tools.dicom_write import SITE_PROFILES, StudyMeta, derive_uid, write_dicom
from data_tools.hostile_bytes import Bases
from data_tools.labels import LABEL_COLUMNS, NUM_FINDINGS
from data_tools.phantom import PhantomConfig, render_phantom, sample_anatomy

Maker = Callable[[np.random.Generator, Bases, bool], "Made"]
Made = kinds.Made

KINDS: dict[str, Maker] = {
    "truncated": kinds.truncated,
    "garbage": kinds.garbage,
    "no_pixel_data": kinds.no_pixel_data,
    "other_modality": kinds.other_modality,
    "multi_frame": kinds.multi_frame,
    "colour": kinds.colour,
    "unknown_syntax": kinds.unknown_syntax,
    "wrong_syntax": kinds.wrong_syntax,
    "corrupt_jpeg": streams.corrupt_jpeg,
    "corrupt_j2k": streams.corrupt_j2k,
    "corrupt_rle": streams.corrupt_rle,
    "damaged_stream": streams.damaged_stream,
    "huge_header": kinds.huge_header,
    "bomb_jpeg": streams.bomb_jpeg,
    "bomb_j2k": streams.bomb_j2k,
    "bomb_rle": streams.bomb_rle,
    "bomb_deflate": streams.bomb_deflate,
    "deep_sequence": streams.deep_sequence,
    "many_items": streams.many_items,
    "many_elements": streams.many_elements,
    "huge_element": streams.huge_element,
    "broken_sequence": streams.broken_sequence,
    "bad_meta": kinds.bad_meta,
    "bad_values": kinds.bad_values,
}
GOOD_SYNTAXES = (ExplicitVRLittleEndian, JPEGLosslessSV1, JPEG2000Lossless, RLELossless)
EXPECTED_FILENAME = "expected.json"


@dataclass(frozen=True)
class HostileFile:
    """One file to write: its kind, content, acceptable reasons, and (when > len(data)) the
    size of the sparse file it is written as."""

    kind: str
    data: bytes
    expected: tuple[str, ...]
    size: int = 0
    sop_instance_uid: str = ""


def hostile_files(count: int, seed: int, *, small: bool = False) -> Iterator[HostileFile]:
    """`count` files, kinds in turn (every kind once in the first len(KINDS)); `small` keeps
    the big kinds near their limits so a test stays fast."""
    rng = np.random.default_rng(seed)
    bases = Bases(rng)
    names = list(KINDS)
    try:
        for index in range(count):
            kind = names[index % len(names)]
            made = KINDS[kind](rng, bases, small)
            yield HostileFile(kind, made.data, made.expected, made.size, made.sop_instance_uid)
    finally:
        bases.close()


def _write_file(path: Path, hostile: HostileFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(hostile.data)
        if hostile.size > len(hostile.data):
            fh.truncate(hostile.size)  # sparse: the size is real, the disk use is not


def _good_files(site: Path, good: int, seed: int) -> list[tuple[str, str]]:
    """`good` valid radiographs in every transfer syntax: (relative path, SOP Instance UID)."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for index in range(good):
        syntax = GOOD_SYNTAXES[index % len(GOOD_SYNTAXES)]
        base = SITE_PROFILES[index % len(SITE_PROFILES)]
        encoded = ExplicitVRLittleEndian if syntax == RLELossless else syntax
        profile = type(base)(**{**base.__dict__, "matrix": 96, "transfer_syntax": encoded})
        uid = derive_uid("hostile-good", str(seed), str(index))
        study, series = (derive_uid(uid, part) for part in ("study", "series"))
        meta = StudyMeta(f"GOOD-{index}", uid, study, series)
        config = PhantomConfig(size=96)
        image = render_phantom(
            np.zeros(NUM_FINDINGS, dtype=int), sample_anatomy(rng, config), rng, config
        )
        relative = f"dicom/good/{index:04d}.dcm"
        write_dicom(site / relative, image, profile, meta)
        if syntax == RLELossless:
            kinds.recompress_rle(site / relative)
        rows.append((relative, uid))
    return rows


def write_hostile_site(
    site: Path, count: int, *, good: int = 20, seed: int = 0, small: bool = False
) -> dict[str, list[str]]:
    """A site folder: `count` hostile files under dicom/hostile/<kind>/, `good` valid ones under
    dicom/good/, labels.csv naming all of them (splits in turn) and expected.json (relative
    path -> acceptable reasons; [] for a good file). Returns the expected mapping."""
    site.mkdir(parents=True, exist_ok=True)
    expected: dict[str, list[str]] = {}
    rows = []
    for index, hostile in enumerate(hostile_files(count, seed, small=small)):
        relative = f"dicom/hostile/{hostile.kind}/{index:05d}.dcm"
        _write_file(site / relative, hostile)
        expected[relative] = list(hostile.expected)
        uid = hostile.sop_instance_uid or derive_uid("hostile-row", str(seed), str(index))
        rows.append((relative, uid))
    for relative, uid in _good_files(site, good, seed):
        expected[relative] = []
        rows.append((relative, uid))
    splits = ("train", "val", "test")
    with (site / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABEL_COLUMNS)
        for index, (relative, uid) in enumerate(rows):
            finding = [index % 2] + [0] * (NUM_FINDINGS - 1)
            writer.writerow([relative, uid, f"P{index:05d}", splits[index % 3], *finding])
    (site / EXPECTED_FILENAME).write_text(json.dumps(expected, indent=1, sort_keys=True))
    return expected
