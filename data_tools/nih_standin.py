"""`ecl-data synth --nih-layout`: a stand-in NIH release, one phantom PNG per label-table row."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_tools.nih_release import NihImage, NihReleaseError, limit_patients, read_table
from data_tools.phantom import PhantomConfig, render_phantom, sample_anatomy

logger = logging.getLogger(__name__)

GENERATOR = "ecl-data synth --nih-layout"
GENERATOR_VERSION = "1"
TABLE_NAME = "Data_Entry_2017_v2020.csv"  # what `ecl-data nih` looks for first
MANIFEST_NAME = "standin.json"
PARTIAL_SUFFIX = ".partial"
# The release ships 12 archives: images_001 holds the first 4,999 images, the next ten 10,000
# each, images_012 the rest (7,121 of 112,120). Table order, as NIH packed them.
FIRST_ARCHIVE, ARCHIVE_SIZE = 4999, 10000
_PNG_END = b"IEND\xaeB`\x82"  # the last 8 bytes of every complete PNG
_CHUNK = 32  # images per pool task


class StandinError(RuntimeError):
    """The stand-in release cannot be written as asked; the message says what to do."""


@dataclass(frozen=True)
class StandinConfig:
    """What the stand-in release is rendered from; equal settings write equal pixels."""

    labels: Path
    size: int = 256
    difficulty: float = 0.5
    seed: int = 0
    limit: int | None = None  # whole patients in table order, up to this many images
    workers: int = 2

    def __post_init__(self) -> None:
        PhantomConfig(size=self.size, difficulty=self.difficulty)  # validates both
        if self.seed < 0:
            raise StandinError(f"--seed {self.seed}: use a non-negative integer")
        if self.limit is not None and self.limit < 1:
            raise StandinError(f"--limit {self.limit}: use a positive image count")


@dataclass(frozen=True)
class PngJob:
    """One image: where it goes, its findings, and its two seeds (no shared state)."""

    path: str
    labels: tuple[int, ...]
    anatomy_seed: int  # per patient: follow-ups share the chest
    image_seed: int  # per image: lesions and noise
    size: int
    difficulty: float


def archive_folder(position: int) -> str:
    """Archive of the `position`-th table row (0-based): images_001/images .. images_NNN/images."""
    number = 1 if position < FIRST_ARCHIVE else 2 + (position - FIRST_ARCHIVE) // ARCHIVE_SIZE
    return f"images_{number:03d}/images"


def stable_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from the run seed and names (stable across runs, machines and workers)."""
    text = "\x1f".join((str(seed), *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def plan_jobs(images: Sequence[NihImage], out: Path, config: StandinConfig) -> list[PngJob]:
    """One job per table row, in table order."""
    return [
        PngJob(
            path=str(out / archive_folder(k) / image.image_index),
            labels=image.labels,
            anatomy_seed=stable_seed(config.seed, "anatomy", image.patient_id),
            image_seed=stable_seed(config.seed, "image", image.image_index),
            size=config.size,
            difficulty=config.difficulty,
        )
        for k, image in enumerate(images)
    ]


def png_complete(path: Path) -> bool:
    """True if `path` ends with the PNG IEND chunk (a cut-off file does not)."""
    try:
        with path.open("rb") as fh:
            fh.seek(-len(_PNG_END), os.SEEK_END)
            return fh.read() == _PNG_END
    except OSError:
        return False


def render_png(job: PngJob) -> None:
    """Render one phantom, write it as 8-bit grey PNG to a temp name, then rename into place."""
    phantom = PhantomConfig(size=job.size, difficulty=job.difficulty)
    anatomy = sample_anatomy(np.random.default_rng(job.anatomy_seed), phantom)
    image = render_phantom(job.labels, anatomy, np.random.default_rng(job.image_seed), phantom)
    pixels = np.rint(image * 255.0).astype(np.uint8)
    path = Path(job.path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    Image.fromarray(pixels, mode="L").save(partial, format="PNG")
    os.replace(partial, path)


def _render_chunk(jobs: Sequence[PngJob]) -> int:
    for job in jobs:
        render_png(job)
    return len(jobs)


def _chunks(jobs: Sequence[PngJob]) -> Iterator[Sequence[PngJob]]:
    for start in range(0, len(jobs), _CHUNK):
        yield jobs[start : start + _CHUNK]


def pending_jobs(jobs: Sequence[PngJob]) -> list[PngJob]:
    """Jobs whose PNG is missing or cut off; partial files of a killed run are removed."""
    folders = sorted({Path(job.path).parent for job in jobs})
    present: set[str] = set()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(PARTIAL_SUFFIX):
                    os.unlink(entry.path)  # a killed writer's temp file: never trusted
                elif entry.name.endswith(".png"):
                    present.add(entry.path)
    return [j for j in jobs if j.path not in present or not png_complete(Path(j.path))]


def run_jobs(jobs: Sequence[PngJob], total: int, workers: int, progress: bool) -> None:
    """Render `jobs` (the pending part of `total` images) with a progress bar over all."""
    bar = tqdm(
        total=total,
        initial=total - len(jobs),
        desc="stand-in PNG",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.05,
    )
    with bar:
        if workers <= 1 or len(jobs) <= _CHUNK:
            for chunk in _chunks(jobs):
                bar.update(_render_chunk(chunk))
            return
        # spawn: workers start clean (no inherited torch/OpenMP state); only jobs travel.
        # One BLAS thread per worker (smooth_noise's matmuls): the pool is the parallelism.
        context = get_context("spawn")
        with _single_threaded_children(), ProcessPoolExecutor(workers, mp_context=context) as pool:
            for done in pool.map(_render_chunk, _chunks(jobs)):
                bar.update(done)


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Children spawned inside this block read one-thread BLAS/OpenMP settings at import."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: saved[name] or "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def write_table(path: Path, source: Path, keep: set[str]) -> int:
    """Copy the source table's header and the rows of the kept images (temp file + rename)."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    written = 0
    with source.open(newline="", encoding="utf-8-sig") as src, partial.open("w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst, lineterminator="\n")
        writer.writerow(next(reader))
        for row in reader:
            if row and row[0].strip() in keep:
                writer.writerow(row)
                written += 1
    os.replace(partial, path)
    return written


def file_sha256(path: Path) -> str:
    """Hex digest of a file (identifies the source label table in the manifest)."""
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def _settings(config: StandinConfig, source_digest: str) -> dict:
    settings = asdict(config)
    settings.pop("workers")  # the output does not depend on it
    return {**settings, "labels": config.labels.name, "source_sha256": source_digest}


def _check_manifest(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to continue a stand-in made with other settings (pixels would differ)."""
    path = out / MANIFEST_NAME
    if not path.is_file() or overwrite:
        return
    try:
        previous = json.loads(path.read_text()).get("settings")
    except (OSError, ValueError) as exc:
        raise StandinError(f"{path} is unreadable ({exc}); delete it or use a new --out") from exc
    if previous != settings:
        changed = sorted(k for k in settings if (previous or {}).get(k) != settings[k])
        raise StandinError(
            f"{out} holds a stand-in made with other settings ({', '.join(changed)}); "
            "use a new --out, or pass --overwrite to render every image again"
        )


def _write_manifest(out: Path, payload: dict) -> None:
    path = out / MANIFEST_NAME
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def generate_standin(
    config: StandinConfig, out: Path, *, progress: bool = True, overwrite: bool = False
) -> dict:
    """Write OUT/Data_Entry_2017_v2020.csv and OUT/images_NNN/images/*.png (one phantom per
    row, with that row's findings; a patient's images share one anatomy). Resumable: complete
    PNGs are kept, cut-off or temp files are rewritten. Returns the manifest written."""
    try:
        table = read_table(config.labels)
    except NihReleaseError as exc:
        raise StandinError(str(exc)) from exc
    if table.bad_rows:
        logger.warning("%s: %d unusable rows left out", config.labels, table.bad_rows)
    images = limit_patients(list(table.images), config.limit)
    if not images:
        raise StandinError(f"{config.labels} has no usable row")
    settings = _settings(config, file_sha256(config.labels))
    _check_manifest(out, settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "settings": settings,
        "images": len(images),
        "patients": len({image.patient_id for image in images}),
        "bad_table_rows": table.bad_rows,
        "note": "synthetic phantoms with the real table's findings; not NIH pixels",
    }
    _write_manifest(out, {**manifest, "status": "rendering"})
    write_table(out / TABLE_NAME, config.labels, {image.image_index for image in images})
    jobs = plan_jobs(images, out, config)
    pending = pending_jobs(jobs)  # also clears a killed run's temp files
    todo = jobs if overwrite else pending
    run_jobs(todo, len(jobs), config.workers, progress)
    manifest.update(status="complete", rendered=len(todo), already_complete=len(jobs) - len(todo))
    _write_manifest(out, manifest)
    return manifest
