"""Hospital folders of `ecl-data nih`: DICOM export, labels.csv, manifest.json, counts.csv."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_tools.labels import (
    DICOM_DIRNAME,
    LABELS_FILENAME,
    MANIFEST_FILENAME,
    LabelRow,
    count_table,
    write_label_table,
)
from data_tools.nih_export import (
    PARTIAL_SUFFIX,
    ExportJob,
    ExportResult,
    dicom_relpath,
    export_images,
    nih_profile,
    remove_stale_files,
    study_meta,
)
from data_tools.nih_release import NihImage
from data_tools.report import ABBREVIATIONS, COUNT_COLUMNS

PARTITION_FILENAME = "partition.json"
COUNTS_FILENAME = "counts.csv"
PSEUDONYM_NOTE = (
    "PatientID is a keyed-hash pseudonym of the NIH patient id (key derived from the seed); "
    "it is not anonymisation: file names keep the NIH image index"
)


class OutputConflictError(ValueError):
    """--out already holds a partition made with other settings."""


@dataclass(frozen=True)
class PlannedImage:
    """One image's destination: site folder name and split."""

    image: NihImage
    site: str
    split: str


@dataclass(frozen=True)
class SiteWriteSettings:
    """Where and how to write the hospital folders."""

    out: Path
    size: int = 256
    seed: int = 0
    workers: int = 1
    progress: bool = True


def check_output_settings(out: Path, settings: dict) -> None:
    """Refuse to resume into a folder made with other partition settings."""
    path = out / PARTITION_FILENAME
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text()).get("settings")
    except (OSError, ValueError) as exc:
        raise OutputConflictError(
            f"{path} is unreadable ({exc}); delete it or use a new --out"
        ) from exc
    if previous != settings:
        changed = sorted(k for k in settings if (previous or {}).get(k) != settings[k])
        raise OutputConflictError(
            f"{out} holds a partition made with other settings ({', '.join(changed)}); "
            "use a new --out, or delete the folder to start again"
        )


def build_jobs(
    planned: Sequence[PlannedImage], png_paths: dict[str, Path], settings: SiteWriteSettings
) -> list[ExportJob]:
    """One ExportJob per planned image, in plan order."""
    key = f"ecl-data-nih:{settings.seed}"
    jobs = []
    for item in planned:
        meta = study_meta(item.image, settings.size, key)
        target = settings.out / item.site / dicom_relpath(meta, item.image.image_index)
        jobs.append(ExportJob(png_paths[item.image.image_index], target, meta))
    return jobs


def label_rows(
    planned: Sequence[PlannedImage], jobs: Sequence[ExportJob], results: Sequence[ExportResult]
) -> dict[str, list[LabelRow]]:
    """Site -> labels.csv rows of the images whose DICOM exists (failed ones left out)."""
    rows: dict[str, list[LabelRow]] = {}
    for item, job, result in zip(planned, jobs, results, strict=True):
        rows.setdefault(item.site, [])
        if result.status == "failed":
            continue
        rows[item.site].append(
            LabelRow(
                path=dicom_relpath(job.meta, item.image.image_index),
                sop_instance_uid=job.meta.sop_instance_uid,
                patient_id=job.meta.patient_id,
                split=item.split,
                labels=item.image.labels,
            )
        )
    return rows


def site_counts(site: str, rows: Sequence[LabelRow]) -> dict:
    """One row of counts.csv: patients, images, split sizes, no_finding and positives."""
    splits = {split: sum(1 for r in rows if r.split == split) for split in ("train", "val", "test")}
    return {
        "site": site,
        "patients": len({r.patient_id for r in rows}),
        **splits,
        **count_table(rows),
    }


def count_columns() -> list[str]:
    """counts.csv columns: those of `ecl-data report` (data_tools.report), then the
    patients and split sizes."""
    return ["site", *COUNT_COLUMNS, "patients", "train", "val", "test"]


