"""On-disk cache of a site's decoded images: one integer .npy (read memory-mapped) plus a JSON
index per entry; rows are written with pwrite and every entry is checked before it is used."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import pydicom

from hospital_node.data.dicom import PIPELINE_VERSION
from hospital_node.data.images import CACHE_DTYPES, dequantize, quantize

logger = logging.getLogger(__name__)

CACHE_FORMAT = "ecl-site-cache"
# 2: integer pixels (uint8 by default), a crc32 and byte size of the .npy in the index.
CACHE_FORMAT_VERSION = 2
_HASH_CHUNK = 1 << 20
_CRC_CHUNK = 8 << 20
_STALE_TEMP_SECONDS = 6 * 3600


def default_cache_dir() -> Path:
    """$ECL_CACHE_DIR, else $XDG_CACHE_HOME/ecl-hospitals, else ~/.cache/ecl-hospitals.

    Never inside the site folder: hospitals mount their data read-only in the container.
    """
    explicit = os.environ.get("ECL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ecl-hospitals"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex); a changed file gets a new cache key."""
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def cache_key(digests: list[str], image_size: int, dtype: str = "uint8") -> str:
    """sha256 over the ordered file digests and every setting that changes a stored pixel."""
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "pipeline": PIPELINE_VERSION,
        "image_size": image_size,
        "dtype": dtype,
        # A decoder or resampler upgrade may change pixels: rebuild once rather than mix.
        "pydicom": pydicom.__version__,
        "monai": monai.__version__,
        "digests": digests,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]


