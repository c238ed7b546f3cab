"""`ecl-data nih`: the NIH ChestX-ray14 release -> N patient-disjoint, non-homogeneous hospitals."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.labels import COMMON_TEST_SITE
from data_tools.nih_release import (
    NihImage,
    NihReleaseError,
    OfficialLists,
    Release,
    load_release,
)
from data_tools.nih_sites import (
    OutputConflictError,
    PlannedImage,
    SiteWriteSettings,
    format_counts,
    write_sites,
)
from data_tools.partition import (
    SCHEMES,
    ImageTable,
    PartitionConfig,
    PartitionError,
    assign_sites,
    seeded_holdout,
    site_names,
    split_by_official_lists,
    split_site_patients,
)

logger = logging.getLogger(__name__)

SEEDED_SPLIT_WARNING = (
    "official train_val_list.txt / test_list.txt not found: the common test set is a SEEDED "
    "patient-level {percent}% split, not the official NIH test list; results are not "
    "comparable with published NIH ChestX-ray14 numbers"
)


@dataclass(frozen=True)
class Plan:
    """The partition of a release, before any file is written."""

    images: tuple[PlannedImage, ...]
    absent_findings: dict[str, tuple[str, ...]]
    facts: dict  # JSON-able: what partition.json reports about the split


_DEFAULT_HELP = " (default: %(default)s)"
# flag -> (type, default, metavar, help); a help ending in "+" gets the default appended.
_TUNING_OPTIONS: dict[str, tuple[type, object, str, str]] = {
    "--sites": (int, 8, "N", "number of hospitals, named N1..Nn+"),
    "--alpha": (float, 0.5, "A", "dirichlet: concentration, smaller = more different sites+"),
    "--absent-per-site": (int, 3, "K", "missing-findings: findings each site lacks entirely+"),
    "--size-ratio": (float, 4.0, "R", "largest / smallest hospital, in patients+"),
    "--val-fraction": (float, 0.10, "F", "share of each hospital's patients in val+"),
    "--local-test-fraction": (float, 0.15, "F", "share of each hospital's patients in test+"),
    "--size": (int, 256, "PX", "DICOM matrix, PX x PX pixels+"),
    "--seed": (int, 0, "S", "seed of every random choice+"),
    "--limit": (int, None, "N", "at most N images, whole patients in table order (default: all)"),
}


def add_nih_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ecl-data nih` (defaults shown in --help)."""
    parser.description = (
        "Split the NIH ChestX-ray14 release into N hospitals (patient-disjoint, "
        "non-homogeneous, seeded) and export each hospital's images as DICOM. "
        "See docs/data.md."
    )
    add = parser.add_argument
    add(
        "--nih-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="release folder: Data_Entry_2017*.csv, official lists, images*/",
    )
    add(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder: one sub-folder per hospital, plus common_test",
    )
    add(
        "--images-dir",
        type=Path,
        metavar="DIR",
        help="one flat folder of PNGs (default: DIR/images and DIR/images_*/images)",
    )
    add(
        "--table",
        type=Path,
        metavar="CSV",
        help="label table (default: Data_Entry_2017_v2020.csv or _2017.csv in DIR)",
    )
    add(
        "--scheme",
        choices=SCHEMES,
        default="dirichlet",
        help="how the disease mix differs between hospitals" + _DEFAULT_HELP,
    )
    for flag, (kind, default, metavar, text) in _TUNING_OPTIONS.items():
        text = text[:-1] + _DEFAULT_HELP if text.endswith("+") else text
        add(flag, type=kind, default=default, metavar=metavar, help=text)
    add(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        metavar="W",
        help="export processes" + _DEFAULT_HELP,
    )
    add("--no-progress", action="store_true", help="hide the progress bar")


def partition_config(args: argparse.Namespace) -> PartitionConfig:
    """The PartitionConfig named by the command line (validated)."""
    config = PartitionConfig(
        sites=args.sites,
        scheme=args.scheme,
        alpha=args.alpha,
        size_ratio=args.size_ratio,
        val_fraction=args.val_fraction,
        local_test_fraction=args.local_test_fraction,
        absent_per_site=args.absent_per_site,
    )
    config.validate()
    return config


def _holdout(
    by_patient: dict[str, list[NihImage]],
    lists: OfficialLists,
    config: PartitionConfig,
    rng: np.random.Generator,
) -> tuple[list[str], list[str], frozenset[str], dict]:
    """(train/val patients, common-test patients, excluded image ids, facts)."""
    if lists.used:
        names = {p: [i.image_index for i in images] for p, images in by_patient.items()}
        split = split_by_official_lists(names, lists.train_val, lists.test)
        if split.conflict_patients:
            logger.warning(
                "%d patients appear in both official lists; kept in the common test set, "
                "their train_val images excluded",
                len(split.conflict_patients),
            )
        facts = {
            "official_list_conflict_patients": len(split.conflict_patients),
            "official_list_excluded_images": len(split.excluded_images),
        }
        return [*split.train_val_patients], [*split.test_patients], split.excluded_images, facts
    logger.warning(SEEDED_SPLIT_WARNING.format(percent=round(100 * config.common_test_fraction)))
    train_val, test = seeded_holdout(list(by_patient), config.common_test_fraction, rng)
    return train_val, test, frozenset(), {"common_test_fraction": config.common_test_fraction}