def write_counts(path: Path, table: Sequence[dict]) -> None:
    """counts.csv: one row per site folder (no total row, as `ecl-data report` writes it)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=count_columns(), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)


def format_counts(table: Sequence[dict]) -> str:
    """The count table as fixed-width text, finding names abbreviated as in `ecl-data report`."""
    columns = ["site", "patients", "images", "train", "val", "test", *COUNT_COLUMNS[1:]]
    header = [ABBREVIATIONS.get(c, "normal" if c == "no_finding" else c) for c in columns]
    widths = [
        max(len(header[k]), *(len(str(row[c])) for row in table)) for k, c in enumerate(columns)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    for row in table:
        lines.append("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))
    legend = ", ".join(f"{short}={name}" for name, short in ABBREVIATIONS.items())
    return "\n".join([*lines, f"Positives per finding, all splits; normal = no finding. {legend}"])


def _write_json(path: Path, payload: dict) -> None:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def _manifest(site: str, rows: Sequence[LabelRow], facts: dict) -> dict:
    settings = facts["settings"]
    return {
        "site": site,
        "source": "NIH ChestX-ray14 (Wang et al., CVPR 2017; NIH Clinical Center)",
        "generator": "ecl-data nih",
        "scheme": settings["scheme"],
        "seed": settings["seed"],
        "size_px": settings["size"],
        "official_lists_used": facts["official_lists_used"],
        "absent_findings": list(facts["absent_findings"].get(site, ())),
        "counts": site_counts(site, rows),
        "patient_id_note": PSEUDONYM_NOTE,
    }


def _write_site_folders(
    planned: Sequence[PlannedImage],
    jobs: Sequence[ExportJob],
    rows: dict[str, list[LabelRow]],
    site_order: Sequence[str],
    facts: dict,
    out: Path,
) -> int:
    """labels.csv and manifest.json of every site; returns how many stale files went."""
    keep: dict[str, set[Path]] = {site: set() for site in site_order}
    for item, job in zip(planned, jobs, strict=True):
        keep[item.site].add(job.dcm_path)
    stale = 0
    for site in site_order:
        site_dir = out / site
        site_dir.mkdir(parents=True, exist_ok=True)
        write_label_table(site_dir / LABELS_FILENAME, rows.get(site, []))
        _write_json(site_dir / MANIFEST_FILENAME, _manifest(site, rows.get(site, []), facts))
        stale += remove_stale_files(site_dir / DICOM_DIRNAME, keep[site])
    return stale


def _summary(
    facts: dict, results: Sequence[ExportResult], table: Sequence[dict], out: Path
) -> dict:
    """partition.json content once the export is done."""
    return {
        **facts,
        "status": "complete",
        "written": sum(r.status == "written" for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
        "failed_images": [
            {"path": str(r.dcm_path.relative_to(out)), "reason": r.reason}
            for r in results
            if r.status == "failed"
        ],
        "site_sizes": {
            row["site"]: {k: row[k] for k in ("patients", "images", "train", "val", "test")}
            for row in table
        },
        "patient_id_note": PSEUDONYM_NOTE,
    }


def write_sites(
    planned: Sequence[PlannedImage],
    png_paths: dict[str, Path],
    site_order: Sequence[str],
    facts: dict,
    settings: SiteWriteSettings,
) -> tuple[dict, list[dict]]:
    """Export every planned image and write the hospital folders, counts.csv and
    partition.json; returns (partition.json content, count table rows incl. 'total')."""
    check_output_settings(settings.out, facts["settings"])
    settings.out.mkdir(parents=True, exist_ok=True)
    _write_json(settings.out / PARTITION_FILENAME, {**facts, "status": "exporting"})
    jobs = build_jobs(planned, png_paths, settings)
    results = export_images(
        jobs, nih_profile(settings.size), workers=settings.workers, progress=settings.progress
    )
    rows = label_rows(planned, jobs, results)
    stale = _write_site_folders(planned, jobs, rows, site_order, facts, settings.out)
    table = [site_counts(site, rows.get(site, [])) for site in site_order]
    write_counts(settings.out / COUNTS_FILENAME, table)
    table.append(site_counts("total", [r for site in site_order for r in rows.get(site, [])]))
    summary = {**_summary(facts, results, table, settings.out), "stale_files_removed": stale}
    _write_json(settings.out / PARTITION_FILENAME, summary)
    return summary, table
