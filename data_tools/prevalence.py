"""Multi-label sampling with NIH-like prevalence and co-occurrence, and per-site disease mixes."""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.labels import FINDINGS, NUM_FINDINGS, findings_from_nih

# --- Statistics of the NIH label table --------------------------------------------------------
# Derived offline from Data_Entry_2017_v2020.csv (the 2020 NIH table, 112,120 images, 30,805
# patients) with `derive_nih_statistics(path, min_count=100)` below; image-level counts.
NIH_IMAGES = 112_120
NIH_NO_FINDING = 60_361
NIH_POSITIVES: dict[str, int] = {
    "Atelectasis": 11_559,
    "Cardiomegaly": 2_776,
    "Effusion": 13_317,
    "Infiltration": 19_894,
    "Mass": 5_782,
    "Nodule": 6_331,
    "Pneumonia": 1_431,
    "Pneumothorax": 5_302,
    "Consolidation": 4_667,
    "Edema": 2_303,
    "Emphysema": 2_516,
    "Fibrosis": 1_686,
    "Pleural_Thickening": 3_385,
    "Hernia": 227,
}
# Every 'Finding Labels' combination seen on at least 100 NIH images (59 combinations, 94.4 % of
# images, every single finding included; names sorted, as NIH writes a few in other orders).
# The sampler draws whole combinations, so co-occurrence follows NIH; raking (`rake_weights`)
# then restores the exact NIH marginals.
NIH_COMBINATIONS: tuple[tuple[str, int], ...] = (
    ("No Finding", 60361),
    ("Infiltration", 9547),
    ("Atelectasis", 4215),
    ("Effusion", 3955),
    ("Nodule", 2705),
    ("Pneumothorax", 2194),
    ("Mass", 2139),
    ("Effusion|Infiltration", 1604),
    ("Atelectasis|Infiltration", 1350),
    ("Consolidation", 1310),
    ("Atelectasis|Effusion", 1167),
    ("Pleural_Thickening", 1126),
    ("Cardiomegaly", 1093),
    ("Emphysema", 892),
    ("Infiltration|Nodule", 829),
    ("Atelectasis|Effusion|Infiltration", 739),
    ("Fibrosis", 727),
    ("Edema", 628),
    ("Cardiomegaly|Effusion", 484),
    ("Consolidation|Infiltration", 441),
    ("Infiltration|Mass", 420),
    ("Effusion|Pneumothorax", 403),
    ("Effusion|Mass", 402),
    ("Atelectasis|Consolidation", 398),
    ("Mass|Nodule", 396),
    ("Edema|Infiltration", 392),
    ("Infiltration|Pneumothorax", 347),
    ("Consolidation|Effusion", 337),
    ("Emphysema|Pneumothorax", 337),
    ("Pneumonia", 322),
    ("Effusion|Pleural_Thickening", 251),
    ("Effusion|Nodule", 250),
    ("Atelectasis|Pneumothorax", 241),
    ("Infiltration|Pleural_Thickening", 210),
    ("Atelectasis|Nodule", 201),
    ("Cardiomegaly|Infiltration", 201),
    ("Atelectasis|Consolidation|Effusion", 200),
    ("Infiltration|Pneumonia", 199),
    ("Edema|Effusion", 189),
    ("Fibrosis|Infiltration", 185),
    ("Mass|Pneumothorax", 179),
    ("Atelectasis|Mass", 178),
    ("Consolidation|Mass", 151),
    ("Nodule|Pleural_Thickening", 141),
    ("Edema|Infiltration|Pneumonia", 138),
    ("Consolidation|Effusion|Infiltration", 134),
    ("Mass|Pleural_Thickening", 132),
    ("Nodule|Pneumothorax", 130),
    ("Consolidation|Nodule", 128),
    ("Edema|Effusion|Infiltration", 127),
    ("Emphysema|Infiltration", 126),
    ("Cardiomegaly|Effusion|Infiltration", 120),
    ("Atelectasis|Emphysema", 117),
    ("Atelectasis|Pleural_Thickening", 117),
    ("Hernia", 110),
    ("Atelectasis|Pneumonia", 108),
    ("Effusion|Infiltration|Nodule", 106),
    ("Atelectasis|Consolidation|Infiltration", 104),
    ("Atelectasis|Fibrosis", 104),
)


