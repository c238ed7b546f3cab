"""The 14 NIH ChestX-ray14 findings and the site-folder label table (labels.csv) format."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Order is the NIH order used by CheXNet and most papers; every label vector in the product uses it.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_FINDINGS = len(FINDINGS)

LABELS_FILENAME = "labels.csv"
MANIFEST_FILENAME = "manifest.json"
DICOM_DIRNAME = "dicom"
COMMON_TEST_SITE = "common_test"
SPLITS = ("train", "val", "test")

# Columns before the 14 finding columns, in this order.
ID_COLUMNS = ("path", "sop_instance_uid", "patient_id", "split")
LABEL_COLUMNS = ID_COLUMNS + FINDINGS


class LabelTableError(ValueError):
    """A labels.csv that cannot be used at all (missing columns, unreadable)."""


@dataclass(frozen=True)
class LabelRow:
    """One image's row of labels.csv: `path` is relative to the site folder."""

    path: str
    sop_instance_uid: str
    patient_id: str
    split: str
    labels: tuple[int, ...]  # NUM_FINDINGS zeros and ones, in FINDINGS order


def write_label_table(path: Path, rows: Iterable[LabelRow]) -> None:
    """Write labels.csv atomically enough for a tool run (temp file then rename)."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABEL_COLUMNS)
        for row in rows:
            writer.writerow(
                [row.path, row.sop_instance_uid, row.patient_id, row.split, *row.labels]
            )
    tmp.replace(path)


def parse_label_row(record: Mapping[str, str]) -> LabelRow:
    """One csv record -> LabelRow; raises ValueError naming the bad field."""
    for column in ID_COLUMNS:
        if not (record.get(column) or "").strip():
            raise ValueError(f"empty {column!r}")
    split = record["split"].strip()
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    labels = []
    for finding in FINDINGS:
        value = (record.get(finding) or "").strip()
        if value not in ("0", "1"):
            raise ValueError(f"{finding}={value!r} is not 0 or 1")
        labels.append(int(value))
    return LabelRow(
        path=record["path"].strip(),
        sop_instance_uid=record["sop_instance_uid"].strip(),
        patient_id=record["patient_id"].strip(),
        split=split,
        labels=tuple(labels),
    )


def read_label_records(path: Path) -> list[dict[str, str]]:
    """Raw records of a labels.csv; raises LabelTableError if columns are missing."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LabelTableError(f"{path}: missing columns {missing}")
            return list(reader)
    except OSError as exc:
        raise LabelTableError(f"{path}: cannot read label table ({exc})") from exc


def findings_from_nih(finding_labels: str) -> tuple[int, ...]:
    """NIH 'Finding Labels' ('A|B' or 'No Finding') -> 0/1 vector in FINDINGS order."""
    names = {name.strip() for name in finding_labels.split("|")}
    unknown = names - set(FINDINGS) - {"No Finding", ""}
    if unknown:
        raise ValueError(f"unknown NIH finding(s) {sorted(unknown)}")
    return tuple(int(f in names) for f in FINDINGS)


def count_table(rows: Sequence[LabelRow]) -> dict[str, int]:
    """Positives per finding, plus 'images' and 'no_finding' counts."""
    counts = {"images": len(rows), "no_finding": sum(1 for r in rows if not any(r.labels))}
    for k, finding in enumerate(FINDINGS):
        counts[finding] = sum(r.labels[k] for r in rows)
    return counts
