"""Load a site folder (labels.csv + DICOM) into cached image tensors, with a data report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm import tqdm

from data_tools.labels import (
    DICOM_DIRNAME,
    LABELS_FILENAME,
    NUM_FINDINGS,
    SPLITS,
    LabelRow,
    LabelTableError,
    parse_label_row,
    read_label_records,
)
from hospital_node.data.cache import (
    CachedFile,
    CacheEntry,
    SiteCache,
    cache_key,
    convert_rows,
    default_cache_dir,
    file_digest,
)
from hospital_node.data.config import DataConfig
from hospital_node.data.decode import decode_files
from hospital_node.data.dicom import REASONS as DICOM_REASONS
from hospital_node.data.dicom_limits import DEFAULT_LIMITS, too_large
from hospital_node.data.images import ImageSource, SiteImages, union_images
from hospital_node.data.report import DataReport, SkippedFile

__all__ = [
    "SKIP_REASONS",
    "DataConfig",
    "DataReport",
    "ImageSource",
    "SiteData",
    "SiteDataError",
    "SiteImages",
    "SkippedFile",
    "load_site",
    "union_images",
]

logger = logging.getLogger(__name__)

# Reasons a labels.csv row gives no image; DICOM_REASONS come from decoding the file.
TABLE_REASONS = (
    "no_label_row",  # a file under dicom/ that no labels.csv row names
    "bad_label_row",
    "missing_file",
    "duplicate_sop_instance_uid",
    "sop_instance_uid_mismatch",
)
SKIP_REASONS = TABLE_REASONS + DICOM_REASONS
REPORT_FILENAME = "report.json"


class SiteDataError(Exception):
    """A site folder that yields no training data at all; the message names the folder."""


@dataclass(frozen=True, eq=False)
class SiteData:
    """A site's usable images in labels.csv order. `images` reads the memory-mapped cache:
    `images.take(idx)` / `images[idx]` give float32 [B, 1, S, S] in [0, 1]; nothing else of the
    pixels is held in memory."""

    site: str
    images: ImageSource  # [N, 1, S, S]; batches are float32 in [0, 1]
    labels: torch.Tensor  # [N, NUM_FINDINGS] float32
    patient_ids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    splits: tuple[str, ...]
    report: DataReport

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        sizes = {
            len(self.labels),
            len(self.patient_ids),
            len(self.sop_instance_uids),
            len(self.splits),
        }
        if sizes != {n} or self.labels.shape[1:] != (NUM_FINDINGS,):
            raise ValueError(f"SiteData {self.site}: images, labels and ids disagree in length")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, split: str) -> SiteData:
        """The rows of one split ("train" | "val" | "test"), possibly empty; its images are a view
        of the same stored array (no pixel is copied)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        keep = [i for i, s in enumerate(self.splits) if s == split]
        index = torch.tensor(keep, dtype=torch.long)
        return SiteData(
            site=self.site,
            images=self.images.select(index),
            labels=self.labels[index],
            patient_ids=tuple(self.patient_ids[i] for i in keep),
            sop_instance_uids=tuple(self.sop_instance_uids[i] for i in keep),
            splits=tuple(self.splits[i] for i in keep),
            report=self.report,
        )


@dataclass(frozen=True)
class _Candidate:
    """A label row whose file exists; `line` is its line number in labels.csv."""

    line: int
    row: LabelRow
    path: Path
    digest: str = ""


@dataclass
class _Skips:
    """Skipped rows collected with their labels.csv line, reported in line order."""

    items: list[tuple[int, SkippedFile]] = field(default_factory=list)

    def add(self, line: int, path: str, reason: str, detail: str) -> None:
        self.items.append((line, SkippedFile(path, reason, detail)))

    def ordered(self) -> list[SkippedFile]:
        return [s for _, s in sorted(self.items, key=lambda item: item[0])]


def _read_records(site_dir: Path) -> list[dict[str, str]]:
    table = site_dir / LABELS_FILENAME
    if not table.is_file():
        raise SiteDataError(
            f"site folder {site_dir} has no {LABELS_FILENAME}; a site needs {LABELS_FILENAME} "
            "and its DICOM files (docs/data.md), e.g. made by `ecl-data synth` or `ecl-data nih`"
        )
    try:
        return read_label_records(table)
    except (LabelTableError, UnicodeDecodeError, ValueError) as exc:
        raise SiteDataError(
            f"site folder {site_dir}: {LABELS_FILENAME} is unusable ({exc}); "
            "fix its header or regenerate it (docs/data.md)"
        ) from exc


