"""Case viewer logic: DICOM -> image, the site model's 14 probabilities, Grad-CAM overlay."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from monai.visualize import GradCAM
from torch import nn
from torch.nn import functional

from data_tools.labels import FINDINGS
from hospital_node.data.config import DataConfig
from hospital_node.data.dicom import DicomReadError, dicom_summary, read_dicom, resize_image
from hospital_node.evaluation.records import RocCurve
from hospital_node.training.model import ModelConfig, build_model

logger = logging.getLogger(__name__)

# MONAI DenseNet (compact and DenseNet-121): the ReLU after the last norm holds the final
# feature maps, the standard Grad-CAM layer for this family (MONAI's GradCAM docs use it too).
GRADCAM_LAYER = "class_layers.relu"
MAX_LISTED_FILES = 2000
DICOM_SUFFIXES = (".dcm", ".dicom", "")

_ADVICE = {
    "too_large": "This file is larger or more complex than a single chest radiograph can be "
    "(the limits are 128 MB per file and 36 megapixels per image). Export the single "
    "radiograph again from PACS.",
    "not_dicom": "This file is not a DICOM image. Export the study from PACS as a DICOM "
    "(Part 10, .dcm) file and choose that file.",
    "truncated": "This DICOM file is incomplete (cut short). Copy it again from the archive.",
    "no_pixel_data": "This DICOM file holds no image (no pixel data). Choose the image itself, "
    "not a report or structured-report object.",
    "unsupported_modality": "This DICOM is not a chest radiograph. The model reads only "
    "projection chest X-rays (Modality CR or DX), not CT, MR, ultrasound or other images.",
    "unsupported_transfer_syntax": "This DICOM uses a compression the app cannot decode. "
    "Export it uncompressed (Explicit VR Little Endian), JPEG Lossless or JPEG 2000.",
    "not_2d": "This DICOM is not a single grayscale image (it has several frames or colour "
    "channels). Choose a single chest radiograph.",
    "decode_failed": "The image in this DICOM file cannot be decoded. Export it again from PACS.",
}


class CaseError(Exception):
    """A case the viewer cannot show; `message` says what to do, `detail` is for the log."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class Case:
    """A decoded radiograph for display (float32 [H, W] in [0, 1], bright = dense) and its tags."""

    image: np.ndarray
    summary: dict[str, Any]


@dataclass(frozen=True)
class StoredModel:
    """A site's final model as stored: its configuration, weights and training input size."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    input_size: int


def list_dicom_files(folder: Path, limit: int = MAX_LISTED_FILES) -> list[str]:
    """DICOM-looking files under `folder` (relative POSIX paths, sorted), at most `limit`."""
    root = folder.resolve()
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        if len(found) >= limit:
            break
        if path.suffix.lower() in DICOM_SUFFIXES and path.is_file() and _inside(path, root):
            found.append(path.relative_to(root).as_posix())
    return found


def _inside(path: Path, root: Path) -> bool:
    """True when `path`, links followed, lies inside `root`."""
    return path.resolve().is_relative_to(root)


def resolve_in_folder(folder: Path, relative: str) -> Path:
    """The file `relative` inside `folder`; CaseError for anything outside it or missing."""
    root = folder.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise CaseError(f"Only files inside {root} can be opened; choose a file from that folder.")
    if not candidate.is_file():
        raise CaseError(f"{relative} is not a file in {root}; choose another file.")
    return candidate


def load_case(source: Path | bytes) -> Case:
    """Decode a DICOM (path or in-memory upload bytes; nothing is written to disk)."""
    try:
        image, ds = read_dicom(source)
    except DicomReadError as exc:
        raise CaseError(_ADVICE.get(exc.reason, exc.detail), detail=str(exc)) from exc
    except OSError as exc:
        raise CaseError("The file cannot be read; check that it still exists.", str(exc)) from exc
    return Case(image=image, summary=dicom_summary(ds))


def input_size_of(model_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> int:
    """The resolution the model was trained at.

    The simulation and the nodes resize images to `data.image_size` before training; that
    wins over the `image_size` the stored model record carries when both are present.
    """
    data = run_config.get("data")
    if isinstance(data, Mapping) and isinstance(data.get("image_size"), int):
        return int(data["image_size"])
    return int(model_config.get("image_size", DataConfig().image_size))


def build_classifier(stored: StoredModel) -> nn.Module:
    """A fresh network with the stored weights (strict), in eval mode.

    Fresh per use: Grad-CAM registers hooks on the module, so a module is never shared.
    """
    config = ModelConfig.from_record(stored.config)
    model = build_model(config)
    model.load_state_dict(stored.state, strict=True)
    return model.eval()


def model_input(image: np.ndarray, input_size: int) -> torch.Tensor:
    """[1, 1, S, S] float32 tensor, resized like the training pipeline (MONAI Resize)."""
    return torch.from_numpy(resize_image(image, input_size)).reshape(1, 1, input_size, input_size)


def predict_probabilities(model: nn.Module, image: np.ndarray, input_size: int) -> np.ndarray:
    """The 14 sigmoid probabilities for one image."""
    with torch.no_grad():
        logits = model(model_input(image, input_size))
    return torch.sigmoid(logits)[0].double().numpy()


def grad_cam(model: nn.Module, image: np.ndarray, input_size: int, finding: str) -> np.ndarray:
    """Grad-CAM map of one finding's logit, [S, S] in [0, 1] (MONAI GradCAM)."""
    cam = GradCAM(nn_module=model, target_layers=GRADCAM_LAYER)
    x = model_input(image, input_size).requires_grad_(True)
    heat = cam(x, class_idx=FINDINGS.index(finding))
    return np.nan_to_num(heat[0, 0].detach().float().numpy(), nan=0.0)


def overlay(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8: the radiograph in grey with the heat map (upsampled to it) in colour."""
    h, w = image.shape
    up = functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None],
        size=(h, w),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    colour = colormaps["jet"](np.clip(up, 0.0, 1.0))[..., :3]
    grey = np.repeat(image[..., None], 3, axis=2)
    mixed = (1.0 - alpha * up[..., None]) * grey + alpha * up[..., None] * colour
    return (np.clip(mixed, 0.0, 1.0) * 255).astype(np.uint8)


def probability_table(probabilities: np.ndarray, curves: Mapping[str, RocCurve]) -> pd.DataFrame:
    """Finding, probability, the site's operating point and whether the case is above it."""
    rows = []
    for finding, prob in zip(FINDINGS, probabilities.tolist(), strict=True):
        curve = curves.get(finding)
        threshold = None if curve is None or math.isinf(curve.threshold) else curve.threshold
        if threshold is None:
            call = "no operating point"
        else:
            call = "above" if prob >= threshold else "below"
        rows.append(
            {
                "finding": finding,
                "probability": prob,
                "threshold": threshold,
                "call": call,
                "sensitivity": None if curve is None else curve.sensitivity,
                "specificity": None if curve is None else curve.specificity,
            }
        )
    return pd.DataFrame(rows)
