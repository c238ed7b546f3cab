"""Read the NIH ChestX-ray14 release as users download it: label table, official lists, PNGs."""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.labels import findings_from_nih

logger = logging.getLogger(__name__)

# Newest first: the 2020 revision corrects ages; either name is accepted.
TABLE_FILENAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
MAX_PLAUSIBLE_AGE = 120  # the 2017 table has a few ages such as 414 (fixed in v2020)

# Normalised header name (lower case, letters and digits only) -> field.
_NAMED_COLUMNS = {
    "imageindex": "image_index",
    "findinglabels": "finding_labels",
    "followup": "follow_up",
    "patientid": "patient_id",
    "patientage": "age",
    "patientgender": "sex",
    "patientsex": "sex",
    "viewposition": "view_position",
}
_REQUIRED = ("image_index", "finding_labels", "patient_id")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWDymwd])?\s*$")
_AGE_UNIT_DIVISOR = {"Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}


class NihReleaseError(ValueError):
    """The NIH release folder cannot be used (no label table, unreadable header)."""


@dataclass(frozen=True)
class NihImage:
    """One row of the NIH label table, with the fields the export needs."""

    image_index: str  # file name, e.g. 00000001_000.png
    patient_id: str  # NIH patient id without leading zeros, e.g. "1"
    follow_up: int
    labels: tuple[int, ...]  # FINDINGS order
    age_years: int | None = None
    sex: str | None = None  # "M" | "F" | None
    view_position: str = ""
    original_size: tuple[int, int] | None = None  # (width, height) of the original scan
    original_spacing_mm: tuple[float, float] | None = None  # (x, y) of the original scan


@dataclass(frozen=True)
class NihTable:
    """The parsed label table and the rows that could not be used."""

    images: tuple[NihImage, ...]
    bad_rows: int = 0
    implausible_ages: int = 0
    source: str = ""


@dataclass(frozen=True)
class OfficialLists:
    """The official split files; None where the file is absent."""

    train_val: frozenset[str] | None
    test: frozenset[str] | None

    @property
    def used(self) -> bool:
        return self.train_val is not None or self.test is not None


@dataclass(frozen=True)
class ImageIndex:
    """Where each PNG of the release was found, and which folders were searched."""

    paths: dict[str, Path] = field(default_factory=dict)
    folders: tuple[Path, ...] = ()


def find_table(nih_dir: Path) -> Path:
    """The label table inside `nih_dir` (the v2020 revision preferred)."""
    for name in TABLE_FILENAMES:
        if (nih_dir / name).is_file():
            return nih_dir / name
    raise NihReleaseError(
        f"no NIH label table in {nih_dir}: expected one of {', '.join(TABLE_FILENAMES)} "
        "(download it from the NIH ChestX-ray14 release, or pass --table PATH)"
    )


def parse_age(text: str) -> int | None:
    """'57', '058Y', '006M', '57.0' -> whole years; None if blank or unparseable."""
    match = _AGE.match(text or "")
    if not match:
        return None
    unit = (match.group(2) or "Y").upper()
    return int(float(match.group(1)) / _AGE_UNIT_DIVISOR[unit])


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _column_map(header: Sequence[str]) -> dict[str, int]:
    """Header -> field positions; tolerant of the 2017/2020 header variants.

    The geometry headers 'OriginalImage[Width,Height]' and
    'OriginalImagePixelSpacing[x,y]' are unquoted, so csv splits each into two columns
    ('OriginalImage[Width', 'Height]'); some copies spell them out
    ('OriginalImageWidth', 'OriginalImageHeight'). Both give two consecutive values.
    """
    columns: dict[str, int] = {}
    for position, raw in enumerate(header):
        name = _normalise(raw)
        if name in _NAMED_COLUMNS:
            columns.setdefault(_NAMED_COLUMNS[name], position)
        elif name.startswith("originalimagepixelspacing"):
            columns.setdefault("spacing", position)
        elif name.startswith("originalimage"):
            columns.setdefault("size", position)
    missing = [f for f in _REQUIRED if f not in columns]
    if missing:
        raise NihReleaseError(
            f"label table header lacks {missing}; got {list(header)[:12]} "
            "(is this the NIH Data_Entry_2017 csv?)"
        )
    return columns


def _pair(row: Sequence[str], position: int | None, kind: type) -> tuple | None:
    if position is None or position + 1 >= len(row):
        return None
    try:
        first, second = kind(float(row[position])), kind(float(row[position + 1]))
    except ValueError:
        return None
    return (first, second) if first > 0 and second > 0 else None


def _parse_row(row: Sequence[str], columns: dict[str, int]) -> NihImage:
    """One csv row -> NihImage; raises ValueError (with the reason) on an unusable row."""

    def get(name: str) -> str:
        position = columns.get(name)
        return row[position].strip() if position is not None and position < len(row) else ""

    image_index = get("image_index")
    patient = get("patient_id")
    if not image_index or not patient:
        raise ValueError("empty Image Index or Patient ID")
    follow_up_text = get("follow_up") or image_index.rsplit("_", 1)[-1].split(".")[0]
    sex = get("sex").upper()[:1]
    return NihImage(
        image_index=image_index,
        patient_id=str(int(patient)) if patient.isdigit() else patient,
        follow_up=int(follow_up_text) if follow_up_text.isdigit() else 0,
        labels=findings_from_nih(get("finding_labels")),
        age_years=parse_age(get("age")),
        sex=sex if sex in ("M", "F") else None,
        view_position=get("view_position").upper(),
        original_size=_pair(row, columns.get("size"), int),
        original_spacing_mm=_pair(row, columns.get("spacing"), float),
    )


def read_table(path: Path) -> NihTable:
    """Parse the NIH label table; unusable rows are skipped, counted and logged."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise NihReleaseError(f"{path} is empty")
            columns = _column_map(header)
            images, bad, implausible = [], 0, 0
            for line_number, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                try:
                    image = _parse_row(row, columns)
                except ValueError as exc:
                    bad += 1
                    if bad <= 5:
                        logger.warning("%s line %d skipped: %s", path.name, line_number, exc)
                    continue
                if image.age_years is not None and image.age_years > MAX_PLAUSIBLE_AGE:
                    implausible += 1
                    image = _with_age(image, None)
                images.append(image)
    except OSError as exc:
        raise NihReleaseError(f"cannot read label table {path}: {exc}") from exc
    if bad:
        logger.warning("%s: %d unusable rows skipped", path.name, bad)
    return NihTable(tuple(images), bad, implausible, path.name)


def _with_age(image: NihImage, age: int | None) -> NihImage:
    values = {name: getattr(image, name) for name in NihImage.__dataclass_fields__}
    return NihImage(**{**values, "age_years": age})


def read_list(path: Path) -> frozenset[str] | None:
    """An official list file (one image name per line) or None when it is absent."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8-sig") as fh:
        return frozenset(line.strip() for line in fh if line.strip())