@dataclass(frozen=True)
class PrevalenceConfig:
    """How site label distributions are derived from the NIH statistics.

    `floor`: minimum prevalence of every finding a site has (NIH Hernia is 0.2 %, Pneumonia
    1.3 %: at 3 % a 1000-image test set still holds ~30 positives, enough for an AUC).
    `mix_spread`: standard deviation of the log of each site's per-finding prevalence factor
    (0 = every site has the NIH mix). `no_finding`: target fraction of images with no finding.
    """

    floor: float = 0.03
    ceiling: float = 0.5
    mix_spread: float = 0.5
    no_finding: float = NIH_NO_FINDING / NIH_IMAGES


@dataclass(frozen=True)
class LabelModel:
    """A categorical distribution over label combinations: rows of `combinations` (0/1, FINDINGS
    order) drawn with probability `weights` (sums to 1)."""

    combinations: np.ndarray  # [C, NUM_FINDINGS] uint8
    weights: np.ndarray  # [C] float64

    def prevalence(self) -> np.ndarray:
        """Expected fraction of positives per finding."""
        return self.weights @ self.combinations

    def no_finding(self) -> float:
        """Expected fraction of images without any finding."""
        return float(self.weights[self.combinations.sum(axis=1) == 0].sum())


@dataclass(frozen=True)
class SiteMix:
    """One site's disease mix: absent findings (never sampled there) and target prevalences."""

    absent: tuple[str, ...]
    targets: tuple[float, ...]  # per finding, FINDINGS order; 0.0 for absent ones


def nih_prevalence() -> np.ndarray:
    """NIH image-level prevalence per finding, FINDINGS order."""
    return np.array([NIH_POSITIVES[f] for f in FINDINGS], dtype=np.float64) / NIH_IMAGES


def derive_nih_statistics(csv_path: Path, min_count: int = 100) -> dict[str, object]:
    """Recompute the constants above from an NIH Data_Entry csv (offline; tests use a tiny csv).

    Returns {"images", "no_finding", "positives": {finding: n}, "combinations": [(labels, n)]}
    with combinations seen on at least `min_count` images, most frequent first.
    """
    combos: Counter[str] = Counter()
    with csv_path.open(newline="") as fh:
        for record in csv.DictReader(fh):
            combos["|".join(sorted(record["Finding Labels"].strip().split("|")))] += 1
    positives = dict.fromkeys(FINDINGS, 0)
    for labels, count in combos.items():
        for finding, flag in zip(FINDINGS, findings_from_nih(labels), strict=True):
            positives[finding] += flag * count
    kept = sorted(
        ((labels, n) for labels, n in combos.items() if n >= min_count), key=lambda x: (-x[1], x[0])
    )
    return {
        "images": sum(combos.values()),
        "no_finding": combos.get("No Finding", 0),
        "positives": positives,
        "combinations": kept,
    }


def rake_weights(
    combinations: np.ndarray,
    weights: np.ndarray,
    targets: np.ndarray,
    no_finding: float | None,
    iterations: int = 200,
    tolerance: float = 1e-7,
) -> np.ndarray:
    """Iterative proportional fitting: rescale combination weights until each finding's
    prevalence equals `targets[k]` and the no-finding fraction equals `no_finding`.

    Each sweep scales, for one margin at a time, the weights of combinations with the finding by
    t/p and the others by (1-t)/(1-p). Joint structure (co-occurrence odds) is kept as far as the
    margins allow. Findings with target 0 must have no combination carrying them; `no_finding`
    None leaves that margin free.
    """
    w = weights / weights.sum()
    margins = np.concatenate([combinations.astype(bool), (combinations.sum(1) == 0)[:, None]], 1)
    goals = np.concatenate([targets, [no_finding or 0.0]])
    active = goals > 0
    for _ in range(iterations):
        worst = 0.0
        for k in np.flatnonzero(active):
            has = margins[:, k]
            p = float(w[has].sum())
            if not 0.0 < p < 1.0:
                name = FINDINGS[k] if k < NUM_FINDINGS else "No Finding"
                raise ValueError(f"{name}: no weight left on its combinations (p={p:.3g})")
            worst = max(worst, abs(p - goals[k]))
            w = np.where(has, w * goals[k] / p, w * (1.0 - goals[k]) / (1.0 - p))
        if worst < tolerance:
            break
    return w / w.sum()


def nih_label_model(config: PrevalenceConfig = PrevalenceConfig()) -> LabelModel:
    """The NIH combination table raked to NIH marginals, with `config.floor` applied."""
    return site_label_model(
        SiteMix(absent=(), targets=tuple(floored_targets(nih_prevalence(), config))), config
    )


def floored_targets(prevalence: np.ndarray, config: PrevalenceConfig) -> np.ndarray:
    """Clip target prevalences into [floor, ceiling]."""
    return np.clip(prevalence, config.floor, config.ceiling)


