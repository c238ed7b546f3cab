"""Pure partition functions: quotas, holdouts, official lists, site assignment schemes."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools.labels import FINDINGS, NUM_FINDINGS
from data_tools.partition import (
    ImageTable,
    PartitionConfig,
    PartitionError,
    assign_sites,
    quotas,
    random_absent_layout,
    seeded_holdout,
    site_names,
    size_profile,
    split_by_official_lists,
    split_site_patients,
)


def _patients(count: int, seed: int = 0) -> dict[str, dict[str, tuple[int, ...]]]:
    """patient -> {image id -> labels}: 1-4 images each, ~60% of images with findings."""
    rng = np.random.default_rng(seed)
    patients = {}
    for p in range(count):
        images = {}
        for k in range(int(rng.integers(1, 5))):
            labels = (rng.random(NUM_FINDINGS) < 0.06).astype(int)
            images[f"{p:08d}_{k:03d}.png"] = tuple(int(v) for v in labels)
        patients[str(p)] = images
    return patients


def test_size_profile_is_geometric_with_the_requested_ratio():
    fractions = size_profile(8, 4.0)

    assert fractions.sum() == pytest.approx(1.0)
    assert fractions[0] / fractions[-1] == pytest.approx(4.0)
    assert np.all(np.diff(fractions) < 0)


def test_quotas_sum_to_total_and_follow_fractions():
    counts = quotas(101, size_profile(8, 4.0))

    assert counts.sum() == 101
    assert counts[0] > counts[-1] > 0


def test_site_names():
    assert site_names(3) == ("N1", "N2", "N3")


def test_seeded_holdout_is_deterministic_and_order_free():
    patients = [str(p) for p in range(50)]

    kept, held = seeded_holdout(patients, 0.2, np.random.default_rng(3))
    kept2, held2 = seeded_holdout(list(reversed(patients)), 0.2, np.random.default_rng(3))
    _, held3 = seeded_holdout(patients, 0.2, np.random.default_rng(4))

    assert (kept, held) == (kept2, held2)
    assert len(held) == 10 and not set(kept) & set(held)
    assert held3 != held


def test_official_lists_conflict_patient_goes_to_test_without_train_images():
    images = {"1": ["a", "b"], "2": ["c"], "3": ["d", "e"], "4": ["f"]}
    train_val = frozenset({"a", "c", "d"})
    test = frozenset({"b", "e"})

    split = split_by_official_lists(images, train_val, test)

    assert split.conflict_patients == ("1", "3")
    assert split.test_patients == ("1", "3")
    assert split.train_val_patients == ("2",)
    assert split.excluded_images == {"a", "d", "f"}  # conflict train images + unlisted f


def test_official_lists_one_missing_list_is_the_complement():
    images = {"1": ["a"], "2": ["b"]}

    split = split_by_official_lists(images, None, frozenset({"b"}))

    assert split.train_val_patients == ("1",) and split.test_patients == ("2",)
    with pytest.raises(PartitionError):
        split_by_official_lists(images, None, None)


@pytest.mark.parametrize("seed", range(10))
def test_absent_layout_keeps_every_finding_at_three_sites(seed):
    config = PartitionConfig(scheme="missing-findings", sites=8, absent_per_site=3)

    layout = random_absent_layout(config, np.random.default_rng(seed))

    assert np.all(layout.sum(axis=1) == 3)
    assert np.all((~layout).sum(axis=0) >= 3)


def test_dirichlet_assigns_every_patient_by_quota():
    table = ImageTable.build(_patients(200))
    config = PartitionConfig(sites=5, alpha=0.3)

    assignment = assign_sites(table, config, np.random.default_rng(0))

    assert set(assignment.site_of_patient) == set(table.patients)
    sizes = np.bincount(list(assignment.site_of_patient.values()), minlength=5)
    assert tuple(sizes) == assignment.quotas
    assert assignment.dropped_images == ()


def test_dirichlet_mix_differs_between_sites():
    table = ImageTable.build(_patients(600, seed=1))
    assignment = assign_sites(table, PartitionConfig(sites=4, alpha=0.1), np.random.default_rng(2))
    union = table.patient_union()
    site = np.array([assignment.site_of_patient[p] for p in table.patients])

    prevalence = np.array([union[site == s].mean(axis=0) for s in range(4)])

    assert np.max(prevalence.max(axis=0) - prevalence.min(axis=0)) > 0.1


def test_missing_findings_sites_really_lack_their_findings():
    patients = _patients(300, seed=5)
    table = ImageTable.build(patients)
    config = PartitionConfig(sites=6, scheme="missing-findings", absent_per_site=2)

    assignment = assign_sites(table, config, np.random.default_rng(0))

    dropped = set(assignment.dropped_images)
    for patient, site in assignment.site_of_patient.items():
        absent = {FINDINGS.index(f) for f in assignment.absent_findings[site]}
        kept = [labels for image, labels in patients[patient].items() if image not in dropped]
        assert kept, "a placed patient keeps at least one image"
        assert all(labels[k] == 0 for labels in kept for k in absent)
    assert all(len(a) == 2 for a in assignment.absent_findings)
    placed = set(assignment.site_of_patient)
    unplaced_images = {i for p in set(patients) - placed for i in patients[p]}
    assert unplaced_images <= dropped  # nothing leaves silently


def test_missing_findings_needs_enough_sites():
    with pytest.raises(PartitionError, match="--sites >= 4"):
        PartitionConfig(sites=3, scheme="missing-findings").validate()
    with pytest.raises(PartitionError, match="--absent-per-site"):
        PartitionConfig(sites=4, scheme="missing-findings", absent_per_site=4).validate()


def test_split_site_patients_gives_every_split():
    patients = [str(p) for p in range(20)]

    split = split_site_patients(patients, PartitionConfig(), np.random.default_rng(0))

    values = list(split.values())
    assert values.count("test") == 3 and values.count("val") == 2 and values.count("train") == 15
    small = split_site_patients(["a", "b", "c"], PartitionConfig(), np.random.default_rng(0))
    assert sorted(small.values()) == ["test", "train", "val"]
