"""Writer -> reader round trip: every data_tools SITE_PROFILES profile reads back its image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest

from data_tools.dicom_write import (
    SITE_PROFILES,
    AcquisitionProfile,
    StudyMeta,
    derive_uid,
    read_intensity,
    write_dicom,
)
from hospital_node.data.dicom import read_dicom, read_dicom_image


def phantom_like(size: int) -> np.ndarray:
    """Smooth gradients, a disc and a dark box, spanning exactly [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    image = 0.2 + 0.5 * x * (1 - 0.4 * y) + 0.1 * np.sin(6 * y)
    image[(x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.03] = 0.95
    image[int(size * 0.7) : int(size * 0.85), int(size * 0.1) : int(size * 0.3)] = 0.0
    image[0, 0] = 1.0
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def meta_for(name: str) -> StudyMeta:
    return StudyMeta(
        patient_id=f"P-{name}",
        sop_instance_uid=derive_uid("roundtrip", name, "sop"),
        study_instance_uid=derive_uid("roundtrip", name, "study"),
        series_instance_uid=derive_uid("roundtrip", name, "series"),
    )


def write_and_read(tmp_path, profile: AcquisitionProfile, image: np.ndarray) -> np.ndarray:
    path = tmp_path / f"{profile.name}-{profile.photometric}.dcm"
    write_dicom(path, image, profile, meta_for(f"{profile.name}-{profile.photometric}"))
    return read_dicom_image(path)


def quantisation_step(profile: AcquisitionProfile) -> float:
    return 1.0 / profile.max_stored


@pytest.mark.parametrize("profile", SITE_PROFILES, ids=lambda p: p.name)
def test_every_site_profile_reads_back_its_image(tmp_path, profile):
    image = phantom_like(profile.matrix)
    loaded = write_and_read(tmp_path, profile, image)
    assert loaded.dtype == np.float32 and loaded.shape == image.shape
    # Lossless syntaxes: only the quantisation to Bits Stored (half a step) remains.
    tolerance = 0.5 * quantisation_step(profile) + 1e-6
    np.testing.assert_allclose(loaded, image, atol=tolerance, rtol=0)


@pytest.mark.parametrize("profile", SITE_PROFILES, ids=lambda p: p.name)
def test_reader_agrees_with_the_writers_own_inverse(tmp_path, profile):
    path = tmp_path / "a.dcm"
    write_dicom(path, phantom_like(profile.matrix), profile, meta_for(profile.name))
    image, ds = read_dicom(path)
    np.testing.assert_allclose(image, read_intensity(pydicom.dcmread(path)), atol=1e-6, rtol=0)
    assert str(ds.SOPInstanceUID) == meta_for(profile.name).sop_instance_uid


@pytest.mark.parametrize("profile", SITE_PROFILES, ids=lambda p: p.name)
def test_monochrome1_and_monochrome2_variants_load_the_same(tmp_path, profile):
    image = phantom_like(profile.matrix)
    variants = {
        photometric: dataclasses.replace(profile, photometric=photometric)
        for photometric in ("MONOCHROME1", "MONOCHROME2")
    }
    loaded = {k: write_and_read(tmp_path, p, image) for k, p in variants.items()}
    np.testing.assert_allclose(loaded["MONOCHROME1"], loaded["MONOCHROME2"], atol=1e-6, rtol=0)


def test_profiles_cover_both_photometrics_and_every_transfer_syntax():
    assert {p.photometric for p in SITE_PROFILES} == {"MONOCHROME1", "MONOCHROME2"}
    assert {p.bits_stored for p in SITE_PROFILES} == {8, 12, 16}
    assert len({p.transfer_syntax for p in SITE_PROFILES}) == 3


def test_resized_read_stays_close_to_the_resized_original(tmp_path):
    profile = next(p for p in SITE_PROFILES if p.matrix == 128)
    image = phantom_like(profile.matrix)
    path = tmp_path / "a.dcm"
    write_dicom(path, image, profile, meta_for("resize"))
    small = read_dicom_image(path, image_size=64)
    reference = read_dicom_image(path).reshape(64, 2, 64, 2).mean(axis=(1, 3))  # 128 -> 64
    np.testing.assert_allclose(small, reference, atol=1e-5)


def test_synthetic_hospitals_load_without_a_single_skip(tmp_path):
    from data_tools.synth import SynthConfig, generate_dataset
    from hospital_node.data.site import DataConfig, load_site

    config = SynthConfig(sites=3, per_site=6, test_size=6, size=32, missing_per_site=0, workers=1)
    generate_dataset(config, tmp_path / "data")
    data_config = DataConfig(image_size=32, cache_dir=tmp_path / "cache")
    for site in ("N1", "N2", "N3", "common_test"):
        data = load_site(tmp_path / "data" / site, data_config)
        assert data.report.skipped == [], data.report.summary()
        assert len(data) == data.report.n_rows > 0
        assert data.images.shape[1:] == (1, 32, 32)
