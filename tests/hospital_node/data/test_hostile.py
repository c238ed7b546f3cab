"""Hostile files through the site loader: every kind reported with its reason, nothing else lost.

The short version of benchmarks/hostile_dicom.py: two files of each kind (data_tools.hostile,
big kinds just over their limits), six good files beside them, one load_site.
"""

from __future__ import annotations

import json

import pytest

from data_tools.hostile import EXPECTED_FILENAME, KINDS, write_hostile_site
from data_tools.hostile_kinds import LOADED
from hospital_node.data.dicom import REASONS
from hospital_node.data.site import DataConfig, load_site

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the damaged files


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("hostile") / "site"
    expected = write_hostile_site(site, 2 * len(KINDS), good=6, seed=7, small=True)
    return site, expected


def test_the_corpus_holds_every_kind_and_says_what_to_expect(hostile_site):
    site, expected = hostile_site
    kinds = {path.split("/")[2] for path in expected if path.startswith("dicom/hostile/")}
    assert kinds == set(KINDS)
    assert json.loads((site / EXPECTED_FILENAME).read_text()) == expected
    for reasons in expected.values():
        assert set(reasons) <= {*REASONS, LOADED}


@pytest.mark.parametrize("workers", [0, 2])
def test_every_hostile_file_is_reported_with_its_reason_and_the_good_ones_load(
    hostile_site, tmp_path, workers
):
    site, expected = hostile_site
    data = load_site(site, DataConfig(image_size=32, cache_dir=tmp_path, workers=workers))
    skipped = {s.path: s for s in data.report.skipped}
    for path, reasons in expected.items():
        if not reasons:
            assert path not in skipped, f"good file {path} was skipped: {skipped.get(path)}"
        elif LOADED not in reasons:
            assert path in skipped, f"{path} loaded; expected {reasons}"
            assert skipped[path].reason in reasons, f"{path}: {skipped[path]}"
            assert skipped[path].detail
    good = sum(1 for reasons in expected.values() if not reasons)
    undetectable = sum(1 for p, r in expected.items() if LOADED in r and p not in skipped)
    assert data.report.n_loaded == len(data) == good + undetectable
    assert data.report.n_rows == len(expected)


def test_a_second_load_reports_the_same_from_the_cache(hostile_site, tmp_path):
    site, _ = hostile_site
    config = DataConfig(image_size=32, cache_dir=tmp_path)
    first = load_site(site, config).report
    second = load_site(site, config).report
    assert second.cache_hit and second.n_decoded == 0
    assert second.skipped == first.skipped and second.n_loaded == first.n_loaded


def test_a_file_over_the_size_limit_is_refused_without_being_read(tmp_path, monkeypatch):
    from data_tools.hostile import write_hostile_site as write
    from hospital_node.data import cache

    site = tmp_path / "site"
    expected = write(site, 0, good=3, seed=1, small=True)
    big = site / "dicom/good/0000.dcm"
    with big.open("r+b") as fh:
        fh.truncate(129 * 2**20)  # sparse: as large as a real file, no disk use
    hashed = []
    real_digest = cache.file_digest
    monkeypatch.setattr(
        "hospital_node.data.site.file_digest", lambda p: hashed.append(p) or real_digest(p)
    )
    data = load_site(site, DataConfig(image_size=32, cache_dir=tmp_path / "cache"))
    assert [(s.path, s.reason) for s in data.report.skipped] == [
        ("dicom/good/0000.dcm", "too_large")
    ]
    assert big not in hashed and len(data) == len(expected) - 1