def _select_rows(site_dir: Path, records: list[dict[str, str]], skips: _Skips) -> list[_Candidate]:
    """Label-table checks: a parseable row, a path inside the site, a new UID, an existing file."""
    candidates: list[_Candidate] = []
    first_line: dict[str, int] = {}
    for index, record in enumerate(records):
        line = index + 2  # line 1 is the header
        shown = (record.get("path") or "").strip() or f"{LABELS_FILENAME}:{line}"
        try:
            row = parse_label_row(record)
        except ValueError as exc:
            skips.add(line, shown, "bad_label_row", f"{LABELS_FILENAME} line {line}: {exc}")
            continue
        relative = PurePosixPath(row.path)
        if relative.is_absolute() or ".." in relative.parts:
            detail = f"{LABELS_FILENAME} line {line}: path must stay inside the site folder"
            skips.add(line, shown, "bad_label_row", detail)
            continue
        path = site_dir / relative
        if not path.is_file():
            skips.add(line, shown, "missing_file", f"no such file under {site_dir}")
            continue
        uid = row.sop_instance_uid
        if uid in first_line:
            detail = (
                f"SOP Instance UID {uid} already used on {LABELS_FILENAME} line {first_line[uid]}"
            )
            skips.add(line, shown, "duplicate_sop_instance_uid", detail)
            continue
        first_line[uid] = line
        candidates.append(_Candidate(line, row, path))
    return candidates


def _unlisted_files(site_dir: Path, records: list[dict[str, str]], skips: _Skips) -> None:
    """Files under <site>/dicom/ that no row names: listed in the report, never loaded."""
    folder = site_dir / DICOM_DIRNAME
    if not folder.is_dir():
        return
    listed = {PurePosixPath((r.get("path") or "").strip()).as_posix() for r in records}
    line = len(records) + 2  # after every row of the table
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.name == "DICOMDIR":
            continue
        relative = path.relative_to(site_dir).as_posix()
        if relative not in listed:
            skips.add(line, relative, "no_label_row", f"no {LABELS_FILENAME} row names this file")


def _hash_files(candidates: list[_Candidate], skips: _Skips, progress: bool) -> list[_Candidate]:
    """Content digests (sha256); a file that vanished or cannot be read is skipped, and so is
    one over the DICOM size limit (refused on its size, never read)."""
    hashed = []
    limit = DEFAULT_LIMITS.max_file_bytes
    for c in tqdm(candidates, desc="hashing", unit="file", disable=not progress):
        try:
            size = c.path.stat().st_size
            if size > limit:
                error = too_large("the file", size, limit, " bytes")
                skips.add(c.line, c.row.path, error.reason, error.detail)
                continue
            hashed.append(_Candidate(c.line, c.row, c.path, file_digest(c.path)))
        except OSError as exc:
            skips.add(c.line, c.row.path, "missing_file", f"cannot read the file: {exc}")
    return hashed


def _build_entry(
    cache: SiteCache, key: str, candidates: list[_Candidate], config: DataConfig, progress: bool
) -> tuple[CacheEntry, int]:
    """Decode what no earlier entry of this site already holds; returns (entry, n_decoded)."""
    previous = cache.previous_files()
    scratch = cache.scratch(len(candidates))
    files: list[CachedFile | None] = [None] * len(candidates)
    todo: list[int] = []
    try:
        for i, c in enumerate(candidates):
            known = previous.get(c.digest)
            if known is None:
                todo.append(i)
                continue
            cached, images = known
            if cached.row is not None:
                scratch.write(i, convert_rows(images[cached.row], scratch.dtype))
                files[i] = CachedFile(c.digest, i, cached.sop_instance_uid)
            else:
                files[i] = cached
        del previous  # release the older entries' maps before they are deleted
        tasks = [(str(candidates[i].path), i) for i in todo]
        outcomes = decode_files(tasks, scratch, config.image_size, config.workers, progress)
    finally:
        scratch.close()
    for i, outcome in zip(todo, outcomes, strict=True):
        digest = candidates[i].digest
        if outcome.reason:
            files[i] = CachedFile(digest, reason=outcome.reason, detail=outcome.detail)
        else:
            files[i] = CachedFile(digest, i, outcome.sop_instance_uid)
    complete = [f for f in files if f is not None]
    return cache.commit(key, scratch, complete), len(todo)


