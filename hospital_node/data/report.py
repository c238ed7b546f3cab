"""The data report of one site load: what was read, loaded, and skipped with which reason."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hospital_node.data.cache import write_json_atomic


@dataclass(frozen=True)
class SkippedFile:
    """A labels.csv row (or unlisted file) that gave no image; `reason` is one of
    hospital_node.data.site.SKIP_REASONS."""

    path: str
    reason: str
    detail: str


@dataclass
class DataReport:
    """What loading a site did: rows read, images loaded, and every skipped row or unlisted file
    with its reason."""

    site: str
    n_rows: int
    n_loaded: int
    skipped: list[SkippedFile]
    cache_hit: bool = False
    n_decoded: int = 0  # files decoded in this load (0 on a cache hit)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """Skipped rows per reason, most common first."""
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def to_json(self, path: Path) -> None:
        """Write the report as JSON (atomically); read it back with from_json."""
        payload = asdict(self) | {"skipped_by_reason": self.counts()}
        write_json_atomic(Path(path), payload)

    @classmethod
    def from_json(cls, path: Path) -> DataReport:
        """Read a report written by to_json."""
        raw: dict[str, Any] = json.loads(Path(path).read_text())
        raw.pop("skipped_by_reason", None)
        raw["skipped"] = [SkippedFile(**item) for item in raw["skipped"]]
        return cls(**raw)

    def summary(self, *, max_listed: int = 20) -> str:
        """A few human lines: totals, counts per reason, then the first skipped files."""
        source = "cache" if self.cache_hit else f"decoded {self.n_decoded}"
        head = f"site {self.site}: {self.n_loaded}/{self.n_rows} images loaded ({source}"
        lines = [f"{head}, {self.seconds:.1f} s)"]
        if self.skipped:
            reasons = ", ".join(f"{k} {v}" for k, v in self.counts().items())
            lines.append(f"  skipped {len(self.skipped)}: {reasons}")
            lines += [f"  - {s.path}: {s.reason} ({s.detail})" for s in self.skipped[:max_listed]]
            if len(self.skipped) > max_listed:
                lines.append(f"  ... {len(self.skipped) - max_listed} more in the JSON report")
        return "\n".join(lines)
