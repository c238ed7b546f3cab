"""Patient-level, seeded, non-homogeneous partition of a labelled image set into N hospitals.

Pure functions on arrays and ids: no file I/O, no global RNG (a numpy Generator is passed in).
The scheme is documented in docs/data.md (NIH partition section); in short:

1. Site sizes follow a fixed geometric profile (largest / smallest = `size_ratio`), applied
   as patient quotas.
2. `dirichlet`: every category (14 findings + "No Finding") draws a site preference vector
   from Dirichlet(alpha); a patient prefers sites by the mean preference over the
   categories of the union of its images' findings, and is drawn among the sites whose
   quota is not yet full.
3. `missing-findings`: every site lacks `absent_per_site` findings entirely, each finding
   stays at >= `min_sites_per_finding` sites (layout: seeded search for the one losing the
   fewest images). A patient goes only to a site where the fewest of its images carry a
   finding absent there; for almost all patients that is zero images, otherwise those
   images are dropped and counted (a patient with nothing left anywhere is dropped).
4. Inside every site, patients are split into train / val / local test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from data_tools.labels import FINDINGS, NUM_FINDINGS

SCHEMES = ("dirichlet", "missing-findings")
_ABSENT_SEARCH_TRIES = 200  # candidate absent-set layouts; the one dropping fewest images wins


class PartitionError(ValueError):
    """The partition settings cannot be satisfied (too few sites, bad fractions)."""


@dataclass(frozen=True)
class PartitionConfig:
    """How to split patients into hospitals; defaults are the documented NIH simulation."""

    sites: int = 8
    scheme: str = "dirichlet"
    alpha: float = 0.5
    size_ratio: float = 4.0
    val_fraction: float = 0.10
    local_test_fraction: float = 0.15
    common_test_fraction: float = 0.20  # only when the official lists are absent
    absent_per_site: int = 3
    min_sites_per_finding: int = 3

    def validate(self) -> None:
        """Raise PartitionError with what to change when the settings are unusable."""
        if self.sites < 1:
            raise PartitionError(f"--sites must be >= 1, got {self.sites}")
        if self.scheme not in SCHEMES:
            raise PartitionError(f"--scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.alpha <= 0:
            raise PartitionError(f"--alpha must be > 0, got {self.alpha}")
        if self.size_ratio < 1:
            raise PartitionError(f"size ratio must be >= 1, got {self.size_ratio}")
        fractions = (self.val_fraction, self.local_test_fraction, self.common_test_fraction)
        if min(fractions) < 0 or self.val_fraction + self.local_test_fraction >= 1:
            raise PartitionError(f"split fractions must be >= 0 and leave a train set: {fractions}")
        if self.scheme == "missing-findings":
            spare = self.sites - self.min_sites_per_finding
            if spare < 1 or self.absent_per_site < 1:
                raise PartitionError(
                    f"missing-findings needs --sites >= {self.min_sites_per_finding + 1} and "
                    f"--absent-per-site >= 1 (got {self.sites}, {self.absent_per_site})"
                )
            if self.sites * self.absent_per_site > NUM_FINDINGS * spare:
                raise PartitionError(
                    f"{self.sites} sites x {self.absent_per_site} absent findings cannot keep "
                    f"every finding at >= {self.min_sites_per_finding} sites; lower "
                    "--absent-per-site"
                )


@dataclass(frozen=True)
class SiteAssignment:
    """Result of assigning train/val patients to sites."""

    site_of_patient: dict[str, int]  # patient -> site number (0-based); unplaced: absent
    absent_findings: tuple[tuple[str, ...], ...]  # per site; empty for dirichlet
    dropped_images: tuple[str, ...]  # missing-findings only: images a site cannot hold
    quotas: tuple[int, ...]  # target patients per site


@dataclass(frozen=True)
class HoldoutSplit:
    """Patients for the hospitals (train/val) and for the common held-out test set."""

    train_val_patients: tuple[str, ...]
    test_patients: tuple[str, ...]
    excluded_images: frozenset[str]  # in no list, or a conflict patient's train_val images
    conflict_patients: tuple[str, ...]  # had images in both official lists


def split_by_official_lists(
    images_by_patient: Mapping[str, Sequence[str]],
    train_val: frozenset[str] | None,
    test: frozenset[str] | None,
) -> HoldoutSplit:
    """Patient-level split that keeps the official test list intact.

    A missing list is the complement of the other. A patient with images in both lists
    (never in the real release) goes to the common test set and its train_val images are
    excluded, so no patient is on both sides. Images in neither list are excluded.
    """
    if train_val is None and test is None:
        raise PartitionError("split_by_official_lists needs at least one official list")
    train_val_patients, test_patients, conflicts, excluded = [], [], [], set()
    for patient in sorted(images_by_patient):
        names = images_by_patient[patient]
        in_test = {n for n in names if (n in test if test is not None else n not in train_val)}
        in_tv = {n for n in names if (n in train_val if train_val is not None else n not in test)}
        in_tv -= in_test  # an image in both lists counts as a test image
        excluded.update(n for n in names if n not in in_test and n not in in_tv)
        if in_test and in_tv:
            conflicts.append(patient)
            excluded.update(in_tv)
        if in_test:
            test_patients.append(patient)
        elif in_tv:
            train_val_patients.append(patient)
    return HoldoutSplit(
        tuple(train_val_patients), tuple(test_patients), frozenset(excluded), tuple(conflicts)
    )


def site_names(sites: int) -> tuple[str, ...]:
    """Hospital folder names N1..Nn."""
    return tuple(f"N{k + 1}" for k in range(sites))


def size_profile(sites: int, size_ratio: float) -> np.ndarray:
    """Geometric site-size fractions, largest first, largest / smallest = size_ratio."""
    if sites == 1:
        return np.ones(1)
    weights = size_ratio ** (-np.arange(sites) / (sites - 1))
    return weights / weights.sum()


def quotas(total: int, fractions: np.ndarray) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `fractions` (largest remainder)."""
    exact = np.asarray(fractions, dtype=float) * total
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


