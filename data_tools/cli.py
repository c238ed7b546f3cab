"""The `ecl-data` command line: synth (phantom hospitals), nih (NIH partition), report."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from data_tools.labels import LabelTableError

DEFAULTS_NOTE = "(default: %(default)s)"
NIH_LAYOUT_SIZE = 256  # stand-in PNG matrix: NIH ships 1024 px; 256 keeps 112,120 images ~5 GB


def _add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    from data_tools.synth import SynthConfig

    d = SynthConfig()
    add = parser.add_argument
    add("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    options = (
        ("--sites", int, d.sites, "K", "number of hospitals N1..NK"),
        ("--per-site", int, d.per_site, "N", "mean images per hospital; sizes vary around it"),
        ("--test-size", int, d.test_size, "N", "images in the common test set"),
        ("--difficulty", float, d.difficulty, "X", "0 (obvious lesions) .. 1 (faint, noisy)"),
        ("--seed", int, d.seed, "S", "random seed; the same seed writes the same bytes"),
        ("--missing-per-site", int, d.missing_per_site, "K", "findings absent at each hospital"),
        ("--workers", int, d.workers, "N", "writer processes; 0 = one per CPU core"),
    )
    for flag, kind, default, metavar, text in options:
        add(flag, type=kind, default=default, metavar=metavar, help=f"{text} {DEFAULTS_NOTE}")
    add(
        "--size",
        type=int,
        default=None,
        metavar="PX",
        help=f"base matrix; each hospital scales it by its profile (default: {d.size}; "
        f"with --nih-layout: the PNG size, default {NIH_LAYOUT_SIZE})",
    )
    add("--overwrite", action="store_true", help="replace site folders already in --out")
    add("--quiet", action="store_true", help="no progress bar")
    layout = parser.add_argument_group(
        "stand-in NIH release (--nih-layout)",
        "Instead of hospitals, write a release shaped like NIH ChestX-ray14 for `ecl-data nih`: "
        "the label table, and one phantom PNG per row (that row's findings; a patient's "
        "images share one chest) in images_001/images .. images_NNN/images. Re-running "
        "continues: complete PNGs are kept. --sites, --per-site, --test-size and "
        "--missing-per-site do not apply.",
    )
    layout.add_argument("--nih-layout", action="store_true", help="write a stand-in NIH release")
    layout.add_argument(
        "--labels", type=Path, metavar="CSV", help="NIH label table (Data_Entry_2017*.csv)"
    )
    layout.add_argument(
        "--limit", type=int, metavar="N", help="whole patients in table order, up to N images"
    )


def _run_nih_layout(args: argparse.Namespace) -> int:
    from data_tools.nih_standin import StandinConfig, StandinError, generate_standin
    from data_tools.synth import SynthConfig

    d = SynthConfig()
    hospital_only = {
        "--sites": args.sites != d.sites,
        "--per-site": args.per_site != d.per_site,
        "--test-size": args.test_size != d.test_size,
        "--missing-per-site": args.missing_per_site != d.missing_per_site,
    }
    try:
        if args.labels is None:
            raise StandinError("--nih-layout needs --labels CSV (the NIH label table)")
        if any(hospital_only.values()):
            used = ", ".join(flag for flag, given in hospital_only.items() if given)
            raise StandinError(f"{used}: not used with --nih-layout (the table sets the sizes)")
        config = StandinConfig(
            labels=args.labels,
            size=args.size or NIH_LAYOUT_SIZE,
            difficulty=args.difficulty,
            seed=args.seed,
            limit=args.limit,
            workers=args.workers or min(2, os.cpu_count() or 1),
        )
        started = time.perf_counter()
        manifest = generate_standin(
            config, args.out, progress=not args.quiet, overwrite=args.overwrite
        )
    except (StandinError, ValueError, OSError) as exc:
        print(f"ecl-data synth: {exc}", file=sys.stderr)
        return 2
    print(
        f"stand-in release in {args.out}: {manifest['images']} PNGs of {manifest['patients']} "
        f"patients ({manifest['rendered']} rendered, {manifest['already_complete']} already "
        f"complete) in {time.perf_counter() - started:.1f} s; next: "
        f"ecl-data nih --nih-dir {args.out} --out DIR"
    )
    return 0


def _run_synth(args: argparse.Namespace) -> int:
    from data_tools.report import format_count_table
    from data_tools.synth import SynthConfig, SynthError, generate_dataset

    if args.nih_layout:
        return _run_nih_layout(args)
    if args.labels is not None or args.limit is not None:
        print("ecl-data synth: --labels and --limit need --nih-layout", file=sys.stderr)
        return 2
    try:
        config = SynthConfig(
            sites=args.sites,
            per_site=args.per_site,
            test_size=args.test_size,
            size=args.size or SynthConfig().size,
            difficulty=args.difficulty,
            seed=args.seed,
            missing_per_site=args.missing_per_site,
            workers=args.workers,
        )
        started = time.perf_counter()
        counts = generate_dataset(
            config, args.out, progress=not args.quiet, overwrite=args.overwrite
        )
    except (SynthError, ValueError) as exc:
        print(f"ecl-data synth: {exc}", file=sys.stderr)
        return 2
    total = sum(row["images"] for row in counts.values())
    print(format_count_table(counts))
    print(f"\nWrote {total} DICOM images in {time.perf_counter() - started:.1f} s to {args.out}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from data_tools.report import collect_counts, format_count_table, write_counts_csv

    try:
        counts = collect_counts(args.data_dir)
    except LabelTableError as exc:
        print(f"ecl-data report: {exc}", file=sys.stderr)
        return 2
    print(format_count_table(counts))
    if args.write_csv:
        write_counts_csv(args.data_dir / "counts.csv", counts)
    return 0


def build_parser(with_nih: bool = False) -> argparse.ArgumentParser:
    """The `ecl-data` parser. The nih sub-command's options come from data_tools.nih, imported
    only when `with_nih` (that command was asked for), so synth and report never need it."""
    parser = argparse.ArgumentParser(
        prog="ecl-data", description="Prepare hospital data sets (DICOM + labels.csv)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{synth,nih,report}")
    synth = sub.add_parser(
        "synth",
        help="write synthetic chest-radiograph phantoms as hospital DICOM folders",
        description="Synthetic hospitals N1..Nk plus a common test set, written as DICOM. "
        "See docs/data.md.",
    )
    _add_synth_arguments(synth)
    nih = sub.add_parser("nih", help="partition the NIH ChestX-ray14 release into hospitals")
    if with_nih:
        from data_tools.nih import add_nih_arguments

        add_nih_arguments(nih)
    report = sub.add_parser(
        "report", help="print the per-site x per-finding table of a data folder"
    )
    report.add_argument(
        "data_dir", type=Path, help="folder written by `ecl-data synth` or `ecl-data nih`"
    )
    report.add_argument(
        "--write-csv", action="store_true", help="also (re)write DATA_DIR/counts.csv"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ecl-data`; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(with_nih=command == "nih").parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "synth":
        return _run_synth(args)
    if args.command == "nih":
        from data_tools.nih import run_nih

        return run_nih(args)
    return _run_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
