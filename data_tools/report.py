"""Per-site x per-finding positives table of a data folder: printed and written as counts.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from data_tools.labels import (
    COMMON_TEST_SITE,
    FINDINGS,
    LABELS_FILENAME,
    LabelTableError,
    count_table,
    parse_label_row,
    read_label_records,
)

COUNT_COLUMNS = ("images", "no_finding", *FINDINGS)
ABBREVIATIONS: dict[str, str] = {
    "Atelectasis": "Atel",
    "Cardiomegaly": "Card",
    "Effusion": "Effu",
    "Infiltration": "Infi",
    "Mass": "Mass",
    "Nodule": "Nodu",
    "Pneumonia": "Pnia",
    "Pneumothorax": "Ptx",
    "Consolidation": "Cons",
    "Edema": "Edem",
    "Emphysema": "Emph",
    "Fibrosis": "Fibr",
    "Pleural_Thickening": "PlTh",
    "Hernia": "Hern",
}


def site_folders(data_dir: Path) -> list[Path]:
    """Sub-folders holding a labels.csv, hospitals in natural order (N2 before N10), then
    the common test set."""
    if not data_dir.is_dir():
        raise LabelTableError(
            f"{data_dir} is not a folder; pass the folder `ecl-data synth|nih` wrote"
        )
    folders = [p for p in data_dir.iterdir() if (p / LABELS_FILENAME).is_file()]

    def order(path: Path) -> tuple[int, int, str]:
        name = path.name
        digits = "".join(ch for ch in name if ch.isdigit())
        return (name == COMMON_TEST_SITE, int(digits) if digits else 0, name)

    return sorted(folders, key=order)


def collect_counts(data_dir: Path) -> dict[str, dict[str, int]]:
    """{site: {"images", "no_finding", finding: positives}} for every site folder."""
    counts = {}
    for folder in site_folders(data_dir):
        records = read_label_records(folder / LABELS_FILENAME)
        try:
            rows = [parse_label_row(r) for r in records]
        except ValueError as exc:
            raise LabelTableError(f"{folder / LABELS_FILENAME}: {exc}") from exc
        counts[folder.name] = count_table(rows)
    if not counts:
        raise LabelTableError(f"no site folder with a {LABELS_FILENAME} under {data_dir}")
    return counts


def write_counts_csv(path: Path, counts: dict[str, dict[str, int]]) -> None:
    """counts.csv: one row per site, columns site, images, no_finding, then FINDINGS order."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("site", *COUNT_COLUMNS))
        for site, row in counts.items():
            writer.writerow((site, *(row[c] for c in COUNT_COLUMNS)))


def format_count_table(counts: dict[str, dict[str, int]]) -> str:
    """Fixed-width text table with a legend of the finding abbreviations."""
    headers = ("site", "images", "normal", *(ABBREVIATIONS[f] for f in FINDINGS))
    body = [[site, *(str(row[c]) for c in COUNT_COLUMNS)] for site, row in counts.items()]
    widths = [max(len(r[i]) for r in [list(headers), *body]) for i in range(len(headers))]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    for r in body:
        lines.append(
            "  ".join(
                v.rjust(w) if i else v.ljust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    legend = ", ".join(f"{a}={f}" for f, a in ABBREVIATIONS.items())
    return "\n".join([*lines, "", f"Positives per finding; normal = no finding. {legend}"])
