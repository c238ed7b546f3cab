"""The pixel baseline, the report and the CLI (ecl-sim at its defaults) on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.nih_dev_recipe import main, parse_args
from benchmarks.recipe_baselines import PixelBaseline, run_pixel_baseline
from benchmarks.recipe_data import PooledSplit, powered_mean
from benchmarks.recipe_report import mean_sd, paired_difference
from data_tools.labels import FINDINGS
from hospital_node.simulation.data import EvalSet

SIZE = 32


def make_rows(n: int, seed: int, *, size: int = SIZE) -> EvalSet:
    """Noise images; finding 0 adds a bright square top-left, finding 1 one bottom-right."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.4 + 0.1 * torch.rand(n, 1, size, size, generator=gen)
    labels = torch.zeros(n, len(FINDINGS))
    labels[:, 0] = (torch.rand(n, generator=gen) < 0.3).float()
    labels[:, 1] = (torch.rand(n, generator=gen) < 0.3).float()
    q = size // 4
    images[labels[:, 0] == 1, :, q : 2 * q, q : 2 * q] += 0.4
    images[labels[:, 1] == 1, :, 2 * q : 3 * q, 2 * q : 3 * q] += 0.4
    return EvalSet(images.clamp(0, 1), labels, tuple(f"P{seed}-{i}" for i in range(n)))


def test_pixel_baseline_finds_the_squares_and_chooses_c_on_val():
    split = PooledSplit("generated", make_rows(160, 1), make_rows(40, 2), make_rows(60, 3))
    result = run_pixel_baseline(split, PixelBaseline(pixels=8, cs=(1e-3, 1.0)))
    assert result["chosen_c"] in (1e-3, 1.0)
    assert result["test"]["per_finding"]["Atelectasis"] > 0.95
    assert result["test"]["per_finding"]["Effusion"] is None  # no positive anywhere
    assert set(result["val_mean_auc_by_c"]) == {"0.001", "1.0"}


def test_powered_mean_keeps_findings_with_ten_positives():
    per_finding = dict.fromkeys(FINDINGS, 0.5) | {"Atelectasis": 0.9}
    n_pos = [10] + [9] * (len(FINDINGS) - 1)
    assert powered_mean(per_finding, n_pos) == pytest.approx(0.9)
    assert powered_mean(per_finding, [0] * len(FINDINGS)) is None


def test_mean_sd_and_paired_differences_skip_missing_values():
    assert mean_sd([1.0, 3.0, None]) == {"mean": 2.0, "sd": pytest.approx(2**0.5), "n": 2}
    assert mean_sd([None]) == {"mean": None, "sd": None, "n": 0}
    splits = {
        "a": {"x": {"test": {"mean_auc": 0.7}}, "y": {"test": {"mean_auc": 0.6}}},
        "b": {"x": {"test": {"mean_auc": 0.8}}, "y": {"test": {"mean_auc": None}}},
    }
    diff = paired_difference(splits, "x", "y", "test", "mean_auc")
    assert diff["values"] == [pytest.approx(0.1), None] and diff["n"] == 1


def write_release(root: Path) -> Path:
    """A tiny NIH-format release: 48 patients, 1-3 images each, 64 px PNGs with the squares."""
    rng = np.random.default_rng(0)
    images = root / "images64"
    images.mkdir(parents=True)
    lines = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    ]
    for patient in range(1, 49):
        for follow_up in range(int(rng.integers(1, 4))):
            name = f"{patient:08d}_{follow_up:03d}.png"
            found = [f for f in FINDINGS[:3] if rng.random() < 0.35]
            pixels = rng.integers(90, 120, size=(64, 64)).astype(np.uint8)
            if FINDINGS[0] in found:
                pixels[16:32, 16:32] = 230
            Image.fromarray(pixels, mode="L").save(images / name)
            lines.append(
                f"{name},{'|'.join(found) or 'No Finding'},{follow_up},{patient},"
                f"{40 + patient % 30},{'MF'[patient % 2]},PA,2500,2500,0.143,0.143"
            )
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return root


def test_cli_runs_ecl_sim_at_its_defaults_and_writes_json_and_markdown(tmp_path):
    release = write_release(tmp_path / "nih")
    out, work = tmp_path / "results" / "recipe", tmp_path / "work"
    argv = ["--data", str(release), "--seeds", "0", "--work", str(work), "--out", str(out)]
    argv += ["--set", "training.min_steps=0"]  # 18 epochs of this tiny release: a few steps
    assert main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["splits"]) == {"seed 0"}
    assert set(report["summary"]) == {"pixel-logreg-16", "pixel-logreg-32", "ecl-sim-centralized"}
    sim = report["splits"]["seed 0"]["ecl-sim-centralized"]
    assert sim["overrides"] == ["training.min_steps=0"] and set(sim["test"]["per_finding"]) == set(
        FINDINGS
    )
    # the budget comes from the data: 18 epochs of the mean hospital's train split
    assert (
        sim["settings"]["training"]["epochs"] == 18.0
        and 0 < sim["settings"]["training"]["steps"] < 250
    )
    assert 0.0 <= sim["val"]["mean_auc"] <= 1.0
    assert report["summary"]["pixel-logreg-16"]["test.mean_auc"]["n"] == 1
    text = out.with_suffix(".md").read_text()
    assert "| Atelectasis (" in text and "`ecl-sim` centralized, defaults" in text
    assert "nothing is" in text.lower() and "not a benchmark" in text


def test_variants_are_named_rows_of_set_overrides():
    args = parse_args(["--variant", "lr0.3:consensus.learning_rate=0.3, training.epochs=40"])
    assert args.variants == {"lr0.3": ("consensus.learning_rate=0.3", "training.epochs=40")}
    with pytest.raises(SystemExit, match="NAME:KEY=VALUE"):
        parse_args(["--variant", "no-settings"])
