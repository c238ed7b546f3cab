"""Phantom rendering: determinism, value range, and each finding drawn where its anatomy is."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data_tools.labels import FINDINGS, NUM_FINDINGS
from data_tools.phantom import PhantomConfig, coordinate_grid, render_phantom, sample_anatomy

SIZE = 96


def _render(labels: np.ndarray, patient: int, image: int, difficulty: float = 0.0) -> np.ndarray:
    config = PhantomConfig(size=SIZE, difficulty=difficulty)
    anatomy = sample_anatomy(np.random.default_rng(patient), config)
    return render_phantom(labels, anatomy, np.random.default_rng(image), config)


def _one_hot(name: str) -> np.ndarray:
    labels = np.zeros(NUM_FINDINGS, dtype=np.int64)
    labels[FINDINGS.index(name)] = 1
    return labels


def test_same_seeds_give_identical_images_and_other_seeds_differ() -> None:
    labels = _one_hot("Nodule")
    first = _render(labels, patient=1, image=2, difficulty=0.5)
    again = _render(labels, patient=1, image=2, difficulty=0.5)
    other_image = _render(labels, patient=1, image=3, difficulty=0.5)
    other_patient = _render(labels, patient=4, image=2, difficulty=0.5)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_image)
    assert np.abs(first - other_patient).mean() > 0.01


def test_image_is_float32_in_unit_range_with_dark_lungs_and_bright_body() -> None:
    image = _render(np.zeros(NUM_FINDINGS), patient=0, image=0, difficulty=0.5)
    x, y = coordinate_grid(SIZE)
    assert image.dtype == np.float32 and image.shape == (SIZE, SIZE)
    assert image.min() >= 0.0 and image.max() <= 1.0
    lung = image[(np.abs(np.abs(x) - 0.37) < 0.08) & (np.abs(y + 0.2) < 0.15)].mean()
    abdomen = image[(np.abs(x) < 0.5) & (y > 0.8)].mean()
    outside = image[(np.abs(x) > 0.97) & (np.abs(y) < 0.3)].mean()
    assert outside < lung < abdomen


def test_difficulty_lowers_lesion_contrast() -> None:
    labels = _one_hot("Mass")
    easy = _render(labels, 5, 6, 0.0) - _render(np.zeros(NUM_FINDINGS), 5, 6, 0.0)
    hard = _render(labels, 5, 6, 1.0) - _render(np.zeros(NUM_FINDINGS), 5, 6, 1.0)
    assert np.abs(easy).sum() > 1.5 * np.abs(hard).sum()


def _zones() -> dict[str, np.ndarray]:
    x, y = coordinate_grid(SIZE)
    lungs = (np.abs(x) < 0.75) & (y > -0.85) & (y < 0.65)
    return {
        "lungs": lungs,
        "lower": lungs & (y > -0.15),
        "upper": lungs & (y < 0.2),
        "heart": (np.abs(x - 0.07) < 0.6) & (y > -0.2) & (y < 0.75),
        "perihilar": (np.abs(x) < 0.6) & (np.abs(y) < 0.55),
        "lateral": lungs & (np.abs(x) > 0.3),
        "retrocardiac": (np.abs(x) < 0.35) & (y > -0.05) & (y < 0.6),
    }


# finding -> (zone holding >= 80 % of the change, sign of the change there)
EXPECTED = {
    "Atelectasis": ("lower", 1),
    "Cardiomegaly": ("heart", 1),
    "Effusion": ("lower", 1),
    "Infiltration": ("lungs", 1),
    "Mass": ("lungs", 1),
    "Nodule": ("lungs", 1),
    "Pneumonia": ("lungs", 1),
    "Pneumothorax": ("upper", -1),
    "Consolidation": ("lungs", 1),
    "Edema": ("perihilar", 1),
    "Emphysema": ("lungs", -1),
    "Fibrosis": ("lower", 1),
    "Pleural_Thickening": ("lateral", 1),
    "Hernia": ("retrocardiac", 1),
}


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_changes_its_anatomical_region(finding: str) -> None:
    zone_name, sign = EXPECTED[finding]
    zone = _zones()[zone_name]
    for patient in range(3):
        base = _render(np.zeros(NUM_FINDINGS), patient, 100 + patient)
        diff = _render(_one_hot(finding), patient, 100 + patient) - base
        change = np.abs(diff)
        assert change.sum() > 0.5, f"{finding} changed almost nothing"
        assert change[zone].sum() >= 0.8 * change.sum(), f"{finding} drawn outside {zone_name}"
        assert sign * diff[zone].sum() > 0, f"{finding} has the wrong sign in {zone_name}"


def _largest_blob(changed: np.ndarray) -> int:
    labelled, count = ndimage.label(changed)
    return int(np.bincount(labelled.ravel())[1:].max()) if count else 0


def test_nodule_is_small_and_mass_is_larger() -> None:
    none = _render(np.zeros(NUM_FINDINGS), 7, 8)
    nodule = np.abs(_render(_one_hot("Nodule"), 7, 8) - none) > 0.05
    mass = np.abs(_render(_one_hot("Mass"), 7, 8) - none) > 0.05
    assert 0 < nodule.mean() < 0.02
    assert _largest_blob(mass) > 2.5 * _largest_blob(nodule)


def test_edema_is_bilateral() -> None:
    diff = _render(_one_hot("Edema"), 2, 3) - _render(np.zeros(NUM_FINDINGS), 2, 3)
    x, _ = coordinate_grid(SIZE)
    assert diff[x < -0.1].sum() > 1.0 and diff[x > 0.1].sum() > 1.0


def test_one_finding_leaves_the_others_unchanged() -> None:
    both = np.zeros(NUM_FINDINGS, dtype=np.int64)
    both[[FINDINGS.index("Nodule"), FINDINGS.index("Effusion")]] = 1
    nodule_only = _render(_one_hot("Nodule"), 3, 4)
    effusion_only = _render(_one_hot("Effusion"), 3, 4)
    combined = _render(both, 3, 4)
    none = _render(np.zeros(NUM_FINDINGS), 3, 4)
    additive = none + (nodule_only - none) + (effusion_only - none)
    assert np.abs(combined - np.clip(additive, 0, 1)).max() < 0.05


def test_invalid_settings_are_rejected_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        PhantomConfig(difficulty=1.5)
    with pytest.raises(ValueError, match="size"):
        PhantomConfig(size=4)
    anatomy = sample_anatomy(np.random.default_rng(0), PhantomConfig())
    with pytest.raises(ValueError, match="FINDINGS"):
        render_phantom(np.zeros(3), anatomy, np.random.default_rng(0), PhantomConfig())