@dataclass(frozen=True)
class CachedFile:
    """What decoding one file gave: a row of the image array, or a skip reason."""

    digest: str
    row: int | None = None  # row in the entry's image array when decoded
    sop_instance_uid: str = ""  # (0008,0018) read from the file itself
    reason: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        if self.row is not None:
            return {"digest": self.digest, "row": self.row, "uid": self.sop_instance_uid}
        return {"digest": self.digest, "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> CachedFile:
        if "row" in item:
            return cls(str(item["digest"]), int(item["row"]), str(item.get("uid", "")))
        return cls(str(item["digest"]), reason=str(item["reason"]), detail=str(item["detail"]))


def file_crc32(path: Path) -> int:
    """crc32 of a file's bytes: catches a cut-off or overwritten cache file (not an attacker:
    the cache lives on the node's own disk) at ~1 GB/s, without mapping the file."""
    crc = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


class RowFile:
    """A .npy file of image rows, written row by row with os.pwrite: no memory map, so
    decoding a large site never grows the process's resident memory. Safe across processes
    (each writes its own rows)."""

    def __init__(self, path: Path) -> None:
        with Path(path).open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran or len(shape) != 4:
            raise ValueError(f"{path} is not a C-order [N, 1, S, S] array")
        self.path = Path(path)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> RowFile:
        """A new zero-filled (sparse) .npy of `shape` and `dtype`."""
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": tuple(shape),
        }
        with Path(path).open("wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.truncate(fh.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return cls(path)

    def write(self, row: int, values: np.ndarray) -> None:
        """Store one row ([S, S] or [1, S, S] of this file's dtype)."""
        if not 0 <= row < self.shape[0]:
            raise IndexError(f"row {row} outside {self.path.name} ({self.shape[0]} rows)")
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"row of {len(data)} bytes, expected {self.row_bytes}")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY)
        os.pwrite(self._fd, data, self.offset + row * self.row_bytes)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def convert_rows(stored: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows of an entry stored as another integer type, re-quantized to `dtype`."""
    if stored.dtype == dtype:
        return stored
    return quantize(dequantize(stored).numpy(), dtype)


@dataclass(frozen=True)
class CacheEntry:
    """A decoded site: images [n_ok, 1, S, S] (read-only memmap, integer), a CachedFile per
    digest."""

    key: str
    images: np.ndarray
    files: tuple[CachedFile, ...]


def _temp_path(path: Path) -> Path:
    return path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temp file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


class SiteCache:
    """The cache folder of one site at one image size: `<root>/sites/<name>-<path hash>/`.

    Entries are `<size>px-<key>.npy` (uint8 or uint16, raw .npy, no pickle) and
    `<size>px-<key>.json`; the JSON, renamed into place last, records the .npy's byte size and
    crc32, so an entry without it, or whose .npy differs from it, is never read.
    """

    def __init__(self, root: Path, site_dir: Path, image_size: int, dtype: str = "uint8") -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype {dtype!r}: choose one of {sorted(CACHE_DTYPES)}")
        where = hashlib.sha256(str(site_dir.resolve()).encode()).hexdigest()[:12]
        self.folder = root / "sites" / f"{site_dir.name}-{where}"
        self.image_size = image_size
        self.dtype = CACHE_DTYPES[dtype]
        self.prefix = f"{image_size}px-"

    def _paths(self, key: str) -> tuple[Path, Path]:
        stem = self.folder / f"{self.prefix}{key}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def load(self, key: str) -> CacheEntry | None:
        """The entry for `key`, or None when absent or unusable (then it is rebuilt)."""
        return self._read(key, self.dtype)

    def _read(self, key: str, dtype: np.dtype | None) -> CacheEntry | None:
        """An entry checked against its index (dtype None: any cache dtype)."""
        npy, index = self._paths(key)
        if not index.is_file() or not npy.is_file():
            return None
        try:
            meta = json.loads(index.read_text())
            if meta.get("format_version") != CACHE_FORMAT_VERSION:
                logger.info("cache entry %s has an older format; it will be replaced", index)
                return None
            problem = _integrity_problem(npy, meta, key)
            files = tuple(CachedFile.from_dict(item) for item in meta["files"])
            images = None if problem else np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"unreadable ({exc})"
        if not problem:
            n_rows = sum(f.row is not None for f in files)
            expected = (n_rows, 1, self.image_size, self.image_size)
            wanted = (dtype,) if dtype is not None else tuple(CACHE_DTYPES.values())
            if images.shape != expected or images.dtype not in wanted:
                problem = f"holds {images.dtype} {images.shape}, its index says {expected}"
        if problem:
            logger.warning("cache entry %s: %s; not used, it will be rebuilt", npy, problem)
            return None
        return CacheEntry(key, images, files)

    def previous_files(self) -> dict[str, tuple[CachedFile, np.ndarray]]:
        """Digest -> (outcome, image array) from existing entries at this size, newest first
        wins: a site that gained or changed a few files re-decodes only those."""
        known: dict[str, tuple[CachedFile, np.ndarray]] = {}
        indexes = sorted(self.folder.glob(f"{self.prefix}*.json"), key=_mtime, reverse=True)
        for index in indexes:
            entry = self._read(index.stem[len(self.prefix) :], None)
            if entry is None:
                continue
            for cached in entry.files:
                known.setdefault(cached.digest, (cached, entry.images))
        return known

    def scratch(self, n_files: int) -> RowFile:
        """A temp .npy with one zeroed row per file, for decoders to write into."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        path = self.folder / f".tmp-{uuid.uuid4().hex}-scratch.npy"
        shape = (n_files, 1, self.image_size, self.image_size)
        return RowFile.create(path, shape, self.dtype)

    def commit(self, key: str, scratch: RowFile, files: list[CachedFile]) -> CacheEntry:
        """Keep the decoded rows of `scratch` as entry `key` (temp + rename), drop stale entries."""
        npy, index = self._paths(key)
        scratch.close()
        ok_rows = [i for i, f in enumerate(files) if f.row is not None]
        if len(ok_rows) == len(files):
            os.replace(scratch.path, npy)
        else:
            tmp = _temp_path(npy)
            shape = (len(ok_rows), 1, self.image_size, self.image_size)
            final = RowFile.create(tmp, shape, self.dtype)
            source = np.load(scratch.path, mmap_mode="r", allow_pickle=False)
            for new_row, old_row in enumerate(ok_rows):
                final.write(new_row, source[old_row])
            final.close()
            del source
            os.replace(tmp, npy)
            scratch.path.unlink(missing_ok=True)
        payload = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_FORMAT_VERSION,
            "key": key,
            "image_size": self.image_size,
            "dtype": self.dtype.name,
            "npy_bytes": npy.stat().st_size,
            "npy_crc32": file_crc32(npy),
            "pipeline_version": PIPELINE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": [f.to_dict() for f in _renumber(files)],
        }
        write_json_atomic(index, payload)
        self._remove_other_entries(key)
        entry = self.load(key)
        if entry is None:
            raise OSError(f"cache entry {index} vanished right after writing; check {self.folder}")
        return entry

    def _remove_other_entries(self, key: str) -> None:
        """Older entries at this size describe a previous state of the site folder."""
        for path in self.folder.glob(f"{self.prefix}*"):
            if path.stem != f"{self.prefix}{key}":
                path.unlink(missing_ok=True)  # readers holding a memmap keep their pages

    def _remove_stale_temps(self) -> None:
        """Temp files left by a killed process (live writers' temps are younger)."""
        now = time.time()
        for path in self.folder.glob(".tmp-*"):
            if now - _mtime(path) > _STALE_TEMP_SECONDS:
                path.unlink(missing_ok=True)


def _integrity_problem(npy: Path, meta: dict[str, Any], key: str) -> str:
    """Why the .npy cannot be trusted ('' when its key, size and crc32 match the index)."""
    if meta.get("key") != key:
        return f"index names key {meta.get('key')!r}"
    size = npy.stat().st_size
    if size != meta["npy_bytes"]:
        return f"{size} bytes on disk, {meta['npy_bytes']} when written (cut off or replaced)"
    if file_crc32(npy) != meta["npy_crc32"]:
        return "content differs from when it was written (crc32 mismatch)"
    return ""


def _renumber(files: list[CachedFile]) -> list[CachedFile]:
    """Row numbers after dropping the rows of skipped files (rows follow file order)."""
    out, row = [], 0
    for f in files:
        if f.row is None:
            out.append(f)
        else:
            out.append(CachedFile(f.digest, row, f.sop_instance_uid))
            row += 1
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
