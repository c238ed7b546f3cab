"""Where training runs: the device check at the entry points, and host-to-device batch copies
(pinned memory and asynchronous copies on CUDA; plain `.to` everywhere else)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class DeviceError(ValueError):
    """The configured device or precision cannot run on this machine; the message says what to
    change (`training.device`, `training.precision`)."""


def resolve_device(name: str | torch.device, *, precision: str = "fp32") -> torch.device:
    """`name` as a torch.device, checked against this machine before any data is loaded.

    CUDA requested without a usable GPU, or bf16 on a GPU without bfloat16 support, raises a
    DeviceError rather than failing later inside the first training step.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"training.device = {name!r} is not a torch device ({exc})") from exc
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        build = torch.__version__ + ("" if torch.version.cuda else ", built without CUDA")
        raise DeviceError(
            f"training.device = {str(name)!r} but torch ({build}) sees no CUDA GPU: install a "
            "CUDA build of torch on a machine with an NVIDIA GPU, or set training.device = 'cpu'"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"training.device = {str(name)!r} but only {torch.cuda.device_count()} GPU(s) exist"
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(
            f"training.precision = 'bf16' but {torch.cuda.get_device_name(index)} has no "
            "bfloat16 support: set training.precision = 'fp32'"
        )
    return device


def pins_memory(device: torch.device) -> bool:
    """Whether host batches for `device` go through pinned (page-locked) memory: CUDA only.

    Pinned pages let the copy run asynchronously (`non_blocking=True`) while the host gathers
    the next batch; on the CPU a batch is already where it is used, so nothing is pinned.
    """
    return device.type == "cuda"


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device`: on CUDA through pinned memory with an asynchronous copy; on
    the CPU the tensor itself (no copy)."""
    if not pins_memory(device):
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def stack_to_device(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """`torch.stack(tensors)` on `device`; on CUDA stacked straight into a pinned buffer (one
    host copy, as the plain stack makes) and copied asynchronously."""
    if not pins_memory(device):
        return torch.stack(list(tensors)).to(device)
    first = tensors[0]
    pinned = torch.empty((len(tensors), *first.shape), dtype=first.dtype, pin_memory=True)
    torch.stack(list(tensors), out=pinned)
    return pinned.to(device, non_blocking=True)
