"""DICOM writer: valid files per site profile, lossless pylibjpeg decoding, pixel mapping, UIDs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, JPEG2000Lossless, JPEGLosslessSV1

from data_tools.dicom_write import (
    CR_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    SITE_PROFILES,
    UID_ROOT,
    AcquisitionProfile,
    DicomWriteError,
    StudyMeta,
    derive_uid,
    read_intensity,
    write_dicom,
)


def _meta(tag: str) -> StudyMeta:
    return StudyMeta(
        patient_id=f"TEST-{tag}",
        sop_instance_uid=derive_uid("test", "sop", tag),
        study_instance_uid=derive_uid("test", "study", tag),
        series_instance_uid=derive_uid("test", "series", tag),
        patient_age=57,
        patient_sex="F",
        view_position="AP",
    )


def _image(size: int) -> np.ndarray:
    """A smooth ramp plus a bright disc, covering [0, 1]."""
    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)
    image = np.add.outer(axis, axis) / 2
    yy, xx = np.mgrid[:size, :size]
    image[(yy - size / 3) ** 2 + (xx - size / 2) ** 2 < (size / 6) ** 2] = 1.0
    return image


def _read(path: Path) -> pydicom.Dataset:
    """Read and decode the way the hospital node does: pydicom + pylibjpeg only."""
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.pixel_array_options(decoding_plugin="pylibjpeg")
    return ds


@pytest.mark.parametrize("profile", SITE_PROFILES, ids=[p.name for p in SITE_PROFILES])
def test_each_site_profile_writes_a_valid_dicom_that_decodes_losslessly(
    tmp_path: Path, profile: AcquisitionProfile
) -> None:
    profile = replace(profile, matrix=48)
    image = _image(48)
    path = tmp_path / "sub" / "dir" / f"{profile.name}.dcm"
    write_dicom(path, image, profile, _meta(profile.name))
    assert path.read_bytes()[128:132] == b"DICM"
    ds = _read(path)
    expected_class = DX_FOR_PRESENTATION if profile.modality == "DX" else CR_IMAGE_STORAGE
    assert ds.SOPClassUID == expected_class == ds.file_meta.MediaStorageSOPClassUID
    assert ds.file_meta.TransferSyntaxUID == profile.transfer_syntax
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (ds.Modality, ds.BodyPartExamined, ds.ViewPosition) == (profile.modality, "CHEST", "AP")
    assert (ds.PatientID, ds.PatientAge, ds.PatientSex) == (f"TEST-{profile.name}", "057Y", "F")
    assert ds.PhotometricInterpretation == profile.photometric
    assert ds.BitsStored == profile.bits_stored and ds.Rows == ds.Columns == 48
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert UID(uid).is_valid
    step = 1.0 / profile.max_stored
    assert np.abs(read_intensity(ds) - image).max() <= step / 2 + 1e-6


def test_monochrome1_and_monochrome2_read_back_to_the_same_image(tmp_path: Path) -> None:
    image = _image(32)
    base = AcquisitionProfile("M", modality="CR", bits_stored=12, rescale_slope=0.5, matrix=32)
    inverted = replace(base, photometric="MONOCHROME1", rescale_intercept=-100.0)
    write_dicom(tmp_path / "m2.dcm", image, base, _meta("m2"))
    write_dicom(tmp_path / "m1.dcm", image, inverted, _meta("m1"))
    m2, m1 = _read(tmp_path / "m2.dcm"), _read(tmp_path / "m1.dcm")
    assert np.array_equal(m1.pixel_array, 4095 - m2.pixel_array)
    assert np.array_equal(read_intensity(m1), read_intensity(m2))


@pytest.mark.parametrize("profile", SITE_PROFILES[3:5], ids=lambda p: p.name)
def test_pydicom_voi_window_returns_the_stored_range_linearly(
    tmp_path: Path, profile: AcquisitionProfile
) -> None:
    profile = replace(profile, matrix=32)
    write_dicom(tmp_path / "w.dcm", _image(32), profile, _meta("w"))
    ds = _read(tmp_path / "w.dcm")
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=False)
    stored = ds.pixel_array.astype(np.float64)
    fraction = (windowed - windowed.min()) / (windowed.max() - windowed.min())
    assert np.allclose(fraction, (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6)


def test_jpeg_lossless_uses_process_14_selection_value_1(tmp_path: Path) -> None:
    profile = next(p for p in SITE_PROFILES if p.transfer_syntax == JPEGLosslessSV1)
    write_dicom(tmp_path / "j.dcm", _image(24), replace(profile, matrix=24), _meta("j"))
    ds = pydicom.dcmread(tmp_path / "j.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert b"\xff\xc3" in frame  # SOF3: lossless, Huffman
    sos = frame.index(b"\xff\xda")
    n_components = frame[sos + 4]
    assert frame[sos + 5 + 2 * n_components] == 1  # Ss = predictor selection value 1


def test_every_transfer_syntax_and_photometric_is_used_by_the_site_profiles() -> None:
    syntaxes = {p.transfer_syntax for p in SITE_PROFILES}
    assert {JPEGLosslessSV1, JPEG2000Lossless, "1.2.840.10008.1.2.1"} <= syntaxes
    assert {p.photometric for p in SITE_PROFILES} == {"MONOCHROME1", "MONOCHROME2"}
    assert {p.bits_stored for p in SITE_PROFILES} == {8, 12, 16}
    assert len({p.name for p in SITE_PROFILES}) == 8
    for p in SITE_PROFILES:  # the DX Image module fixes the rescale to identity
        assert p.modality == "CR" or (p.rescale_slope, p.rescale_intercept) == (1.0, 0.0)


def test_derived_uids_are_valid_deterministic_and_distinct() -> None:
    uids = [derive_uid("site", str(k)) for k in range(2000)]
    assert len(set(uids)) == len(uids)
    assert derive_uid("site", "7") == uids[7]
    assert derive_uid("a", "bc") != derive_uid("ab", "c")
    for uid in uids[:50]:
        assert UID(uid).is_valid and len(uid) <= 64 and uid.startswith(UID_ROOT + ".")


def test_same_inputs_give_identical_bytes_and_images_are_resampled_to_the_matrix(
    tmp_path: Path,
) -> None:
    profile = replace(SITE_PROFILES[2], matrix=40)  # JPEG 2000
    write_dicom(tmp_path / "a.dcm", _image(20), profile, _meta("x"))
    write_dicom(tmp_path / "b.dcm", _image(20), profile, _meta("x"))
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    assert _read(tmp_path / "a.dcm").pixel_array.shape == (40, 40)


def test_bad_inputs_raise_actionable_errors(tmp_path: Path) -> None:
    profile = replace(SITE_PROFILES[0], matrix=8)
    with pytest.raises(DicomWriteError, match="NaN"):
        write_dicom(tmp_path / "n.dcm", np.full((8, 8), np.nan), profile, _meta("n"))
    with pytest.raises(DicomWriteError, match="2-D"):
        write_dicom(tmp_path / "n.dcm", np.zeros((2, 8, 8)), profile, _meta("n"))
    with pytest.raises(DicomWriteError, match=">= 32 px"):
        write_dicom(
            tmp_path / "j.dcm", np.zeros((16, 16)), replace(SITE_PROFILES[2], matrix=16), _meta("j")
        )
    with pytest.raises(DicomWriteError, match="bits_stored 10"):
        AcquisitionProfile("bad", bits_stored=10)