@dataclass(frozen=True)
class ImageTable:
    """Images grouped by patient, as arrays: the input of the site assignment."""

    patients: tuple[str, ...]  # sorted
    image_ids: tuple[str, ...]  # grouped by patient, sorted inside a patient
    labels: np.ndarray  # [images, 14] bool, FINDINGS order
    starts: np.ndarray  # [patients] index of each patient's first image

    @classmethod
    def build(cls, patient_images: Mapping[str, Mapping[str, Sequence[int]]]) -> ImageTable:
        """From patient -> {image id -> labels}; sorted, so input order never matters."""
        patients = tuple(p for p in sorted(patient_images) if patient_images[p])
        image_ids, rows, starts = [], [], []
        for patient in patients:
            starts.append(len(image_ids))
            for image_id in sorted(patient_images[patient]):
                image_ids.append(image_id)
                rows.append(patient_images[patient][image_id])
        labels = np.array(rows, dtype=bool).reshape(len(rows), NUM_FINDINGS)
        return cls(patients, tuple(image_ids), labels, np.array(starts, dtype=int))

    def patient_union(self) -> np.ndarray:
        """[patients, 14]: a finding is set if any of the patient's images has it."""
        if not self.patients:
            return np.zeros((0, NUM_FINDINGS), dtype=bool)
        return np.logical_or.reduceat(self.labels, self.starts, axis=0)

    def conflict_counts(self, absent: np.ndarray) -> np.ndarray:
        """[patients, sites]: how many of the patient's images carry a finding absent there."""
        hits = (self.labels.astype(np.float32) @ absent.T.astype(np.float32)) > 0
        return np.add.reduceat(hits.astype(int), self.starts, axis=0)

    def image_counts(self) -> np.ndarray:
        return np.diff(np.append(self.starts, len(self.image_ids)))


