"""In-process measurements for benchmarks.bench_full_scale, run as a child process each so that
its peak memory is its own: `load` (every site folder, cold or cached) and `throughput` (data
path from the cache vs compact-model training). Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import monai  # noqa: F401  (imported before the first measurement: part of the fixed cost)
import numpy as np
import pydicom  # noqa: F401
import torch

from data_tools.labels import COMMON_TEST_SITE, LABELS_FILENAME
from hospital_node.data.site import DataConfig, SiteData, load_site, union_images


def memory_status() -> dict[str, float]:
    """Peak and current resident memory of this process, MiB (Linux /proc/self/status):
    VmHWM is the peak; RssAnon is private memory, RssFile the mapped cache pages, which the
    kernel can drop at any time."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


def site_folders(data: Path) -> list[Path]:
    """Hospitals N1..Nn, then common_test."""
    sites = [p for p in data.iterdir() if (p / LABELS_FILENAME).is_file()]
    return sorted(sites, key=lambda p: (p.name == COMMON_TEST_SITE, len(p.name), p.name))


def load_all(data: Path, config: DataConfig) -> tuple[dict[str, SiteData], dict[str, Any]]:
    """Every site folder through load_site; per-site timing and what was decoded."""
    loaded, per_site = {}, {}
    started = time.perf_counter()
    for folder in site_folders(data):
        site = load_site(folder, config)
        loaded[folder.name] = site
        per_site[folder.name] = {
            "images": len(site),
            "cache_hit": site.report.cache_hit,
            "decoded": site.report.n_decoded,
            "seconds": round(site.report.seconds, 2),
        }
    wall = time.perf_counter() - started
    images = sum(v["images"] for v in per_site.values())
    decoded = sum(v["decoded"] for v in per_site.values())
    return loaded, {
        "images": images,
        "decoded": decoded,
        "wall_s": round(wall, 2),
        "img_per_s": round(images / wall, 1),
        "sites": per_site,
    }


def cache_sizes(cache: Path, loaded: dict[str, SiteData], image_size: int) -> dict[str, Any]:
    """Bytes of the cache entries on disk, and what the float32 cache held for the same rows."""
    entries = list(cache.glob(f"sites/*/{image_size}px-*.npy"))
    on_disk = sum(p.stat().st_size for p in entries)
    rows = sum(len(np.load(p, mmap_mode="r", allow_pickle=False)) for p in entries)
    float32 = rows * image_size * image_size * 4 + 128 * len(entries)  # data + .npy headers
    dtype = {str(site.images.storage.dtype) for site in loaded.values()}
    return {
        "entries": len(entries),
        "rows": rows,
        "dtype": sorted(dtype),
        "bytes": on_disk,
        "float32_bytes_same_rows": float32,
        "ratio_to_float32": round(on_disk / float32, 4),
    }


def probe_load(args: argparse.Namespace) -> dict[str, Any]:
    config = DataConfig(
        image_size=args.image_size, cache_dir=args.cache, workers=args.workers,
        cache_dtype=args.dtype,
    )  # fmt: skip
    before = memory_status()  # torch, MONAI and pydicom imported: the fixed cost
    loaded, record = load_all(args.data, config)
    record["memory_before_load_mib"] = before
    record["memory_after_load_mib"] = memory_status()
    record["cache"] = cache_sizes(args.cache, loaded, args.image_size)
    # Touch nothing else: the peak is what holding every site (all 8 + common_test) costs.
    return record


def _rate(run, images_per_call: int, seconds: float) -> dict[str, float]:
    """Calls of `run` for about `seconds` (after one warm-up); images per second."""
    run()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        run()
        calls += 1
    return {"img_per_s": round(calls * images_per_call / elapsed, 1), "calls": calls}


def data_path_rates(train: list[SiteData], batch: int, seconds: float) -> dict[str, Any]:
    """Random batches from the cache as the simulation draws them: one batch per hospital per
    step (stacked), and one hospitals-times larger batch from the union (centralized)."""
    rng = np.random.default_rng(0)

    def per_site() -> torch.Tensor:
        return torch.stack([t.images.take(rng.integers(0, len(t), batch)) for t in train])

    union = union_images([t.images for t in train])

    def central() -> torch.Tensor:
        return union.take(rng.integers(0, len(union), batch * len(train)))

    return {
        "per_site_stacked": _rate(per_site, batch * len(train), seconds),
        "union_centralized": _rate(central, batch * len(train), seconds),
    }


def training_rate(hospitals: int, batch: int, image_size: int, seconds: float) -> dict:
    """Compact model, the simulation's batched step: `hospitals` stacked models, forward +
    backward on one batch each (no data loading: batches are fixed tensors)."""
    from hospital_node.training.functional import FunctionalModel, stacked_parameters
    from hospital_node.training.model import ModelConfig, build_model

    module = build_model(ModelConfig(architecture="compact", image_size=image_size))
    model = FunctionalModel(module)
    params = stacked_parameters(module, hospitals)
    images = torch.rand(hospitals, batch, 1, image_size, image_size)
    labels = (torch.rand(hospitals, batch, 14) < 0.1).float()

    def step() -> None:
        model.stacked_gradients(params, images, labels, None)

    return {**_rate(step, hospitals * batch, seconds), "threads": torch.get_num_threads()}


def probe_throughput(args: argparse.Namespace) -> dict[str, Any]:
    config = DataConfig(image_size=args.image_size, cache_dir=args.cache, cache_dtype=args.dtype)
    loaded, _ = load_all(args.data, config)
    train = [s.subset("train") for name, s in loaded.items() if name != COMMON_TEST_SITE]
    torch.set_num_threads(args.threads)
    data = data_path_rates(train, args.batch, args.seconds)
    training = training_rate(len(train), args.batch, args.image_size, args.seconds)
    slowest = min(v["img_per_s"] for v in data.values())
    return {
        "train_images": sum(len(t) for t in train),
        "batch_per_hospital": args.batch,
        "hospitals": len(train),
        "data_path": data,
        "training_compact": training,
        "data_over_training": round(slowest / training["img_per_s"], 1),
        "memory_mib": memory_status(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("probe", choices=("load", "throughput"))
    parser.add_argument("--data", type=Path, required=True, help="tree of site folders")
    parser.add_argument("--cache", type=Path, required=True, help="decode cache folder")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--dtype", default="uint8", choices=("uint8", "uint16"))
    parser.add_argument("--workers", type=int, default=2, help="load: decode processes")
    parser.add_argument("--batch", type=int, default=16, help="throughput: batch per hospital")
    parser.add_argument("--seconds", type=float, default=20.0, help="throughput: per rate")
    parser.add_argument("--threads", type=int, default=2, help="throughput: torch threads")
    args = parser.parse_args(argv)
    record = probe_load(args) if args.probe == "load" else probe_throughput(args)
    print(json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
