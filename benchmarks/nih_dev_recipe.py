"""Real-radiograph check: `ecl-sim` centralized at its defaults vs pixel baselines on nih-dev.

For each split seed: `ecl-data nih` partitions /work/shared/data/nih-dev into 8 hospitals plus
common_test (patient level). The product trains as a researcher runs it,
`ecl-sim --data SPLIT --methods centralized` with no setting changed (only where it writes
and how many threads it uses); logistic regressions on 16 / 32 px pixels train on the same
pooled train splits and choose C on the pooled val splits. Everything is scored on
common_test; nothing is chosen on a test set. `--variant` adds `ecl-sim` rows with settings
changed (how the defaults were compared).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.nih_dev_recipe --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from benchmarks.recipe_baselines import PixelBaseline, run_pixel_baseline
from benchmarks.recipe_data import load_pooled_split
from benchmarks.recipe_report import markdown, paired_difference, summarise
from benchmarks.recipe_sim import run_sim_reference
from data_tools.cli import main as ecl_data_main
from data_tools.labels import FINDINGS

DEFAULT_DATA = Path("/work/shared/data/nih-dev")
SIM = "ecl-sim-centralized"
BASELINES = ("pixel-logreg-16", "pixel-logreg-32")
LABELS = {
    "pixel-logreg-16": "logistic regression, 16 px pixels",
    "pixel-logreg-32": "logistic regression, 32 px pixels",
    SIM: "`ecl-sim` centralized, defaults",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nih_dev_recipe",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NIH release folder")
    parser.add_argument(
        "--images-dir", type=Path, default=None, help="flat PNG folder (default: DATA/images64)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated `ecl-data nih` seeds")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("build/nih_dev_recipe"),
        help="site trees, decoded-image cache and ecl-sim runs go here",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/nih_dev_recipe"),
        help="writes OUT.json and OUT.md",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="an extra ecl-sim row with these --set overrides (repeatable)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an ecl-sim override for every row, defaults included (quick looks, tests)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.images_dir = args.images_dir or args.data / "images64"
    args.variants = dict(_variant(v) for v in args.variant)
    return args


def _variant(text: str) -> tuple[str, tuple[str, ...]]:
    name, _, sets = text.partition(":")
    if not name or "=" not in sets:
        raise SystemExit(f"--variant {text!r}: write NAME:KEY=VALUE[,KEY=VALUE]")
    return name, tuple(s.strip() for s in sets.split(",") if s.strip())


def ensure_split(args: argparse.Namespace, seed: int) -> Path:
    """`ecl-data nih` into WORK/nih-sSEED (a re-run skips the DICOM files already written)."""
    out = args.work / f"nih-s{seed}"
    argv = ["nih", "--nih-dir", str(args.data), "--images-dir", str(args.images_dir)]
    argv += ["--out", str(out), "--size", "64", "--seed", str(seed), "--no-progress"]
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            code = ecl_data_main(argv)
        finally:
            sys.stdout = stdout
    if code != 0:
        raise SystemExit(f"ecl-data nih failed for seed {seed} (exit {code}); see its message")
    return out


def run_split(args: argparse.Namespace, seed: int) -> dict:
    """Every method on one split seed."""
    split_dir = ensure_split(args, seed)
    split = load_pooled_split(split_dir, image_size=64, cache_dir=args.work / "cache")
    methods: dict[str, dict] = {}
    for name in BASELINES:
        started = time.perf_counter()
        pixels = int(name.rsplit("-", 1)[1])
        methods[name] = run_pixel_baseline(split, PixelBaseline(pixels=pixels))
        methods[name]["seconds"] = time.perf_counter() - started
    for name, overrides in {SIM: (), **args.variants}.items():
        print(f"split {seed}: {name} ...", flush=True)
        methods[name] = run_sim_reference(
            work=args.work,
            name=name,
            split=split,
            split_dir=split_dir,
            seed=seed,
            threads=args.threads,
            overrides=(*args.sets, *overrides),
        )
    sizes = {p: len(getattr(split, p)) for p in ("train", "val", "test")}
    return {
        "sizes": sizes,
        "test_positives": split.test.labels.sum(0).int().tolist(),
        "methods": methods,
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (ecl-sim, ecl-data)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_report(args: argparse.Namespace, per_split: dict, timing: dict) -> dict:
    """The JSON report: settings, per-split results, summaries and paired differences."""
    splits = {name: s["methods"] for name, s in per_split.items()}
    methods = [*LABELS, *(m for m in args.variants if m not in LABELS)]
    summary = summarise(splits, methods)
    best = max(BASELINES, key=lambda m: summary[m]["test.mean_auc"]["mean"] or 0.0)
    paired = [
        {
            "label": f"{LABELS.get(m, m)} - {LABELS[best]}",
            "metric": f"{part}.{key}",
            **paired_difference(splits, m, best, part, key),
        }
        for m in (SIM, *args.variants)
        for part, key in (("test", "mean_auc"), ("test", "powered_mean_auc"))
    ]
    positives = {
        f: sum(s["test_positives"][i] for s in per_split.values()) for i, f in enumerate(FINDINGS)
    }
    first = next(iter(splits.values()))[SIM]
    return {
        "title": "`ecl-sim` centralized at its defaults vs pixel baselines on nih-dev (970 images)",
        "preamble": _preamble(args, per_split, timing),
        "settings": {
            "seeds": args.seeds,
            "variants": {k: list(v) for k, v in args.variants.items()},
            "ecl_sim_defaults": first["settings"],
            "steps_per_split": {
                n: m[SIM]["settings"]["training"]["steps"] for n, m in splits.items()
            },
            "threads": args.threads,
            "machine": platform.platform(),
            "torch": torch.__version__,
            **timing,
        },
        "splits": splits,
        "sizes": {n: s["sizes"] for n, s in per_split.items()},
        "summary": summary,
        "paired": paired,
        "best_baseline": best,
        "test_positives": positives,
    }


def _preamble(args: argparse.Namespace, per_split: dict, timing: dict) -> list[str]:
    sizes = "; ".join(
        f"{n}: train {s['sizes']['train']}, val {s['sizes']['val']}, common_test "
        f"{s['sizes']['test']}"
        for n, s in per_split.items()
    )
    variants = "".join(f" --set {v}" for v in args.sets)
    variants += "".join(f" --variant '{k}:{','.join(v)}'" for k, v in args.variants.items())
    return [
        "A 970-image check on real radiographs, not a benchmark: 260 patients, common_test",
        "about 180 images, so one image moves a rare finding's AUC a lot.",
        "",
        f"`OMP_NUM_THREADS={args.threads} python -m benchmarks.nih_dev_recipe --seeds "
        f"{','.join(map(str, args.seeds))}{variants}`"
        f" ({timing['seconds'] / 60:.1f} min wall, {timing['cpu_seconds'] / 60:.1f} min CPU;"
        f" {args.threads} thread(s); 5-min load average {timing['load_average_5min'][0]:.1f}"
        f" at the start, {timing['load_average_5min'][1]:.1f} at the end, on a shared 2-core"
        " machine).",
        "",
        f"Splits (`ecl-data nih --size 64 --seed S`, 8 hospitals, dirichlet): {sizes}.",
        "`ecl-sim` runs `--data SPLIT --methods centralized --seed S` with its defaults (its",
        "centralized reference trains on the pooled hospitals' train splits); the logistic",
        "regressions train on the same rows and choose C on the pooled val splits. Nothing is",
        "chosen on a test set. Mean AUC: macro mean over the findings with a positive in",
        "common_test (the product's definition); sd over split seeds.",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    started, load_before = time.perf_counter(), os.getloadavg()[1]
    per_split = {f"seed {seed}": run_split(args, seed) for seed in args.seeds}
    timing = {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": _cpu_seconds(),
        "load_average_5min": [load_before, os.getloadavg()[1]],
    }
    report = build_report(args, per_split, timing)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report, LABELS))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
