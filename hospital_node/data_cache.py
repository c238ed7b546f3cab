"""On-disk cache of a site's decoded images: one memory-mapped .npy plus a JSON index per entry."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import pydicom

from hospital_node.dicom import PIPELINE_VERSION

logger = logging.getLogger(__name__)

CACHE_FORMAT = "ecl-site-cache"
CACHE_FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20
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


def cache_key(digests: list[str], image_size: int) -> str:
    """sha256 over the ordered file digests and every setting that changes a decoded pixel."""
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "pipeline": PIPELINE_VERSION,
        "image_size": image_size,
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


@dataclass(frozen=True)
class CacheEntry:
    """A decoded site: images [n_ok, 1, S, S] (copy-on-write memmap), a CachedFile per digest."""

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

    Entries are `<size>px-<key>.npy` (float32, raw .npy, no pickle) and `<size>px-<key>.json`;
    the JSON is renamed into place last, so an entry without it is never read.
    """

    def __init__(self, root: Path, site_dir: Path, image_size: int) -> None:
        where = hashlib.sha256(str(site_dir.resolve()).encode()).hexdigest()[:12]
        self.folder = root / "sites" / f"{site_dir.name}-{where}"
        self.image_size = image_size
        self.prefix = f"{image_size}px-"

    def _paths(self, key: str) -> tuple[Path, Path]:
        stem = self.folder / f"{self.prefix}{key}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def load(self, key: str) -> CacheEntry | None:
        """The entry for `key`, or None when absent or unusable (then it is rebuilt)."""
        npy, index = self._paths(key)
        if not index.is_file() or not npy.is_file():
            return None
        try:
            meta = json.loads(index.read_text())
            files = tuple(CachedFile.from_dict(item) for item in meta["files"])
            # mode "c": copy-on-write pages, so tensors over it are writable yet the file is not.
            images = np.load(npy, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("cache entry %s is unreadable (%s); rebuilding it", index, exc)
            return None
        n_rows = sum(f.row is not None for f in files)
        expected = (n_rows, 1, self.image_size, self.image_size)
        if meta.get("key") != key or images.shape != expected or images.dtype != np.float32:
            logger.warning("cache entry %s does not match its index; rebuilding it", index)
            return None
        return CacheEntry(key, images, files)

    def previous_files(self) -> dict[str, tuple[CachedFile, np.ndarray]]:
        """Digest -> (outcome, image array) from existing entries at this size, newest first
        wins: a site that gained or changed a few files re-decodes only those."""
        known: dict[str, tuple[CachedFile, np.ndarray]] = {}
        indexes = sorted(self.folder.glob(f"{self.prefix}*.json"), key=_mtime, reverse=True)
        for index in indexes:
            entry = self.load(index.stem[len(self.prefix) :])
            if entry is None:
                continue
            for cached in entry.files:
                known.setdefault(cached.digest, (cached, entry.images))
        return known

    def scratch(self, n_files: int) -> tuple[Path, np.ndarray]:
        """A temp .npy memmap with one zeroed row per file, for decoders to write into."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        path = self.folder / f".tmp-{uuid.uuid4().hex}-scratch.npy"
        shape = (n_files, 1, self.image_size, self.image_size)
        return path, np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)

    def commit(
        self, key: str, scratch_path: Path, scratch: np.ndarray, files: list[CachedFile]
    ) -> CacheEntry:
        """Keep the decoded rows of `scratch` as entry `key` (temp + rename), drop stale entries."""
        npy, index = self._paths(key)
        ok_rows = [i for i, f in enumerate(files) if f.row is not None]
        if len(ok_rows) == len(files):
            scratch.flush()
            del scratch
            os.replace(scratch_path, npy)
        else:
            tmp = _temp_path(npy)
            shape = (len(ok_rows), 1, self.image_size, self.image_size)
            final = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            for new_row, old_row in enumerate(ok_rows):
                final[new_row] = scratch[old_row]
            final.flush()
            del final, scratch
            os.replace(tmp, npy)
            scratch_path.unlink(missing_ok=True)
        renumbered = _renumber(files)
        payload = {
            "format": CACHE_FORMAT,
            "key": key,
            "image_size": self.image_size,
            "pipeline_version": PIPELINE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": [f.to_dict() for f in renumbered],
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
