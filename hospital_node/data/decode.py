"""Decode a batch of site files into rows of the cache's integer .npy, in-process or in a pool."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from hospital_node.data.cache import RowFile
from hospital_node.data.dicom import DicomReadError, read_dicom
from hospital_node.data.images import quantize

logger = logging.getLogger(__name__)

_CHUNK = 8  # files per pool task: amortises inter-process overhead, keeps progress smooth
# Starting the pool costs seconds per worker (each imports torch and MONAI): below this many
# files the site is decoded in-process.
POOL_MIN_FILES = 256


class DecodeOutcome(NamedTuple):
    """Result of one file: `reason` is empty on success (then the UID is the file's own)."""

    reason: str
    detail: str
    sop_instance_uid: str


def decode_into(path: str, image_size: int, out: RowFile, row: int) -> DecodeOutcome:
    """Decode `path` into row `row` of `out` (quantized to its dtype); any failure becomes an
    outcome, never an exception."""
    try:
        image, ds = read_dicom(Path(path), image_size=image_size)
    except DicomReadError as exc:
        return DecodeOutcome(exc.reason, exc.detail, "")
    except OSError as exc:
        return DecodeOutcome("missing_file", f"cannot read the file: {exc}", "")
    except Exception as exc:  # a decoder bug must not stop the node: record and go on
        logger.exception("unexpected error decoding %s", path)
        return DecodeOutcome("decode_failed", f"{type(exc).__name__}: {exc}", "")
    out.write(row, quantize(image, out.dtype))
    return DecodeOutcome("", "", str(ds.get("SOPInstanceUID", "") or "").strip())


def _decode_chunk(
    chunk: list[tuple[str, int]], image_size: int, scratch_path: str
) -> list[DecodeOutcome]:
    """Pool task: open the scratch file in this process and fill the chunk's rows."""
    out = RowFile(Path(scratch_path))
    try:
        return [decode_into(path, image_size, out, row) for path, row in chunk]
    finally:
        out.close()


def _init_worker() -> None:
    # One intra-op thread per worker: the pool is the parallelism.
    torch.set_num_threads(1)


def _in_process(tasks: list[tuple[str, int]], image_size: int, out: RowFile) -> Iterator:
    for path, row in tasks:
        yield decode_into(path, image_size, out, row)


def _in_pool(
    tasks: list[tuple[str, int]], image_size: int, scratch_path: Path, workers: int
) -> Iterator[DecodeOutcome]:
    # spawn, not fork: a forked child of a process that already ran torch ops can deadlock
    # in OpenMP. Only (path, row) pairs and small outcomes cross the process boundary;
    # the images go straight into the scratch file (pwrite, one row each).
    context = multiprocessing.get_context("spawn")
    chunks = [tasks[i : i + _CHUNK] for i in range(0, len(tasks), _CHUNK)]
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(_decode_chunk, c, image_size, str(scratch_path)) for c in chunks]
        for future in futures:
            yield from future.result()


def decode_files(
    tasks: list[tuple[str, int]],
    out: RowFile,
    image_size: int,
    workers: int,
    progress: bool,
) -> list[DecodeOutcome]:
    """Decode each (path, row) into that row of `out`."""
    if not tasks:
        return []
    if workers > 0 and len(tasks) >= POOL_MIN_FILES:
        results = _in_pool(tasks, image_size, out.path, workers)
    else:
        results = _in_process(tasks, image_size, out)
    bar = tqdm(results, total=len(tasks), desc="decoding", unit="file", disable=not progress)
    return list(bar)
