"""Pretrained weights from a local file, loaded safely (safetensors or weights-only torch.load)."""

from __future__ import annotations

import logging
import pickle  # only for its error type: files are read with weights_only=True
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

log = logging.getLogger(__name__)

# torchvision's DenseNet names a dense layer's parts `norm1`, `conv1`, ... directly; MONAI's
# nests them under `layers.` (the same renaming MONAI applies to its own downloads).
_TORCHVISION_LAYER = re.compile(
    r"^(.*denselayer\d+)(\.(?:norm|relu|conv))\.?"
    r"((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_HEAD_PREFIXES = ("class_layers.out.", "classifier.")
# Batch-norm statistics of an ImageNet file: the project's networks use GroupNorm, which keeps
# none, so they are ignored (the affine weight and bias do load).
_IGNORED_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the configured network."""


@dataclass(frozen=True)
class LoadedWeights:
    """What `load_weights` did: tensors taken from the file and what kept its initial value."""

    loaded: int
    head_kept: tuple[str, ...]  # classification-head tensors left initialised (other classes)
    adapted_channels: tuple[str, ...]  # first convolutions summed over the file's channels


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a `.safetensors` file, or of a torch file read with `weights_only=True`.

    Never unpickles arbitrary objects: a file that needs more than tensors is refused. The
    path only ever comes from the operator's own configuration (node.toml or `ecl-sim` flags,
    via `initial_model`): no peer message, stored record or app upload reaches this function.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"model.weights: {path} does not exist (download the file once, then point here)"
        )
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        SafetensorError,
        OSError,
        RuntimeError,
        ValueError,
        EOFError,
        pickle.UnpicklingError,
    ) as exc:
        raise WeightsError(f"model.weights: cannot read {path} as weights ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"model.weights: {path} is not a flat dict of tensors (a state dict)")
    return {_canonical_name(str(k)): v for k, v in state.items()}


def _canonical_name(name: str) -> str:
    """The project's (MONAI's) name for a tensor of a torchvision- or MONAI-style state dict."""
    name = name.removeprefix("module.")  # saved from DataParallel
    match = _TORCHVISION_LAYER.match(name)
    if match:
        name = f"{match.group(1)}.layers{match.group(2)}{match.group(3)}"
    if name.startswith("classifier."):
        name = "class_layers.out." + name.removeprefix("classifier.")
    return name


def _fit(name: str, value: Tensor, target: Tensor) -> tuple[Tensor | None, bool]:
    """(tensor shaped like `target`, adapted?) or (None, False) when it cannot fit."""
    if value.shape == target.shape:
        return value.to(target.dtype), False
    grey_from_rgb = (
        value.ndim == 4
        and value.shape[0] == target.shape[0]
        and value.shape[2:] == target.shape[2:]
        and target.shape[1] == 1
    )
    if grey_from_rgb:  # an RGB first convolution applied to a grey image: sum the channels
        return value.sum(1, keepdim=True).to(target.dtype), True
    return None, False


def load_weights(module: nn.Module, path: str | Path) -> LoadedWeights:
    """Copy the file's tensors into `module`; refuse a file made for another network.

    Every tensor of the network must come from the file, except the classification head when
    the file was trained for other classes (it keeps its initialisation, as in fine-tuning).
    """
    state = read_state_dict(path)
    target = module.state_dict()
    taken: dict[str, Tensor] = {}
    adapted, head, problems = [], [], []
    for name, value in target.items():
        source = state.get(name)
        fitted, was_adapted = (None, False) if source is None else _fit(name, source, value)
        if fitted is not None:
            taken[name] = fitted
            if was_adapted:
                adapted.append(name)
        elif name.startswith(_HEAD_PREFIXES):
            head.append(name)
        else:
            got = "missing" if source is None else f"shape {tuple(source.shape)}"
            problems.append(f"{name} {tuple(value.shape)}: {got}")
    unused = [k for k in state if k not in target and not k.endswith(_IGNORED_SUFFIXES)]
    if problems or unused:
        detail = "; ".join(problems[:5] + [f"unexpected {k}" for k in unused[:5]])
        total = len(problems) + len(unused)
        raise WeightsError(
            f"model.weights: {path} does not fit model.architecture (the configured network): "
            f"{total} tensors differ, e.g. {detail}. Use a file saved from this architecture "
            "(or torchvision's DenseNet-121 for densenet121)"
        )
    module.load_state_dict({**target, **taken})
    if head:
        log.info("model.weights: classification head kept at its initialisation (%s)", head)
    return LoadedWeights(len(taken), tuple(head), tuple(adapted))
