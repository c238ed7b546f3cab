"""Synthetic frontal chest-radiograph phantoms: anatomy plus the 14 findings, vectorised numpy."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from data_tools.labels import FINDINGS, NUM_FINDINGS
from data_tools.phantom_findings import (
    Anatomy,
    Scene,
    draw_finding,
    modify_anatomy,
    smooth_noise,
    soft_mask,
)

# Intensity convention everywhere: float in [0, 1], 1 = bright = radio-dense (bone, fluid, soft
# tissue), 0 = air, as a MONOCHROME2 display shows it. Coordinates are normalised: x, y in
# [-1, 1], y grows downwards, image left = patient right (radiological convention), so the heart
# apex points to the image right.
AIR = 0.05
SOFT_TISSUE = 0.55
LUNG_AIR = -0.33  # added inside the lung fields
HEART = 0.05  # added over the cardiac silhouette
BONE = 0.08
MARKINGS = 0.14  # peak vascular lung markings near the hila


@dataclass(frozen=True)
class PhantomConfig:
    """Rendering settings. `difficulty` in [0, 1]: 0 = high lesion contrast, little noise and
    little anatomical / lesion-size jitter; 1 = faint lesions, strong noise and jitter."""

    size: int = 128
    difficulty: float = 0.5

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size={self.size} is too small; use >= 16 px")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty={self.difficulty} must be in [0, 1]")

    @property
    def lesion_contrast(self) -> float:
        """Multiplier on every finding's intensity change."""
        return 2.2 - 1.8 * self.difficulty

    @property
    def noise_std(self) -> float:
        """Standard deviation of the white detector noise (intensity units)."""
        return 0.01 + 0.04 * self.difficulty

    @property
    def jitter(self) -> float:
        """Multiplier on anatomical and lesion-size variability."""
        return 0.5 + self.difficulty


