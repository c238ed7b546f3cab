"""Pixel baseline: standardised logistic regression on downsampled pixels, C chosen on val."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

from benchmarks.recipe_data import PooledSplit, score
from hospital_node.simulation.data import EvalSet

DEFAULT_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class PixelBaseline:
    """Logistic regression per finding on `pixels` x `pixels` area-downsampled images."""

    pixels: int = 32
    cs: tuple[float, ...] = DEFAULT_CS
    max_iter: int = 2000


def pixel_features(rows: EvalSet, pixels: int) -> np.ndarray:
    """[N, pixels^2] area-averaged pixels (what a 'look at the pixels' model sees)."""
    small = F.adaptive_avg_pool2d(rows.images, (pixels, pixels))
    return small.flatten(1).numpy().astype(np.float64)


def fit_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, c: float, max_iter: int
) -> np.ndarray:
    """Probabilities [N, 14]; a finding with one class only in train gets its train rate."""
    out = np.empty((len(test_x), train_y.shape[1]))
    for k in range(train_y.shape[1]):
        column = train_y[:, k]
        if column.min() == column.max():
            out[:, k] = column.mean()
            continue
        model = LogisticRegression(C=c, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train_x, column)
        out[:, k] = model.predict_proba(test_x)[:, 1]
    return out


def run_pixel_baseline(split: PooledSplit, config: PixelBaseline) -> dict:
    """Fit on pooled train, choose C by val mean AUC, report common_test."""
    scaler = StandardScaler().fit(pixel_features(split.train, config.pixels))
    feats = {
        name: scaler.transform(pixel_features(getattr(split, name), config.pixels))
        for name in ("train", "val", "test")
    }
    train_y = split.train.labels.numpy()
    val_by_c = {}
    for c in config.cs:
        probs = fit_predict(feats["train"], train_y, feats["val"], c=c, max_iter=config.max_iter)
        val_by_c[c] = score(split.val.labels, probs).mean_auc
    chosen = max(config.cs, key=lambda c: (val_by_c[c] or 0.0, -c))
    result = {"chosen_c": chosen, "val_mean_auc_by_c": {str(c): v for c, v in val_by_c.items()}}
    probs = fit_predict(feats["train"], train_y, feats["test"], c=chosen, max_iter=config.max_iter)
    result["test"] = score(split.test.labels, probs).to_dict()
    result["val"] = {"mean_auc": val_by_c[chosen]}
    return result
