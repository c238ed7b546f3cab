"""`ecl-data synth`: plan hospitals, sample patients and labels, render and write phantom DICOM."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_tools.dicom_write import (
    J2K_MIN_SIZE,
    SITE_PROFILES,
    AcquisitionProfile,
    StudyMeta,
    derive_uid,
    write_dicom,
)
from data_tools.labels import (
    COMMON_TEST_SITE,
    DICOM_DIRNAME,
    FINDINGS,
    LABELS_FILENAME,
    MANIFEST_FILENAME,
    SPLITS,
    LabelRow,
    count_table,
    write_label_table,
)
from data_tools.phantom import PhantomConfig, render_phantom, sample_anatomy
from data_tools.prevalence import (
    LabelModel,
    PrevalenceConfig,
    SiteMix,
    ensure_positives,
    nih_label_model,
    plan_site_mixes,
    sample_labels,
    site_label_model,
)
from data_tools.report import collect_counts, write_counts_csv

logger = logging.getLogger(__name__)

GENERATOR = "ecl-data synth"
GENERATOR_VERSION = "1"
REFERENCE_MATRIX = 128  # SITE_PROFILES matrices are given for --size 128 and scale with it


class SynthError(RuntimeError):
    """The synthetic data set cannot be generated as asked."""


@dataclass(frozen=True)
class SynthConfig:
    """What `ecl-data synth` generates; see docs/data.md for every field's effect."""

    sites: int = 8
    per_site: int = 500  # mean images per hospital; sizes differ around it
    test_size: int = 1000  # images in the common held-out test set
    size: int = 128  # base matrix; each site scales it by its profile's matrix / 128
    difficulty: float = 0.5  # 0 easy .. 1 hard (PhantomConfig)
    seed: int = 0
    missing_per_site: int = 5  # findings absent at each hospital
    min_sites_present: int = 3  # every finding is present at this many hospitals at least
    follow_up_fraction: float = 0.15  # share of patients with a second image
    size_spread: float = 0.4  # sd of log site size
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train / val / test, by patient
    min_positives: int = 1  # every finding a set may have appears at least this often in it
    workers: int = 0  # processes writing images; 0 = one per CPU core
    prevalence: PrevalenceConfig = field(default_factory=PrevalenceConfig)

    def __post_init__(self) -> None:
        if self.sites < 1 or self.per_site < 1 or self.test_size < 1:
            raise SynthError("--sites, --per-site and --test-size must be >= 1")
        if self.seed < 0:
            raise SynthError(f"--seed {self.seed}: use a non-negative integer")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise SynthError(f"split fractions {self.split_fractions} must sum to 1")
        PhantomConfig(size=self.size, difficulty=self.difficulty)  # validates both


@dataclass(frozen=True)
class SitePlan:
    """One output folder: a hospital (one profile) or the common test set (all profiles)."""

    name: str
    index: int
    n_images: int
    profiles: tuple[AcquisitionProfile, ...]
    mix: SiteMix | None  # None: the NIH mix with every finding (common test)


@dataclass(frozen=True)
class ImageJob:
    """Everything one worker needs to render and write one image (no shared state)."""

    path: Path
    labels: tuple[int, ...]
    anatomy_seed: tuple[int, ...]
    image_seed: tuple[int, ...]
    profile: AcquisitionProfile
    meta: StudyMeta
    difficulty: float


def site_profile(base: AcquisitionProfile, name: str, size: int) -> AcquisitionProfile:
    """`base` renamed and scaled to the base matrix `size` (field of view kept; at least 32 px,
    the JPEG 2000 encoder's minimum)."""
    matrix = max(J2K_MIN_SIZE, 2 * round(base.matrix * size / REFERENCE_MATRIX / 2))
    spacing = round(base.pixel_spacing_mm * base.matrix / matrix, 4)
    return replace(base, name=name, matrix=matrix, pixel_spacing_mm=spacing)


