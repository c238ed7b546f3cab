"""Case viewer: decoding, refusals, the stored model's probabilities and Grad-CAM."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from app.viewer import (
    CaseError,
    StoredModel,
    build_classifier,
    grad_cam,
    list_dicom_files,
    load_case,
    overlay,
    predict_probabilities,
    probability_table,
    resolve_in_folder,
)
from data_tools.labels import FINDINGS
from hospital_node.data.dicom import read_dicom_image
from hospital_node.store.reader import StoreReader
from hospital_node.training.model import ModelConfig, build_model

VIEWER = "views/case_viewer.py"
METHOD, SITE = "ecl-pdmm", "N2"
INPUT_SIZE = 32  # data.image_size of the fixture run


def dicom_files(sim_run, photometric: str) -> list[Path]:
    """Fixture DICOMs with the given (0028,0004) Photometric Interpretation."""
    found = []
    for path in sorted(sim_run.dicom_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.PhotometricInterpretation) == photometric:
            found.append(path)
    assert found, f"the fixture data has no {photometric} file"
    return found


def expected_probabilities(sim_run, path: Path) -> np.ndarray:
    """The stored model's output computed here, independently of the app."""
    with StoreReader.open_readonly(sim_run.store) as reader:
        config, state = reader.load_model(sim_run.run_id, METHOD, SITE)
    model = build_model(ModelConfig.from_record(config))
    model.load_state_dict(state, strict=True)
    image = read_dicom_image(path, image_size=INPUT_SIZE)
    with torch.no_grad():
        return torch.sigmoid(model.eval()(torch.from_numpy(image)[None, None]))[0].numpy()


def ct_bytes(path: Path) -> bytes:
    """The same file with (0008,0060) Modality CT, in memory."""
    ds = pydicom.dcmread(path)
    ds.Modality = "CT"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_list_and_resolve_stay_inside_the_folder(sim_run, tmp_path) -> None:
    folder = tmp_path / "dicom"
    folder.mkdir()
    inside = dicom_files(sim_run, "MONOCHROME2")[0]
    (folder / "case.dcm").write_bytes(inside.read_bytes())
    secret = tmp_path / "secret.dcm"
    secret.write_bytes(inside.read_bytes())
    (folder / "escape.dcm").symlink_to(secret)  # a link leading out of the folder
    assert list_dicom_files(folder) == ["case.dcm"]
    assert resolve_in_folder(folder, "case.dcm") == (folder / "case.dcm").resolve()
    for name in ("../secret.dcm", str(secret), "escape.dcm"):
        with pytest.raises(CaseError, match="Only files inside"):
            resolve_in_folder(folder, name)
    with pytest.raises(CaseError, match="not a file"):
        resolve_in_folder(folder, "no/such/file.dcm")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"PNG\x89 this is not a DICOM file" * 10, "not a DICOM image"),
        (b"", "not a DICOM image"),
    ],
)
def test_non_dicom_bytes_are_refused_clearly(payload: bytes, message: str) -> None:
    with pytest.raises(CaseError, match=message):
        load_case(payload)


def test_non_chest_modality_is_refused_clearly(sim_run) -> None:
    path = dicom_files(sim_run, "MONOCHROME2")[0]
    with pytest.raises(CaseError, match="not a chest radiograph"):
        load_case(ct_bytes(path))


def test_monochrome1_is_shown_as_read_dicom_image_decodes_it(sim_run) -> None:
    path = dicom_files(sim_run, "MONOCHROME1")[0]
    case = load_case(path.read_bytes())
    np.testing.assert_array_equal(case.image, read_dicom_image(path))
    assert case.summary["photometric_interpretation"] == "MONOCHROME1"


def test_probabilities_and_grad_cam(sim_run) -> None:
    path = dicom_files(sim_run, "MONOCHROME1")[0]
    with StoreReader.open_readonly(sim_run.store) as reader:
        config, state = reader.load_model(sim_run.run_id, METHOD, SITE)
    stored = StoredModel(config=config, state=state, input_size=INPUT_SIZE)
    case = load_case(path)
    probs = predict_probabilities(build_classifier(stored), case.image, stored.input_size)
    np.testing.assert_allclose(probs, expected_probabilities(sim_run, path), rtol=1e-5)
    heat = grad_cam(build_classifier(stored), case.image, stored.input_size, "Effusion")
    assert heat.shape == (INPUT_SIZE, INPUT_SIZE)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    rgb = overlay(case.image, heat)
    assert rgb.shape == (*case.image.shape, 3) and rgb.dtype == np.uint8


def test_grad_cam_works_on_a_grid_head_model(sim_run) -> None:
    """A model trained with `model.head = "grid"` is rebuilt from its record and explained."""
    config = {**asdict(ModelConfig(head="grid")), "image_size": INPUT_SIZE}
    state = build_model(ModelConfig(head="grid")).state_dict()
    stored = StoredModel(config=config, state=state, input_size=INPUT_SIZE)
    case = load_case(dicom_files(sim_run, "MONOCHROME2")[0])
    heat = grad_cam(build_classifier(stored), case.image, stored.input_size, "Cardiomegaly")
    assert heat.shape == (INPUT_SIZE, INPUT_SIZE)
    assert 0.0 <= heat.min() <= heat.max() <= 1.0


def test_probability_table_calls_against_operating_points(sim_run) -> None:
    with StoreReader.open_readonly(sim_run.store) as reader:
        curves = {f: reader.roc(sim_run.run_id, METHOD, SITE, "common", f) for f in FINDINGS}
    curves = {f: c for f, c in curves.items() if c is not None}
    probs = np.linspace(0.0, 1.0, len(FINDINGS))
    table = probability_table(probs, curves).set_index("finding")
    for finding, curve in curves.items():
        expected = "above" if probs[FINDINGS.index(finding)] >= curve.threshold else "below"
        if np.isinf(curve.threshold):
            expected = "no operating point"
        assert table.at[finding, "call"] == expected


def _viewer(make_app, sim_run):
    at = make_app("--results", sim_run.store, "--dicom-dir", sim_run.dicom_dir)
    at.run()
    at.switch_page(VIEWER).run()
    at.selectbox(key="viewer_site").set_value(SITE).run()
    return at


def test_viewer_page_shows_the_model_probabilities(sim_run, make_app) -> None:
    path = dicom_files(sim_run, "MONOCHROME1")[0]
    at = _viewer(make_app, sim_run)
    relative = path.relative_to(sim_run.dicom_dir).as_posix()
    at.selectbox(key="viewer_file").set_value(relative).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value.set_index("Finding")
    expected = expected_probabilities(sim_run, path)
    shown = [float(table.at[f, "Probability"]) for f in FINDINGS]
    np.testing.assert_allclose(shown, expected, atol=5e-4)
    captions = [c for image in at.image for c in image.captions]
    assert captions == [
        "Radiograph (windowed)",
        "Grad-CAM: " + at.selectbox(key="viewer_cam_finding").value,
    ]


@pytest.mark.parametrize(
    ("make_payload", "message"),
    [
        (lambda path: b"just some text, not an image\n", "not a DICOM image"),
        (ct_bytes, "not a chest radiograph"),
    ],
)
def test_viewer_page_refuses_bad_uploads(sim_run, make_app, make_payload, message) -> None:
    at = _viewer(make_app, sim_run)
    at.radio(key="viewer_source").set_value("Upload a file").run()
    payload = make_payload(dicom_files(sim_run, "MONOCHROME2")[0])
    at.file_uploader(key="viewer_upload").upload("case.dcm", payload).run()
    assert not at.exception
    assert message in at.error[0].value