def read_official_lists(nih_dir: Path) -> OfficialLists:
    """train_val_list.txt and test_list.txt from the release folder, where present."""
    return OfficialLists(read_list(nih_dir / TRAIN_VAL_LIST), read_list(nih_dir / TEST_LIST))


def image_folders(nih_dir: Path, images_dir: Path | None = None) -> tuple[Path, ...]:
    """Folders that may hold PNGs: --images-dir, or images/, images_NNN/images/, images_NNN/."""
    if images_dir is not None:
        if not images_dir.is_dir():
            raise NihReleaseError(f"--images-dir {images_dir} is not a folder")
        return (images_dir,)
    candidates = [nih_dir / "images"]
    for archive in sorted(nih_dir.glob("images_*")):
        candidates += [archive / "images", archive]
    return tuple(folder for folder in candidates if folder.is_dir())


def index_images(folders: Iterable[Path]) -> ImageIndex:
    """Map PNG file name -> path over the given folders (first folder wins)."""
    paths: dict[str, Path] = {}
    searched = tuple(folders)
    for folder in searched:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(".png") and entry.is_file():
                    paths.setdefault(entry.name, Path(entry.path))
    return ImageIndex(paths, searched)


@dataclass(frozen=True)
class Release:
    """The usable part of the release folder: table rows whose PNG exists (after --limit)."""

    table_name: str
    images: tuple[NihImage, ...]
    png_paths: dict[str, Path]
    lists: OfficialLists
    table_rows: int
    missing_images: int
    bad_rows: int
    folders: tuple[Path, ...]


def limit_patients(images: list[NihImage], limit: int | None) -> list[NihImage]:
    """Whole patients in table order while the image count stays <= limit (>= 1 patient)."""
    if limit is None:
        return images
    by_patient: dict[str, list[NihImage]] = defaultdict(list)
    for image in images:
        by_patient[image.patient_id].append(image)
    kept: list[NihImage] = []
    for patient_images in by_patient.values():
        if kept and len(kept) + len(patient_images) > limit:
            break
        kept += patient_images
    return kept


def load_release(
    nih_dir: Path,
    images_dir: Path | None = None,
    table_path: Path | None = None,
    limit: int | None = None,
) -> Release:
    """Read table, lists and PNG locations; rows without a PNG are counted, not fatal.

    `limit` keeps whole patients, in table order, up to that many images.
    """
    if not nih_dir.is_dir():
        raise NihReleaseError(f"--nih-dir {nih_dir} is not a folder")
    table = read_table(table_path or find_table(nih_dir))
    index = index_images(image_folders(nih_dir, images_dir))
    present = [image for image in table.images if image.image_index in index.paths]
    if not present:
        raise NihReleaseError(
            f"none of the {len(table.images)} table images was found as PNG in "
            f"{[str(f) for f in index.folders] or nih_dir}; unpack the images_NNN archives "
            "into NIH_DIR or pass --images-dir"
        )
    missing = len(table.images) - len(present)
    if missing:
        logger.warning("%d of %d table images have no PNG; skipped", missing, len(table.images))
    return Release(
        table_name=table.source,
        images=tuple(limit_patients(present, limit)),
        png_paths=index.paths,
        lists=read_official_lists(nih_dir),
        table_rows=len(table.images),
        missing_images=missing,
        bad_rows=table.bad_rows,
        folders=index.folders,
    )