def _assemble(
    site: str, candidates: list[_Candidate], entry: CacheEntry, skips: _Skips, report: DataReport
) -> SiteData:
    """Join decoded rows with their label rows; a file whose own UID differs is skipped."""
    rows: list[int] = []
    kept: list[_Candidate] = []
    for c, cached in zip(candidates, entry.files, strict=True):
        if cached.row is None:
            skips.add(c.line, c.row.path, cached.reason, cached.detail)
        elif cached.sop_instance_uid != c.row.sop_instance_uid:
            detail = (
                f"file's (0008,0018) is {cached.sop_instance_uid or 'missing'}, "
                f"{LABELS_FILENAME} says {c.row.sop_instance_uid}; fix the label row"
            )
            skips.add(c.line, c.row.path, "sop_instance_uid_mismatch", detail)
        else:
            rows.append(cached.row)
            kept.append(c)
    images = SiteImages(entry.images)  # the memory-mapped entry itself
    if rows != list(range(len(entry.images))):
        images = images.select(np.asarray(rows, dtype=np.int64))  # still no copy
    report.n_loaded = len(kept)
    labels = torch.tensor([c.row.labels for c in kept], dtype=torch.float32)
    return SiteData(
        site=site,
        images=images,
        labels=labels.reshape(len(kept), NUM_FINDINGS),
        patient_ids=tuple(c.row.patient_id for c in kept),
        sop_instance_uids=tuple(c.row.sop_instance_uid for c in kept),
        splits=tuple(c.row.split for c in kept),
        report=report,
    )


def _cached_or_decoded(
    cache: SiteCache,
    candidates: list[_Candidate],
    config: DataConfig,
    report: DataReport,
    progress: bool,
) -> CacheEntry | None:
    """The cache entry for these exact files and settings, decoding what is missing."""
    if not candidates:
        return None
    key = cache_key([c.digest for c in candidates], config.image_size, config.cache_dtype)
    entry = cache.load(key)
    report.cache_hit = entry is not None
    if entry is None:
        try:
            entry, report.n_decoded = _build_entry(cache, key, candidates, config, progress)
        except OSError as exc:
            raise SiteDataError(
                f"site folder {report.site}: cannot write the decode cache in {cache.folder} "
                f"({exc}); point DataConfig.cache_dir or $ECL_CACHE_DIR at a writable folder"
            ) from exc
    return entry


def load_site(site_dir: Path, config: DataConfig, *, progress: bool = False) -> SiteData:
    """Read labels.csv, decode each listed DICOM once (then from cache), report what was skipped.

    Bad rows and files never raise: they land in `report.skipped`. Raises SiteDataError only
    when the folder has no usable labels.csv, not a single usable image, or no writable cache.
    """
    site_dir = Path(site_dir)
    started = time.perf_counter()
    records = _read_records(site_dir)
    skips = _Skips()
    candidates = _hash_files(_select_rows(site_dir, records, skips), skips, progress)
    _unlisted_files(site_dir, records, skips)
    cache = SiteCache(
        config.cache_dir or default_cache_dir(), site_dir, config.image_size, config.cache_dtype
    )
    report = DataReport(site=site_dir.name, n_rows=len(records), n_loaded=0, skipped=[])
    entry = _cached_or_decoded(cache, candidates, config, report, progress)
    data = None if entry is None else _assemble(site_dir.name, candidates, entry, skips, report)
    report.skipped = skips.ordered()
    report.seconds = time.perf_counter() - started
    report_path = cache.folder / REPORT_FILENAME
    try:
        report.to_json(report_path)
    except OSError as exc:
        logger.warning("cannot write the data report %s (%s)", report_path, exc)
    if data is None or len(data) == 0:
        raise SiteDataError(
            f"site folder {site_dir}: no usable image among {len(records)} rows of "
            f"{LABELS_FILENAME} ({report.counts() or 'no rows'}); see {report_path} and fix "
            "the files or label rows it lists"
        )
    log = logger.warning if report.skipped else logger.info
    log("%s\n  data report: %s", report.summary(), report_path)
    return data