def plan_partition(release: Release, config: PartitionConfig, rng: np.random.Generator) -> Plan:
    """Common test set, hospitals, and each hospital's train/val/test split (patient level)."""
    by_patient: dict[str, list[NihImage]] = defaultdict(list)
    for image in release.images:
        by_patient[image.patient_id].append(image)
    train_val, test, excluded, facts = _holdout(by_patient, release.lists, config, rng)
    table = ImageTable.build(
        {
            p: {i.image_index: i.labels for i in by_patient[p] if i.image_index not in excluded}
            for p in train_val
        }
    )
    assignment = assign_sites(table, config, rng)
    dropped = excluded | set(assignment.dropped_images)
    names = site_names(config.sites)
    planned: list[PlannedImage] = []
    for number, name in enumerate(names):
        patients = sorted(p for p, s in assignment.site_of_patient.items() if s == number)
        split = split_site_patients(patients, config, rng)
        planned += [
            PlannedImage(i, name, split[p])
            for p in patients
            for i in by_patient[p]
            if i.image_index not in dropped
        ]
    planned += [
        PlannedImage(i, COMMON_TEST_SITE, "test")
        for p in sorted(test)
        for i in by_patient[p]
        if i.image_index not in excluded
    ]
    facts.update(
        missing_findings_dropped_images=len(assignment.dropped_images),
        unplaced_patients=len(table.patients) - len(assignment.site_of_patient),
        patient_quotas=dict(zip(names, assignment.quotas, strict=True)),
    )
    absent = dict(zip(names, assignment.absent_findings, strict=True))
    return Plan(tuple(planned), absent, facts)


def _print_report(summary: dict, counts_text: str, out: Path) -> None:
    """The CLI layer's output: the loud notices and the per-site table."""
    if not summary["official_lists_used"]:
        print(f"WARNING: {SEEDED_SPLIT_WARNING.format(percent=summary['common_test_percent'])}")
    print(
        f"table {summary['source_table']}: {summary['images_in_table']} rows, "
        f"{summary['missing_images']} without a PNG (skipped), "
        f"{summary['bad_table_rows']} unusable rows"
    )
    if summary["missing_findings_dropped_images"]:
        print(
            f"missing-findings: {summary['missing_findings_dropped_images']} images carry a "
            "finding absent at their patient's hospital and were left out"
        )
    if summary["failed_images"]:
        print(
            f"WARNING: {len(summary['failed_images'])} PNGs could not be converted; "
            f"listed in {out / 'partition.json'}"
        )
    print(f"DICOM: {summary['written']} written, {summary['skipped']} already complete")
    for site, absent in summary["absent_findings"].items():
        if absent:
            print(f"  {site} lacks: {', '.join(absent)}")
    print(counts_text)
    print(f"hospital folders, counts.csv and partition.json in {out}")


def _facts(args: argparse.Namespace, config: PartitionConfig, release: Release, plan: Plan) -> dict:
    """Everything partition.json records; `settings` must match to resume into --out."""
    settings = {
        "sites": config.sites,
        "scheme": config.scheme,
        "alpha": config.alpha,
        "absent_per_site": config.absent_per_site,
        "size_ratio": config.size_ratio,
        "val_fraction": config.val_fraction,
        "local_test_fraction": config.local_test_fraction,
        "size": args.size,
        "seed": args.seed,
        "limit": args.limit,
        "source_table": release.table_name,
    }
    return {
        "tool": "ecl-data nih",
        "settings": settings,
        "source_table": release.table_name,
        "official_lists_used": release.lists.used,
        "seeded_common_test": not release.lists.used,
        "common_test_percent": round(100 * config.common_test_fraction),
        "images_in_table": release.table_rows,
        "missing_images": release.missing_images,
        "bad_table_rows": release.bad_rows,
        "images_used": len(release.images),
        "image_folders": [str(folder) for folder in release.folders],
        "absent_findings": plan.absent_findings,
        "size_profile": "geometric over sites, largest/smallest = size_ratio (patients)",
        **plan.facts,
    }


def run_nih(args: argparse.Namespace) -> int:
    """Entry point of `ecl-data nih`; returns the process exit code."""
    try:
        if args.size < 8:
            raise NihReleaseError(f"--size must be >= 8 pixels, got {args.size}")
        config = partition_config(args)
        release = load_release(args.nih_dir, args.images_dir, args.table, args.limit)
        plan = plan_partition(release, config, np.random.default_rng(args.seed))
        settings = SiteWriteSettings(
            out=args.out,
            size=args.size,
            seed=args.seed,
            workers=max(1, args.workers),
            progress=not args.no_progress,
        )
        site_order = (*site_names(config.sites), COMMON_TEST_SITE)
        facts = _facts(args, config, release, plan)
        summary, table = write_sites(plan.images, release.png_paths, site_order, facts, settings)
    except (NihReleaseError, PartitionError, OutputConflictError, OSError) as exc:
        print(f"ecl-data nih: error: {exc}", file=sys.stderr)
        return 2
    _print_report(summary, format_counts(table), args.out)
    return 0