def plan_sites(config: SynthConfig) -> list[SitePlan]:
    """Hospital sizes (log-normal around per_site), disease mixes, profiles; then the test set."""
    rng = np.random.default_rng([config.seed, 0])
    mixes = plan_site_mixes(
        config.sites, config.missing_per_site, config.prevalence, rng, config.min_sites_present
    )
    weights = np.exp(rng.normal(0.0, config.size_spread, config.sites))
    sizes = np.maximum(3, np.round(weights / weights.sum() * config.sites * config.per_site))
    plans = []
    for i in range(config.sites):
        name = f"N{i + 1}"
        profile = site_profile(SITE_PROFILES[i % len(SITE_PROFILES)], name, config.size)
        plans.append(SitePlan(name, i, int(sizes[i]), (profile,), mixes[i]))
    shared = tuple(p.profiles[0] for p in plans)
    plans.append(SitePlan(COMMON_TEST_SITE, config.sites, config.test_size, shared, None))
    return plans


def _patient_splits(
    n_patients: int, fractions: Sequence[float], rng: np.random.Generator
) -> list[str]:
    """Split name per patient (patient-level), every split non-empty when n_patients >= 3."""
    counts = np.round(np.asarray(fractions) * n_patients).astype(int)
    if n_patients >= len(SPLITS):
        counts = np.maximum(counts, 1)
    counts[0] = n_patients - counts[1:].sum()
    names = np.repeat(np.array(SPLITS), counts)
    return list(names[rng.permutation(n_patients)])


def _label_model(plan: SitePlan, config: SynthConfig) -> LabelModel:
    if plan.mix is None:
        return nih_label_model(config.prevalence)
    return site_label_model(plan.mix, config.prevalence)


