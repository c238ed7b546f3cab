"""How each of the 14 findings looks on the phantom: anatomy changes and intensity overlays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

# Base intensity changes at lesion_contrast 1.0 (PhantomConfig scales them); set with
# benchmarks/calibrate_phantom.py so that every finding is learnable at the default difficulty.
STRENGTH: dict[str, float] = {
    "Atelectasis": 0.30,
    "Effusion": 0.36,
    "Infiltration": 0.32,
    "Mass": 0.28,
    "Nodule": 0.45,
    "Pneumonia": 0.32,
    "Pneumothorax": 0.09,
    "Consolidation": 0.32,
    "Edema": 0.20,
    "Emphysema": 0.07,
    "Fibrosis": 0.45,
    "Pleural_Thickening": 0.40,
    "Hernia": 0.24,
}


@lru_cache(maxsize=16)
def _interpolation_matrix(size: int, cells: int) -> np.ndarray:
    """Gaussian interpolation weights [size, cells]: coarse noise -> smooth full-size field."""
    centres = (np.arange(cells) + 0.5) / cells
    pixels = (np.arange(size) + 0.5) / size
    w = np.exp(-0.5 * ((pixels[:, None] - centres[None, :]) * cells / 0.8) ** 2)
    return (w / np.sqrt((w**2).sum(axis=1, keepdims=True))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance smooth random field with about `cells` blobs across; resolution independent
    (the same draw gives the same pattern at any `size`)."""
    a = _interpolation_matrix(size, cells)
    return a @ rng.standard_normal((cells, cells), dtype=np.float32) @ a.T