def seeded_holdout(
    patients: Sequence[str], fraction: float, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """Seeded patient-level split -> (kept, held_out), held_out ~ fraction of patients."""
    ordered = sorted(patients)
    permuted = [ordered[k] for k in rng.permutation(len(ordered))]
    count = int(round(fraction * len(ordered)))
    return sorted(permuted[count:]), sorted(permuted[:count])


def dirichlet_preferences(sites: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """[15, sites] site preferences: one Dirichlet(alpha) draw per finding + 'No Finding'."""
    return rng.dirichlet(np.full(sites, alpha), size=NUM_FINDINGS + 1)


def patient_preferences(labels: np.ndarray, preferences: np.ndarray) -> np.ndarray:
    """[P, sites]: mean preference over each patient's findings ('No Finding' if none)."""
    categories = np.concatenate([labels, ~labels.any(axis=1, keepdims=True)], axis=1)
    return (categories @ preferences) / categories.sum(axis=1, keepdims=True)


def draw_with_quotas(
    weights: np.ndarray, order: np.ndarray, quota: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Assign rows of `weights` [P, sites] in `order`, each drawn among sites whose quota is
    not full (or, when all its allowed sites are full, among its allowed sites).

    A zero weight means "never this site". Returns the site per row (-1 if none allowed).
    """
    remaining = quota.astype(float).copy()
    site = np.full(len(weights), -1)
    for row in order:
        allowed = weights[row] > 0
        if not allowed.any():
            continue
        open_sites = weights[row] * (remaining > 0)
        candidate = open_sites if open_sites.sum() > 0 else weights[row] * allowed
        site[row] = rng.choice(len(candidate), p=candidate / candidate.sum())
        remaining[site[row]] -= 1
    return site


def images_lost(table: ImageTable, absent: np.ndarray) -> int:
    """Images dropped when every patient goes to a site where the fewest of its images carry
    an absent finding (0 for most patients)."""
    if not table.patients:
        return 0
    return int(table.conflict_counts(absent).min(axis=1).sum())


def random_absent_layout(config: PartitionConfig, rng: np.random.Generator) -> np.ndarray:
    """[sites, 14] boolean: `absent_per_site` findings per site, each absent at most
    sites - min_sites_per_finding times; least-used findings are taken first (random ties)."""
    absent = np.zeros((config.sites, NUM_FINDINGS), dtype=bool)
    budget = config.sites - config.min_sites_per_finding
    for site in range(config.sites):
        for _ in range(config.absent_per_site):
            used = absent.sum(axis=0)
            free = (~absent[site]) & (used < budget)
            tie_break = rng.random(NUM_FINDINGS)
            score = np.where(free, used + tie_break, np.inf)
            absent[site, int(np.argmin(score))] = True
    return absent


def choose_absent_findings(
    table: ImageTable, config: PartitionConfig, rng: np.random.Generator
) -> np.ndarray:
    """Seeded search over valid absent layouts; keep the one that loses the fewest images."""
    best, best_loss = None, None
    for _ in range(_ABSENT_SEARCH_TRIES):
        layout = random_absent_layout(config, rng)
        loss = images_lost(table, layout)
        if best_loss is None or loss < best_loss:
            best, best_loss = layout, loss
    return best


def _missing_findings_weights(
    table: ImageTable, absent: np.ndarray, config: PartitionConfig
) -> np.ndarray:
    """[patients, sites] weights: size profile on the sites losing the fewest images.

    A patient that would lose all its images everywhere gets no allowed site (dropped).
    """
    conflicts = table.conflict_counts(absent)
    fewest = conflicts.min(axis=1, keepdims=True)
    allowed = (conflicts == fewest) & (fewest < table.image_counts()[:, None])
    return allowed * size_profile(config.sites, config.size_ratio)


def assign_sites(
    table: ImageTable, config: PartitionConfig, rng: np.random.Generator
) -> SiteAssignment:
    """Assign every train/val patient of `table` to a site by `config.scheme`.

    dirichlet: drawn by the mean Dirichlet preference of the patient's findings (union over
    its images). missing-findings: placed only where it loses the fewest images to the
    site's absent findings (none for almost all patients); those images are dropped.
    """
    config.validate()
    target = quotas(len(table.patients), size_profile(config.sites, config.size_ratio))
    absent = np.zeros((config.sites, NUM_FINDINGS), dtype=bool)
    if config.scheme == "dirichlet":
        preferences = dirichlet_preferences(config.sites, config.alpha, rng)
        weights = patient_preferences(table.patient_union(), preferences)
        order = rng.permutation(len(table.patients))
    else:
        absent = choose_absent_findings(table, config, rng)
        weights = _missing_findings_weights(table, absent, config)
        # Most constrained patients first, so the flexible ones fill what is left.
        order = np.lexsort((rng.random(len(table.patients)), (weights > 0).sum(axis=1)))
    site = draw_with_quotas(weights, order, target, rng)
    return SiteAssignment(
        site_of_patient={p: int(s) for p, s in zip(table.patients, site, strict=True) if s >= 0},
        absent_findings=tuple(
            tuple(f for f, gone in zip(FINDINGS, row, strict=True) if gone) for row in absent
        ),
        dropped_images=_dropped_images(table, site, absent),
        quotas=tuple(int(q) for q in target),
    )


def _dropped_images(table: ImageTable, site: np.ndarray, absent: np.ndarray) -> tuple[str, ...]:
    """Ids of images left out: all images of unplaced patients, and images carrying a
    finding absent at their patient's site."""
    owner = np.repeat(np.arange(len(table.patients)), table.image_counts())
    image_site = site[owner] if len(owner) else np.zeros(0, dtype=int)
    unplaced = image_site < 0
    hits = (
        (table.labels & absent[np.maximum(image_site, 0)]).any(axis=1) if len(owner) else unplaced
    )
    return tuple(
        sorted(i for i, gone in zip(table.image_ids, unplaced | hits, strict=True) if gone)
    )


def split_site_patients(
    patients: Sequence[str], config: PartitionConfig, rng: np.random.Generator
) -> dict[str, str]:
    """One site's patients -> 'train' | 'val' | 'test' (local test), patient-level, seeded.

    A site with >= 3 patients always gets at least one val and one local-test patient.
    """
    ordered = sorted(patients)
    permuted = [ordered[k] for k in rng.permutation(len(ordered))]
    n_test = int(round(config.local_test_fraction * len(ordered)))
    n_val = int(round(config.val_fraction * len(ordered)))
    if len(ordered) >= 3:
        n_test = max(n_test, 1 if config.local_test_fraction > 0 else 0)
        n_val = max(n_val, 1 if config.val_fraction > 0 else 0)
    split = {p: "test" for p in permuted[:n_test]}
    split.update({p: "val" for p in permuted[n_test : n_test + n_val]})
    split.update({p: "train" for p in permuted[n_test + n_val :]})
    return split
