"""Site loading throughput: cold (decode + cache write) vs cached pass, per image size, in img/s."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from data_tools.dicom_write import SITE_PROFILES, StudyMeta, derive_uid, write_dicom
from data_tools.labels import (
    DICOM_DIRNAME,
    LABELS_FILENAME,
    NUM_FINDINGS,
    LabelRow,
    write_label_table,
)
from data_tools.phantom import PhantomConfig, render_phantom, sample_anatomy
from hospital_node.data.cache import file_digest
from hospital_node.data.dicom import read_dicom_image
from hospital_node.data.site import DataConfig, load_site

DEFAULT_OUT = Path("build/bench/data.json")


def write_bench_site(
    site: Path, *, n_files: int, source_size: int, seed: int, only: range | None = None
) -> None:
    """n_files phantom radiographs cycling through the 8 SITE_PROFILES (every photometric,
    bit depth and transfer syntax), all at source_size px, plus labels.csv. `only` rewrites
    just those files' images (same UIDs)."""
    rows = []
    for i in range(n_files):
        if only is not None and i not in only:
            continue
        profile = dataclasses.replace(SITE_PROFILES[i % len(SITE_PROFILES)], matrix=source_size)
        phantom = PhantomConfig(size=source_size, difficulty=0.5)
        rng = np.random.default_rng([seed if only is None else seed + 1, i])
        labels = tuple(int(v) for v in rng.random(NUM_FINDINGS) < 0.1)
        image = render_phantom(np.asarray(labels), sample_anatomy(rng, phantom), rng, phantom)
        uid = derive_uid("bench", str(i))
        meta = StudyMeta(
            f"B{i:05d}", uid, derive_uid("bench-study", str(i)), derive_uid("s", str(i))
        )
        relative = f"{DICOM_DIRNAME}/{i:05d}.dcm"
        write_dicom(site / relative, image, profile, meta)
        rows.append(LabelRow(relative, uid, meta.patient_id, "train", labels))
    if only is None:
        write_label_table(site / LABELS_FILENAME, rows)


def timed(run: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def bench_size(site: Path, cache_root: Path, image_size: int, workers: int) -> dict[str, Any]:
    """One cold pass (empty cache) and the best of three cached passes at image_size."""
    config = DataConfig(
        image_size=image_size, cache_dir=cache_root / f"{image_size}", workers=workers
    )
    cold_s, data = timed(lambda: load_site(site, config))
    cached_s = min(timed(lambda: load_site(site, config))[0] for _ in range(3))
    n = len(data)
    return {
        "image_size": image_size,
        "images": n,
        "cold_s": round(cold_s, 3),
        "cold_img_per_s": round(n / cold_s, 1),
        "cached_s": round(cached_s, 4),
        "cached_img_per_s": round(n / cached_s, 1),
    }


def bench_incremental(site: Path, cache_root: Path, image_size: int, args: Any) -> dict:
    """Change 1% of the files, reload: only those are decoded, the rest comes from the cache."""
    changed = range(max(1, args.files // 100))
    write_bench_site(
        site, n_files=args.files, source_size=args.source_size, seed=args.seed, only=changed
    )
    config = DataConfig(image_size=image_size, cache_dir=cache_root / f"{image_size}")
    seconds, data = timed(lambda: load_site(site, config))
    return {
        "image_size": image_size,
        "changed_files": len(changed),
        "decoded": data.report.n_decoded,
        "seconds": round(seconds, 3),
        "img_per_s": round(len(data) / seconds, 1),
    }


def bench_components(site: Path, image_size: int) -> dict[str, Any]:
    """Where the cold pass goes: content hashing vs decoding, and decode speed per syntax."""
    files = sorted((site / DICOM_DIRNAME).glob("*.dcm"))
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    hash_s, _ = timed(lambda: [file_digest(f) for f in files])
    per_syntax: dict[str, list[float]] = {}
    for f in files:
        syntax = pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        seconds, _ = timed(lambda f=f: read_dicom_image(f, image_size=image_size))
        per_syntax.setdefault(syntax, []).append(seconds)
    decode_s = sum(sum(v) for v in per_syntax.values())
    return {
        "files": len(files),
        "megabytes": round(total_mb, 2),
        "hash_img_per_s": round(len(files) / hash_s, 1),
        "hash_mb_per_s": round(total_mb / hash_s, 1),
        "decode_img_per_s": round(len(files) / decode_s, 1),
        "decode_img_per_s_by_syntax": {
            k: round(len(v) / sum(v), 1) for k, v in sorted(per_syntax.items())
        },
    }


def print_table(results: dict[str, Any]) -> None:
    print(f"{'size':>5} {'images':>7} {'cold img/s':>11} {'cached img/s':>13} {'speed-up':>9}")
    for row in results["passes"]:
        ratio = row["cached_img_per_s"] / row["cold_img_per_s"]
        print(
            f"{row['image_size']:>5} {row['images']:>7} {row['cold_img_per_s']:>11} "
            f"{row['cached_img_per_s']:>13} {ratio:>8.0f}x"
        )
    inc = results["incremental"]
    print(
        f"{inc['changed_files']} changed files at {inc['image_size']} px: {inc['decoded']} "
        f"decoded, reload {inc['seconds']} s ({inc['img_per_s']} img/s)"
    )
    parts = results["components"]
    print(
        f"hash {parts['hash_img_per_s']} img/s ({parts['hash_mb_per_s']} MB/s) vs decode "
        f"{parts['decode_img_per_s']} img/s at {parts['image_size']} px; by syntax: "
        + ", ".join(f"{k} {v}" for k, v in parts["decode_img_per_s_by_syntax"].items())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=0, help="DataConfig.workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        site = work / "site"
        setup_s, _ = timed(
            lambda: write_bench_site(
                site, n_files=args.files, source_size=args.source_size, seed=args.seed
            )
        )
        first = next((site / DICOM_DIRNAME).glob("*.dcm"))
        for size in args.sizes:  # warm-up: imports, codec start-up, resize objects
            read_dicom_image(first, image_size=size)
        passes = [bench_size(site, work / "cache", s, args.workers) for s in args.sizes]
        incremental = bench_incremental(site, work / "cache", max(args.sizes), args)
        components = bench_components(site, max(args.sizes)) | {"image_size": max(args.sizes)}
        profiles = (SITE_PROFILES[i % len(SITE_PROFILES)] for i in range(args.files))
        syntaxes = Counter(p.transfer_syntax.name for p in profiles)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "benchmark": "data",
        "command": " ".join(
            ["python -m benchmarks.bench_data", *(argv if argv is not None else sys.argv[1:])]
        ),
        "files": args.files,
        "source_size": args.source_size,
        "files_by_transfer_syntax": dict(syntaxes),
        "threads": args.threads,
        "workers": args.workers,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "setup_s": round(setup_s, 1),
        "passes": passes,
        "incremental": incremental,
        "components": components,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