def site_label_model(mix: SiteMix, config: PrevalenceConfig) -> LabelModel:
    """The label distribution of one site: NIH combinations without the absent findings, raked to
    the site's targets and to `config.no_finding` (raised where the targets are too small)."""
    combos = np.array([findings_from_nih(s) for s, _ in NIH_COMBINATIONS], dtype=np.uint8)
    counts = np.array([n for _, n in NIH_COMBINATIONS], dtype=np.float64)
    absent_idx = [FINDINGS.index(f) for f in mix.absent]
    keep = combos[:, absent_idx].sum(axis=1) == 0 if absent_idx else np.ones(len(combos), bool)
    combos, counts = combos[keep], counts[keep]
    targets = np.asarray(mix.targets)
    try:
        weights = rake_weights(combos, counts, targets, config.no_finding)
        feasible = np.abs(weights @ combos - targets).max() < 1e-4
    except ValueError:  # the fit drove some margin to zero
        feasible = False
    if not feasible:
        # A site lacking the common findings cannot keep NIH's no-finding fraction with the
        # few multi-finding combinations left: the finding targets win and the no-finding
        # fraction is left free (it rises).
        weights = rake_weights(combos, counts, targets, None)
    return LabelModel(combinations=combos, weights=weights)


def assign_absent_findings(
    n_sites: int, missing_per_site: int, rng: np.random.Generator, min_sites_present: int = 3
) -> list[tuple[str, ...]]:
    """Which findings each site lacks: `missing_per_site` per site, spread evenly over findings
    (a shuffled cyclic assignment), so each finding is absent at ceil or floor of
    n_sites * missing_per_site / 14 sites. Raises if that leaves a finding at fewer than
    `min_sites_present` sites."""
    if not 0 <= missing_per_site < NUM_FINDINGS:
        raise ValueError(f"missing_per_site={missing_per_site} must be in [0, {NUM_FINDINGS - 1}]")
    most_absent = math.ceil(n_sites * missing_per_site / NUM_FINDINGS)
    if n_sites - most_absent < min_sites_present:
        raise ValueError(
            f"{n_sites} sites each missing {missing_per_site} findings leaves some finding at "
            f"{n_sites - most_absent} sites; every finding needs >= {min_sites_present}: "
            "lower --missing-per-site or add sites"
        )
    order = rng.permutation(NUM_FINDINGS)
    absent = []
    for site in range(n_sites):
        picked = [
            order[(site * missing_per_site + j) % NUM_FINDINGS] for j in range(missing_per_site)
        ]
        absent.append(tuple(FINDINGS[k] for k in sorted(picked)))
    return absent


def plan_site_mixes(
    n_sites: int,
    missing_per_site: int,
    config: PrevalenceConfig,
    rng: np.random.Generator,
    min_sites_present: int = 3,
) -> list[SiteMix]:
    """Per-site disease mix: absent findings plus NIH prevalences times a log-normal site factor
    (sd `config.mix_spread`), clipped to [floor, ceiling]."""
    absent = assign_absent_findings(n_sites, missing_per_site, rng, min_sites_present)
    base = nih_prevalence()
    mixes = []
    for site_absent in absent:
        factors = np.exp(rng.normal(0.0, config.mix_spread, NUM_FINDINGS))
        targets = floored_targets(base * factors, config)
        targets[[FINDINGS.index(f) for f in site_absent]] = 0.0
        mixes.append(SiteMix(absent=site_absent, targets=tuple(float(t) for t in targets)))
    return mixes


def sample_labels(model: LabelModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` label vectors [n, NUM_FINDINGS] (uint8) drawn from `model`."""
    rows = rng.choice(len(model.weights), size=n, p=model.weights)
    return model.combinations[rows].copy()


def ensure_positives(
    labels: np.ndarray,
    model: LabelModel,
    minimum: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Make every finding the model can produce appear at least `minimum` times (small sets):
    overwrite randomly chosen rows that carry no finding yet with a combination holding the
    missing finding, drawn from the model's conditional given that finding."""
    labels = labels.copy()
    possible = model.combinations.any(axis=0)
    for k in np.flatnonzero(possible):
        short = minimum - int(labels[:, k].sum())
        free = np.flatnonzero(labels.sum(axis=1) == 0)
        if short <= 0 or len(free) == 0:
            continue
        rows = rng.choice(free, size=min(short, len(free)), replace=False)
        carriers = np.flatnonzero(model.combinations[:, k] == 1)
        p = model.weights[carriers] / model.weights[carriers].sum()
        labels[rows] = model.combinations[rng.choice(carriers, size=len(rows), p=p)]
    return labels