def _patients_and_labels(
    plan: SitePlan, config: SynthConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Owner patient of each image (sorted; ~15 % of patients get a follow-up), the image
    labels (half of the follow-ups keep their first image's findings) and each patient's split."""
    n_patients = min(plan.n_images, max(1, round(plan.n_images / (1 + config.follow_up_fraction))))
    extra = rng.choice(n_patients, plan.n_images - n_patients, replace=False)
    owners = np.sort(np.concatenate([np.arange(n_patients), extra]))
    model = _label_model(plan, config)
    labels = sample_labels(model, plan.n_images, rng)
    first_image = np.searchsorted(owners, owners)
    same = rng.random(plan.n_images) < 0.5
    labels = np.where(same[:, None], labels[first_image], labels)
    labels = ensure_positives(labels, model, config.min_positives, rng)
    if plan.mix is None:
        return owners, labels, ["test"] * n_patients
    return owners, labels, _patient_splits(n_patients, config.split_fractions, rng)


def plan_images(plan: SitePlan, config: SynthConfig, out: Path) -> list[tuple[ImageJob, str]]:
    """A site's images with their split: patients, labels, demographics, UIDs, seeds."""
    rng = np.random.default_rng([config.seed, 1, plan.index])
    owners, labels, split = _patients_and_labels(plan, config, rng)
    n_patients = len(split)
    ages = np.clip(np.rint(rng.normal(47.0, 17.0, n_patients)), 1, 95).astype(int)  # NIH-like
    sexes = np.where(rng.random(n_patients) < 0.565, "M", "F")
    first_day = rng.integers(0, 3 * 365, n_patients)
    prefix = "CT" if plan.mix is None else plan.name
    jobs, visits = [], np.zeros(n_patients, dtype=int)
    for image_index, patient in enumerate(owners):
        visit = int(visits[patient])
        visits[patient] += 1
        profile = plan.profiles[image_index % len(plan.profiles)]
        patient_id = f"{prefix}-{patient:05d}"
        key = (str(config.seed), plan.name, patient_id, str(visit))
        day = date(2018, 1, 1) + timedelta(days=int(first_day[patient]) + 200 * visit)
        meta = StudyMeta(
            patient_id=patient_id,
            sop_instance_uid=derive_uid("synth", "sop", *key),
            study_instance_uid=derive_uid("synth", "study", *key),
            series_instance_uid=derive_uid("synth", "series", *key),
            patient_age=int(ages[patient]) + visit,
            patient_sex=str(sexes[patient]),
            view_position="AP" if rng.random() < profile.ap_fraction else "PA",
            study_date=day.strftime("%Y%m%d"),
        )
        relative = f"{DICOM_DIRNAME}/{patient_id}/{patient_id}_{visit:03d}.dcm"
        job = ImageJob(
            path=out / plan.name / relative,
            labels=tuple(int(v) for v in labels[image_index]),
            anatomy_seed=(config.seed, 2, plan.index, int(patient)),
            image_seed=(config.seed, 3, plan.index, image_index),
            profile=profile,
            meta=meta,
            difficulty=config.difficulty,
        )
        jobs.append((job, split[patient]))
    return jobs


def render_and_write(job: ImageJob) -> None:
    """Render one phantom and write it as DICOM (runs in a worker process)."""
    phantom = PhantomConfig(size=job.profile.matrix, difficulty=job.difficulty)
    anatomy = sample_anatomy(np.random.default_rng(job.anatomy_seed), phantom)
    image = render_phantom(
        np.asarray(job.labels),
        anatomy,
        np.random.default_rng(job.image_seed),
        phantom,
        job.profile.noise,
    )
    write_dicom(job.path, image, job.profile, job.meta)


def _write_chunk(jobs: Sequence[ImageJob]) -> int:
    for job in jobs:
        render_and_write(job)
    return len(jobs)


def _chunks(jobs: Sequence[ImageJob], size: int) -> Iterator[Sequence[ImageJob]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def run_jobs(jobs: Sequence[ImageJob], workers: int, progress: bool) -> None:
    """Render and write all images; a process pool when workers > 1 (output does not depend on
    the number of workers: every image has its own seeds)."""
    bar = tqdm(
        total=len(jobs), desc="phantoms", unit="img", disable=not progress, dynamic_ncols=True
    )
    with bar:
        if workers <= 1:
            for chunk in _chunks(jobs, 64):
                bar.update(_write_chunk(chunk))
            return
        chunk_size = max(8, min(64, len(jobs) // (4 * workers) or 8))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for done in pool.map(_write_chunk, _chunks(jobs, chunk_size)):
                bar.update(done)


def _manifest(plan: SitePlan, config: SynthConfig, rows: Sequence[LabelRow]) -> dict[str, object]:
    """manifest.json content: deterministic (no clock), so equal seeds give equal bytes."""
    counts = {split: count_table([r for r in rows if r.split == split]) for split in SPLITS}
    counts["all"] = count_table(rows)
    profiles = [asdict(p) for p in plan.profiles]
    return {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "site": plan.name,
        "seed": config.seed,
        "difficulty": config.difficulty,
        "base_size": config.size,
        "profile": profiles[0] if len(profiles) == 1 else "mixed",
        "profiles": profiles,
        "absent_findings": list(plan.mix.absent) if plan.mix else [],
        "target_prevalence": dict(zip(FINDINGS, plan.mix.targets, strict=True))
        if plan.mix
        else "nih",
        "images": len(rows),
        "patients": len({r.patient_id for r in rows}),
        "counts": counts,
    }


def _prepare_output(out: Path, plans: Sequence[SitePlan], overwrite: bool) -> None:
    """Refuse to mix with an existing data set unless `overwrite` (then remove our folders only)."""
    existing = [p.name for p in plans if (out / p.name).exists()]
    if existing and not overwrite:
        raise SynthError(
            f"{out} already holds site folders {existing}; "
            "choose an empty --out or pass --overwrite"
        )
    for name in existing:
        shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)


def generate_dataset(
    config: SynthConfig, out: Path, *, progress: bool = False, overwrite: bool = False
) -> dict[str, dict[str, int]]:
    """Write the synthetic hospitals and the common test set under `out`; returns the
    per-site count table (also written to out/counts.csv)."""
    started = time.perf_counter()
    plans = plan_sites(config)
    _prepare_output(out, plans, overwrite)
    planned = {plan.name: plan_images(plan, config, out) for plan in plans}
    jobs = [job for site_jobs in planned.values() for job, _ in site_jobs]
    workers = config.workers or os.cpu_count() or 1
    run_jobs(jobs, min(workers, max(1, len(jobs) // 8)), progress)
    for plan in plans:
        rows = [
            LabelRow(
                path=job.path.relative_to(out / plan.name).as_posix(),
                sop_instance_uid=job.meta.sop_instance_uid,
                patient_id=job.meta.patient_id,
                split=split,
                labels=job.labels,
            )
            for job, split in planned[plan.name]
        ]
        write_label_table(out / plan.name / LABELS_FILENAME, rows)
        manifest = json.dumps(_manifest(plan, config, rows), indent=2, sort_keys=True)
        (out / plan.name / MANIFEST_FILENAME).write_text(manifest + "\n")
    counts = collect_counts(out)
    write_counts_csv(out / "counts.csv", counts)
    logger.info("wrote %d images in %.1f s to %s", len(jobs), time.perf_counter() - started, out)
    return counts
