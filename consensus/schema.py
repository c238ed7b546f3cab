"""Message schemas: exactly which tensors a method puts on the wire, and a hash both sides check."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch

# dtypes allowed on the wire; names as safetensors writes them.
WIRE_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in WIRE_DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor on the wire: its name, shape and safetensors dtype name (e.g. 'F32')."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class MessageSchema:
    """The tensors one method sends on one edge; `digest` identifies it on both sides."""

    method: str
    tensors: tuple[TensorSpec, ...]

    @classmethod
    def from_tensors(cls, method: str, tensors: Mapping[str, torch.Tensor]) -> MessageSchema:
        specs = tuple(
            TensorSpec(name, tuple(int(d) for d in t.shape), DTYPE_NAMES[t.dtype])
            for name, t in sorted(tensors.items())
        )
        return cls(method=method, tensors=specs)

    @property
    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of method and sorted tensor specs."""
        canonical = json.dumps(
            {
                "method": self.method,
                "tensors": [
                    [s.name, list(s.shape), s.dtype]
                    for s in sorted(self.tensors, key=lambda s: s.name)
                ],
            },
            separators=(",", ":"),
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def by_name(self) -> dict[str, TensorSpec]:
        return {s.name: s for s in self.tensors}

    @property
    def num_bytes(self) -> int:
        """Payload size of one message (tensor data only)."""
        total = 0
        for spec in self.tensors:
            n = 1
            for d in spec.shape:
                n *= d
            total += n * torch.empty((), dtype=WIRE_DTYPES[spec.dtype]).element_size()
        return total
