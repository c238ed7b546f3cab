"""DataConfig: how a site folder is decoded (no pydicom or torch import: quick node status)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CACHE_DTYPE_NAMES = ("uint8", "uint16")  # pixel storage of the decode cache


@dataclass(frozen=True)
class DataConfig:
    """How a site is decoded. `cache_dir=None` means default_cache_dir() (never the site folder,
    which containers mount read-only); `workers > 0` decodes in that many processes;
    `cache_dtype` stores pixels as uint8 (1/4 of float32; within 0.5/255 of the decoded value)
    or uint16 (1/2; within 0.5/65535)."""

    image_size: int = 64
    cache_dir: Path | None = None
    workers: int = 0
    cache_dtype: str = "uint8"

    def __post_init__(self) -> None:
        if self.cache_dtype not in CACHE_DTYPE_NAMES:
            raise ValueError(
                f"cache_dtype={self.cache_dtype!r}: choose one of {', '.join(CACHE_DTYPE_NAMES)}"
            )
        if not 8 <= self.image_size <= 2048:
            raise ValueError(f"image_size={self.image_size}: choose 8..2048 (64, 128 or 224)")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers}: use 0 (in-process) or a positive count")