def sample_anatomy(rng: np.random.Generator, config: PhantomConfig) -> Anatomy:
    """Draw a normal patient's anatomy; spread scales with `config.jitter`."""
    j = config.jitter

    def jit(mean: float, sd: float) -> float:
        return float(mean + sd * j * rng.standard_normal())

    right_base = jit(0.46, 0.03)  # patient's right dome (image left) sits higher
    return Anatomy(
        body_half_width=jit(0.86, 0.03),
        lung_offset=jit(0.37, 0.015),
        lung_half_width=jit(0.29, 0.015),
        lung_top=jit(-0.72, 0.03),
        diaphragm=(right_base, right_base + jit(0.05, 0.015)),
        dome_height=jit(0.13, 0.02),
        heart_center=(jit(0.07, 0.015), jit(0.2, 0.02)),
        heart_half_size=(jit(0.27, 0.012), jit(0.24, 0.012)),
        tilt=jit(0.0, 0.02),
        rib_spacing=jit(0.19, 0.01),
        rib_phase=float(rng.uniform(0.0, 1.0)),
        exposure=jit(0.0, 0.008),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


@lru_cache(maxsize=8)
def coordinate_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in [-1, 1] for a size x size image (read-only arrays)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(axis, axis)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _rotated_grid(size: int, tilt: float) -> tuple[np.ndarray, np.ndarray]:
    x0, y0 = coordinate_grid(size)
    c, s = np.cos(tilt), np.sin(tilt)
    return (c * x0 - s * y0).astype(np.float32), (s * x0 + c * y0).astype(np.float32)


def _build_scene(anatomy: Anatomy, config: PhantomConfig) -> Scene:
    """Grids and anatomical masks for `anatomy` (already modified by the findings)."""
    x, y = _rotated_grid(config.size, anatomy.tilt)
    pixel = 2.0 / config.size
    (hx, hy), (hw, hh) = anatomy.heart_center, anatomy.heart_half_size
    # Heart: an ellipse whose lower half is wider towards the apex (image right).
    heart_r = np.sqrt(((x - hx) / (hw * np.where(x > hx, 1.12, 0.9))) ** 2 + ((y - hy) / hh) ** 2)
    heart = soft_mask(heart_r - 1.0, 3 * pixel / hw)
    mediastinum = soft_mask(np.abs(x - 0.01) - 0.11, 2 * pixel) * (y < hy)
    lungs = []
    for side in (-1, 1):
        cx, cy, lw, lh = anatomy.lung_ellipse(side)
        r = np.sqrt(((x - cx) / lw) ** 2 + ((y - cy) / lh) ** 2)
        lung = soft_mask(r - 1.0, 2 * pixel / lw) * soft_mask(y - anatomy.dome(x, side), 2 * pixel)
        lungs.append(lung * (1.0 - heart) * (1.0 - mediastinum))
    zeros = np.zeros_like(x)
    return Scene(x, y, anatomy, (lungs[0], lungs[1]), heart, pixel, config.lesion_contrast,
                 config.jitter, zeros, np.ones_like(x))  # fmt: skip


def _render_base(scene: Scene) -> np.ndarray:
    """Body, lungs, heart, spine, clavicles, ribs and vascular markings (no noise)."""
    a, x, y = scene.anatomy, scene.x, scene.y
    p = scene.pixel
    body_r = (np.abs(x / a.body_half_width) ** 3 + np.abs((y - 0.25) / 1.2) ** 3) ** (1 / 3)
    image = AIR + (SOFT_TISSUE - AIR) * soft_mask(body_r - 1.0, 3 * p)
    lungs = scene.lungs[0] + scene.lungs[1]
    thorax = soft_mask(np.maximum(np.abs(x) - 0.75, y - 0.55), 0.1)
    image += LUNG_AIR * lungs + HEART * scene.heart
    image += BONE * soft_mask(np.abs(x - 0.01) - 0.055, 2 * p) * thorax  # spine
    image -= 0.08 * soft_mask(np.abs(x - 0.01) - 0.028, 2 * p) * (y < -0.25)  # trachea
    for side in (-1, 1):  # clavicles: oblique bands over the apices
        line = y + 0.64 - 0.13 * (side * x - 0.1)
        image += BONE * soft_mask(np.abs(line) - 0.03, 2 * p) * (side * x > 0.08) * (side * x < 0.8)
    # Posterior ribs: arcs that dip laterally, repeated every `rib_spacing`.
    phase = (y - 0.35 * (np.abs(x) - 0.05) ** 2) / a.rib_spacing + a.rib_phase
    ribs = np.clip((np.cos(2 * np.pi * phase) - 0.35) / 0.65, 0.0, 1.0)
    image += 0.7 * BONE * ribs * thorax
    texture = smooth_noise(np.random.default_rng(a.texture_seed), x.shape[0], 22)
    fine = smooth_noise(np.random.default_rng(a.texture_seed + 1), x.shape[0], 40)
    markings = np.zeros_like(x)
    for side in (-1, 1):
        hilum_d = np.hypot(x - side * 0.17, (y - 0.0) * 0.8)
        markings += scene.lung(side) * np.exp(-hilum_d / 0.4)
    vessels = np.clip(0.55 + 0.3 * texture + 0.25 * fine, 0.0, None)
    image += MARKINGS * markings * vessels * scene.marking_gain
    return image + a.exposure


def render_phantom(
    labels: np.ndarray | tuple[int, ...],
    anatomy: Anatomy,
    rng: np.random.Generator,
    config: PhantomConfig,
    extra_noise: float = 0.0,
) -> np.ndarray:
    """Render one radiograph: float32 [size, size] in [0, 1], 1 = radio-dense.

    `labels`: 0/1 per finding in FINDINGS order. `rng` draws lesion placement, shape and noise:
    it is split into one independent stream per finding plus one for noise, so switching one
    finding on leaves everything else in the image unchanged. `extra_noise` adds to the detector
    noise (per-site acquisition noise).
    """
    labels = np.asarray(labels)
    if labels.shape != (NUM_FINDINGS,):
        raise ValueError(f"labels must have {NUM_FINDINGS} entries in FINDINGS order")
    streams = rng.spawn(NUM_FINDINGS + 1)
    active = [FINDINGS[k] for k in np.flatnonzero(labels)]
    for name in active:
        anatomy = modify_anatomy(name, anatomy, streams[FINDINGS.index(name)], config.jitter)
    scene = _build_scene(anatomy, config)
    for name in active:
        draw_finding(name, scene, streams[FINDINGS.index(name)])
    image = _render_base(scene) + scene.delta
    noise_std = config.noise_std + extra_noise
    image += noise_std * streams[-1].standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)