def soft_mask(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """0..1 mask that is 1 where `signed_distance` < 0, with a linear edge `softness` wide."""
    return np.clip(0.5 - signed_distance / softness, 0.0, 1.0)


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest geometry (normalised coordinates); shared by a patient's images."""

    body_half_width: float
    lung_offset: float  # |x| of each lung's centre
    lung_half_width: float
    lung_top: float  # y of the apices
    diaphragm: tuple[float, float]  # lateral base y of the domes: (image-left, image-right) lung
    dome_height: float
    heart_center: tuple[float, float]
    heart_half_size: tuple[float, float]  # (half width, half height)
    tilt: float  # radians, patient rotation in the image plane
    rib_spacing: float
    rib_phase: float
    exposure: float  # global brightness offset
    texture_seed: int
    collapsed_side: int = 0  # set by atelectasis: image side (-1 / +1) of the volume loss
    dome_lift: tuple[float, float] = (0.0, 0.0)  # domes raised by volume loss, per side

    def lung_ellipse(self, side: int) -> tuple[float, float, float, float]:
        """(cx, cy, half width, half height) of the lung on image side -1 (left) or +1 (right)."""
        base = self.diaphragm[0 if side < 0 else 1]
        half_height = (base + 0.12 - self.lung_top) / 2.0
        return (
            side * self.lung_offset,
            self.lung_top + half_height,
            self.lung_half_width,
            half_height,
        )

    def dome(self, x: np.ndarray, side: int) -> np.ndarray:
        """y of the diaphragm dome under the lung on `side` (highest at the lung's centre)."""
        cx, _, lw, _ = self.lung_ellipse(side)
        k = 0 if side < 0 else 1
        bulge = np.clip(1.0 - ((x - cx) / (1.1 * lw)) ** 2, 0.0, None)
        return self.diaphragm[k] - self.dome_lift[k] - self.dome_height * bulge


@dataclass
class Scene:
    """Working layers of one render: grids, anatomy masks and the accumulated effects.
    Findings add to `delta` and scale `marking_gain` (vascular lung markings) in their region."""

    x: np.ndarray
    y: np.ndarray
    anatomy: Anatomy
    lungs: tuple[np.ndarray, np.ndarray]  # soft masks of the image-left and image-right lung
    heart: np.ndarray
    pixel: float  # one pixel in normalised units
    contrast: float
    jitter: float
    delta: np.ndarray
    marking_gain: np.ndarray

    def lung(self, side: int) -> np.ndarray:
        """Soft mask of the lung on image side -1 or +1."""
        return self.lungs[0 if side < 0 else 1]

    def lung_radius(self, side: int) -> np.ndarray:
        """Normalised elliptical radius of each pixel w.r.t. the lung on `side` (1 = outline)."""
        cx, cy, lw, lh = self.anatomy.lung_ellipse(side)
        return np.sqrt(((self.x - cx) / lw) ** 2 + ((self.y - cy) / lh) ** 2)

    def lateral(self, side: int) -> np.ndarray:
        """-1 (medial) .. +1 (lateral) across the lung on `side`."""
        cx, _, lw, _ = self.anatomy.lung_ellipse(side)
        return np.clip((self.x - cx) * side / lw, -1.0, 1.0)


def _strength(name: str, scene: Scene, rng: np.random.Generator) -> float:
    """This lesion's intensity change: base x difficulty contrast x per-lesion jitter."""
    return (
        STRENGTH[name] * scene.contrast * float(np.exp(0.12 * scene.jitter * rng.standard_normal()))
    )


def _scale(scene: Scene, rng: np.random.Generator) -> float:
    """Per-lesion size factor around 1 (spread grows with difficulty)."""
    return float(np.exp(0.12 * scene.jitter * rng.standard_normal()))


def _side(rng: np.random.Generator) -> int:
    return -1 if rng.random() < 0.5 else 1


def _lung_point(
    scene: Scene, rng: np.random.Generator, side: int, zone: tuple[float, float] = (0.15, 0.85)
) -> tuple[float, float]:
    """A point inside the lung on `side`, at a height fraction in `zone` (0 = apex, 1 = base)."""
    a = scene.anatomy
    cx, cy, lw, lh = a.lung_ellipse(side)
    px = cx + lw * float(rng.uniform(-0.55, 0.55))
    top = cy - lh * np.sqrt(1.0 - ((px - cx) / lw) ** 2) + 0.06
    base = float(a.dome(np.array(px), side)) - 0.06
    return px, top + float(rng.uniform(*zone)) * (base - top)


def _disc(scene: Scene, cx: float, cy: float, radius: float, edge: float = 0.25) -> np.ndarray:
    """Soft round blob (1 inside, linear edge `edge` x radius wide)."""
    return soft_mask(np.hypot(scene.x - cx, scene.y - cy) / radius - 1.0, edge)


def _atelectasis(scene: Scene, rng: np.random.Generator) -> None:
    """Plate-like band of collapsed lung in the lower zone (volume loss: see modify_anatomy)."""
    side = scene.anatomy.collapsed_side or _side(rng)
    px, py = _lung_point(scene, rng, side, (0.65, 0.9))
    angle = float(rng.uniform(-0.25, 0.25))
    dist = (scene.y - py) * np.cos(angle) - (scene.x - px) * np.sin(angle)
    band = soft_mask(np.abs(dist) - 0.035 * _scale(scene, rng), 2 * scene.pixel) * scene.lung(side)
    scene.delta += _strength("Atelectasis", scene, rng) * band


def _effusion(scene: Scene, rng: np.random.Generator) -> None:
    """Basal fluid with a meniscus rising laterally; blunts the costophrenic angle."""
    sides = (-1, 1) if rng.random() < 0.35 else (_side(rng),)
    strength = _strength("Effusion", scene, rng)
    for side in sides:
        height = 0.32 * _scale(scene, rng)
        base = scene.anatomy.diaphragm[0 if side < 0 else 1]
        meniscus = base - height * (0.5 + 0.7 * ((scene.lateral(side) + 1.0) / 2.0) ** 2)
        fluid = soft_mask(meniscus - scene.y, 0.05) * scene.lung(side)
        scene.delta += strength * fluid
        scene.marking_gain *= 1.0 - fluid


def _infiltration(scene: Scene, rng: np.random.Generator) -> None:
    """Patchy ill-defined haze in one or two zones."""
    patches = np.clip((smooth_noise(rng, scene.x.shape[0], 14) - 0.3) / 1.2, 0.0, 1.0)
    zone_y = float(rng.uniform(-0.4, 0.3))
    zone = np.exp(-(((scene.y - zone_y) / 0.3) ** 2))
    sides = (-1, 1) if rng.random() < 0.5 else (_side(rng),)
    lungs = sum(scene.lung(s) for s in sides)
    scene.delta += _strength("Infiltration", scene, rng) * patches * zone * lungs


def _mass(scene: Scene, rng: np.random.Generator) -> None:
    """Large (> 3 cm) lobulated opacity."""
    side = _side(rng)
    cx, cy = _lung_point(scene, rng, side, (0.25, 0.7))
    radius = 0.11 * _scale(scene, rng)
    theta = np.arctan2(scene.y - cy, scene.x - cx)
    phase = rng.uniform(0, 2 * np.pi, 2)
    lobes = 1.0 + 0.1 * np.sin(3 * theta + phase[0]) + 0.06 * np.sin(5 * theta + phase[1])
    blob = soft_mask(np.hypot(scene.x - cx, scene.y - cy) / (radius * lobes) - 1.0, 0.2)
    scene.delta += _strength("Mass", scene, rng) * blob


def _nodule(scene: Scene, rng: np.random.Generator) -> None:
    """One or two small round well-defined opacities."""
    strength = _strength("Nodule", scene, rng)
    for _ in range(1 if rng.random() < 0.7 else 2):
        cx, cy = _lung_point(scene, rng, _side(rng))
        scene.delta += strength * _disc(scene, cx, cy, 0.055 * _scale(scene, rng), 0.3)


def _pneumonia(scene: Scene, rng: np.random.Generator) -> None:
    """Lobar opacity bounded by a fissure, mottled, with air bronchograms (dark branching
    tubes radiating from the hilum): unlike consolidation it fills a lobe, not a round patch."""
    side = _side(rng)
    _, cy, _, lh = scene.anatomy.lung_ellipse(side)
    fissure = cy + float(rng.uniform(-0.1, 0.15)) * lh - 0.25 * scene.lateral(side) * lh
    lower = rng.random() < 0.6
    lobe = soft_mask((fissure - scene.y) if lower else (scene.y - fissure), 0.04) * scene.lung(side)
    mottle = 0.75 + 0.25 * smooth_noise(rng, scene.x.shape[0], 10)
    hx, hy = side * 0.17, 0.0
    angle = np.arctan2(scene.y - hy, scene.x - hx) + 0.3 * smooth_noise(rng, scene.x.shape[0], 6)
    tubes = np.exp(-(np.sin(5.0 * angle) ** 2) / 0.02) * soft_mask(
        0.12 - np.hypot(scene.x - hx, scene.y - hy), 0.1
    )
    strength = _strength("Pneumonia", scene, rng)
    scene.delta += strength * lobe * (mottle - 0.5 * tubes)
    scene.marking_gain *= 1.0 - lobe


def _pneumothorax(scene: Scene, rng: np.random.Generator) -> None:
    """Apical-lateral rim of free air: darker, no lung markings, a thin visceral pleural line."""
    side = _side(rng)
    _, cy, _, lh = scene.anatomy.lung_ellipse(side)
    rim = 0.66 - 0.1 * (_scale(scene, rng) - 1.0)
    r = scene.lung_radius(side)
    upper = soft_mask(scene.y - (cy - 0.1 * lh), 0.25)
    air = soft_mask(rim - r, 0.03) * upper * scene.lung(side)
    line = np.exp(-(((r - rim) / 0.015) ** 2)) * upper * scene.lung(side)
    strength = _strength("Pneumothorax", scene, rng)
    scene.delta += strength * (0.6 * line - air)
    scene.marking_gain *= 1.0 - air


def _consolidation(scene: Scene, rng: np.random.Generator) -> None:
    """Dense homogeneous rounded patch (no bronchograms, no lobar boundary), mid/lower zone."""
    side = _side(rng)
    cx, cy = _lung_point(scene, rng, side, (0.35, 0.85))
    size = 0.1 * _scale(scene, rng)
    blob = np.zeros_like(scene.x)
    for dx, dy in rng.normal(0.0, 0.6 * size, (3, 2)):
        blob = np.maximum(blob, _disc(scene, cx + dx, cy + dy, size, 0.15))
    patch = blob * scene.lung(side)
    scene.delta += _strength("Consolidation", scene, rng) * patch
    scene.marking_gain *= 1.0 - patch


def _edema(scene: Scene, rng: np.random.Generator) -> None:
    """Bilateral perihilar ('bat wing') haze with engorged vessels."""
    spread = _scale(scene, rng)
    haze = np.zeros_like(scene.x)
    for side in (-1, 1):
        wing = np.exp(
            -(((scene.x - side * 0.2) / (0.22 * spread)) ** 2) - ((scene.y / (0.32 * spread)) ** 2)
        )
        haze += wing * scene.lung(side)
    texture = 0.85 + 0.15 * smooth_noise(rng, scene.x.shape[0], 30)
    scene.delta += _strength("Edema", scene, rng) * haze * texture
    scene.marking_gain *= 1.0 + 0.6 * haze


def _emphysema(scene: Scene, rng: np.random.Generator) -> None:
    """Hyperlucent lungs with pruned markings (flat low diaphragm: see modify_anatomy)."""
    lungs = scene.lungs[0] + scene.lungs[1]
    scene.delta -= _strength("Emphysema", scene, rng) * lungs
    scene.marking_gain *= 1.0 - 0.55 * lungs


def _fibrosis(scene: Scene, rng: np.random.Generator) -> None:
    """Reticular net of fine lines, bilateral, peripheral and basal."""
    size = scene.x.shape[0]
    net = np.zeros_like(scene.x)
    for angle in rng.uniform(0, np.pi, 2):
        u = scene.x * np.cos(angle) + scene.y * np.sin(angle)
        phase = 6.0 * np.pi * u + 1.5 * smooth_noise(rng, size, 8)
        net = np.maximum(net, np.exp(-(np.sin(phase) ** 2) / 0.2))
    zone = np.zeros_like(scene.x)
    for side in (-1, 1):
        zone += scene.lung(side) * np.clip(scene.lung_radius(side) - 0.35, 0.0, 0.4) / 0.4
    basal = soft_mask(-0.1 - scene.y, 0.4)
    scene.delta += _strength("Fibrosis", scene, rng) * net * zone * basal


def _pleural_thickening(scene: Scene, rng: np.random.Generator) -> None:
    """Smooth band of soft tissue along the lateral chest wall (or an apical cap)."""
    sides = (-1, 1) if rng.random() < 0.3 else (_side(rng),)
    strength = _strength("Pleural_Thickening", scene, rng)
    for side in sides:
        thickness = 0.2 * _scale(scene, rng)
        band = soft_mask((1.0 - thickness) - scene.lung_radius(side), 0.05) * scene.lung(side)
        where = scene.lateral(side) if rng.random() < 0.75 else -scene.y - 0.2
        band *= np.clip(where * 2.0, 0.0, 1.0)
        scene.delta += strength * band
        scene.marking_gain *= 1.0 - band


def _hernia(scene: Scene, rng: np.random.Generator) -> None:
    """Hiatal hernia: rounded retrocardiac opacity just above the diaphragm with a gas bubble
    and an air-fluid level."""
    a = scene.anatomy
    radius = 0.1 * _scale(scene, rng)
    cx = float(rng.uniform(0.0, 0.12))
    cy = float(a.dome(np.array(cx), 1 if cx > 0 else -1)) - 0.7 * radius
    sac = _disc(scene, cx, cy, radius, 0.2)
    level = cy - float(rng.uniform(0.1, 0.4)) * radius
    gas = (
        sac
        * soft_mask(scene.y - level, 2 * scene.pixel)
        * soft_mask(np.hypot(scene.x - cx, scene.y - cy) / radius - 0.8, 0.2)
    )
    strength = _strength("Hernia", scene, rng)
    scene.delta += strength * (sac - 2.0 * gas)


DRAW: dict[str, Callable[[Scene, np.random.Generator], None]] = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": lambda scene, rng: None,  # the wider heart is an anatomy change
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Emphysema": _emphysema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}


def draw_finding(name: str, scene: Scene, rng: np.random.Generator) -> None:
    """Add finding `name` to `scene` (in place), drawing its randomness from `rng`."""
    DRAW[name](scene, rng)


def modify_anatomy(name: str, anatomy: Anatomy, rng: np.random.Generator, jitter: float) -> Anatomy:
    """Anatomy changes of a finding (before the scene is built); others return `anatomy`.

    Cardiomegaly widens the heart (cardiothoracic ratio > 0.5); emphysema lowers and flattens
    the diaphragm and widens the lungs; atelectasis lifts one hemidiaphragm dome and pulls the
    heart towards it; fibrosis lifts both domes a little (volume loss). Uses a child stream of
    `rng`, so the finding's overlay draws do not depend on the anatomy change.
    """
    (r,) = rng.spawn(1)
    spread = 0.06 * jitter
    if name == "Cardiomegaly":
        (hw, hh) = anatomy.heart_half_size
        factor = 1.5 + spread * r.standard_normal()
        return replace(anatomy, heart_half_size=(hw * factor, hh * (1.0 + 0.25 * (factor - 1.0))))
    if name == "Emphysema":
        low = 0.08 * (1.0 + spread * r.standard_normal())
        left, right = anatomy.diaphragm
        return replace(
            anatomy,
            diaphragm=(left + low, right + low),
            dome_height=anatomy.dome_height * 0.35,
            lung_half_width=anatomy.lung_half_width * 1.05,
        )
    if name == "Atelectasis":
        side = _side(r)
        left, right = anatomy.dome_lift
        lift = (left + 0.06, right) if side < 0 else (left, right + 0.06)
        hx, hy = anatomy.heart_center
        return replace(
            anatomy, dome_lift=lift, heart_center=(hx + 0.02 * side, hy), collapsed_side=side
        )
    if name == "Fibrosis":
        left, right = anatomy.dome_lift
        return replace(anatomy, dome_lift=(left + 0.03, right + 0.03))
    return anatomy
