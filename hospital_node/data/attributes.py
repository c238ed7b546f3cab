"""Per-image subgroup attributes (sex, age, view position): labels.csv columns or DICOM header.

A sidecar to the image loader: it reads nothing the decoder keeps, so the decode cache and
`SiteData` stay as they are. For each image (by SOP Instance UID) the optional labels.csv
columns `sex`, `age`, `view_position` win (hospitals that export attributes from their
information system); otherwise the DICOM header is read without pixel data: (0010,0040)
Patient's Sex, (0010,1010) Patient's Age, (0018,5101) View Position. Anything missing or
unreadable becomes 'unknown', never an error: subgroups are a review aid.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pydicom
from pydicom.errors import InvalidDicomError

from data_tools.labels import LABELS_FILENAME, LabelTableError, read_label_records
from hospital_node.evaluation.subgroups import UNKNOWN, age_band

logger = logging.getLogger(__name__)

# labels.csv column names accepted for each attribute (NIH's Data_Entry names too)
COLUMNS = {
    "sex": ("sex", "patient_sex", "Patient Gender"),
    "age": ("age", "patient_age", "Patient Age"),
    "view_position": ("view_position", "View Position"),
}
_HEADER_TAGS = ["PatientSex", "PatientAge", "ViewPosition"]
_DICOM_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def parse_sex(value: object) -> str:
    """(0010,0040) 'M' / 'F' / 'O' (or 'male', 'female') -> 'M', 'F', 'other', 'unknown'."""
    text = str(value or "").strip().upper()
    if text in ("M", "MALE"):
        return "M"
    if text in ("F", "FEMALE"):
        return "F"
    return "other" if text in ("O", "OTHER") else UNKNOWN


def parse_age(value: object) -> float | None:
    """Years from a DICOM age string (0010,1010) 'nnnD|W|M|Y' or a plain number of years."""
    text = str(value or "").strip().upper()
    match = _DICOM_AGE.match(text)
    if match:
        return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]
    try:
        years = float(text)
    except ValueError:
        return None
    return years if 0 <= years <= 130 else None


def parse_view(value: object) -> str:
    """(0018,5101) View Position -> 'PA', 'AP', 'other' (e.g. LL lateral) or 'unknown'."""
    text = str(value or "").strip().upper()
    if text in ("PA", "AP"):
        return text
    return "other" if text else UNKNOWN


@dataclass(frozen=True)
class ImageAttributes:
    """One entry per image, in the order of the UIDs they were read for."""

    sex: tuple[str, ...]
    age_years: tuple[float | None, ...]
    view_position: tuple[str, ...]

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Attribute -> group label per image (ages in bands), for subgroup_evaluations."""
        return {
            "sex": self.sex,
            "age_band": tuple(age_band(a) for a in self.age_years),
            "view_position": self.view_position,
        }

    @classmethod
    def unknown(cls, n_images: int) -> ImageAttributes:
        return cls((UNKNOWN,) * n_images, (None,) * n_images, (UNKNOWN,) * n_images)


def _column(record: Mapping[str, str], attribute: str) -> str:
    for name in COLUMNS[attribute]:
        value = (record.get(name) or "").strip()
        if value:
            return value
    return ""


def _from_header(path: Path) -> tuple[str, str, str]:
    """(sex, age, view) strings from the file's header; empty strings when unreadable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (OSError, InvalidDicomError, ValueError, TypeError, AttributeError) as exc:
        logger.debug("no header attributes from %s: %s", path, exc)
        return "", "", ""
    sex, age, view = (str(ds.get(k, "") or "") for k in _HEADER_TAGS)
    return sex, age, view


def _attributes_of(
    site_dir: Path, record: Mapping[str, str] | None
) -> tuple[str, float | None, str]:
    if record is None:
        return UNKNOWN, None, UNKNOWN
    columns = [_column(record, a) for a in ("sex", "age", "view_position")]
    relative = PurePosixPath((record.get("path") or "").strip())
    inside = relative.parts and not relative.is_absolute() and ".." not in relative.parts
    if not all(columns) and inside:  # the loader refuses the other paths too
        header = _from_header(site_dir / relative)
        columns = [mine or theirs for mine, theirs in zip(columns, header, strict=True)]
    sex, age, view = columns
    return parse_sex(sex), parse_age(age), parse_view(view)


def read_attributes(site_dir: Path, sop_instance_uids: Sequence[str]) -> ImageAttributes:
    """Attributes of the images with these UIDs (usually one split of a loaded site)."""
    site_dir = Path(site_dir)
    try:
        records = read_label_records(site_dir / LABELS_FILENAME)
    except (LabelTableError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("%s: subgroup attributes unknown (%s)", site_dir, exc)
        return ImageAttributes.unknown(len(sop_instance_uids))
    by_uid = {(r.get("sop_instance_uid") or "").strip(): r for r in records}
    values = [_attributes_of(site_dir, by_uid.get(uid)) for uid in sop_instance_uids]
    return ImageAttributes(
        sex=tuple(v[0] for v in values),
        age_years=tuple(v[1] for v in values),
        view_position=tuple(v[2] for v in values),
    )
