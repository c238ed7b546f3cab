"""Exchange privacy at one node: per-edge references, noise generator and accountant together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from consensus.accounting import ExchangeAccountant
from consensus.privacy import gaussian_release
from consensus.privacy_config import PrivacyConfig
from consensus.privacy_errors import PrivacyConfigError

STATE_VERSION = 1


def _copy(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: t.detach().clone(memory_format=torch.contiguous_format) for k, t in tensors.items()}


class ExchangePrivacy:
    """What an algorithm's `outgoing(peer)` calls instead of sending its model (docs/privacy.md).

    `release(peer, w)` charges one release to the accountant first, then returns
    r + clip(w - r, C) + N(0, sigma^2 C^2 I), r being the previous release on that edge (at
    first the common initial model, which is public), and makes it the edge's new reference.
    Once the next release would exceed the budget, `release` raises PrivacyBudgetExhausted
    (nothing is drawn, nothing is counted): the node sends nothing from then on, keeps training
    and keeps receiving. That is the contract for every caller of `outgoing`.

    The noise generator's seed must be secret and per node. By default its state is neither
    saved nor restored: a real node seeds it from the operating system at every start, since
    replaying a saved state would reuse noise, and two releases with the same noise reveal their
    difference exactly. `checkpoint_generator=True` is for the simulation only, whose research
    figures must be reproducible across a resume.
    """

    def __init__(
        self,
        *,
        peers: Sequence[str],
        initial: Mapping[str, Tensor],
        clip_norm: float,
        accountant: ExchangeAccountant,
        generator: torch.Generator,
        checkpoint_generator: bool = False,
    ) -> None:
        if not clip_norm > 0:
            raise PrivacyConfigError(f"clip_norm must be positive, got {clip_norm}")
        if not peers or not initial:
            raise ValueError("exchange privacy needs at least one peer and one tensor")
        self.peers = tuple(peers)
        self.clip_norm = float(clip_norm)
        self.accountant = accountant
        self.generator = generator
        self.checkpoint_generator = checkpoint_generator
        self._references = {peer: _copy(initial) for peer in self.peers}

    @classmethod
    def from_config(
        cls,
        config: PrivacyConfig,
        *,
        peers: Sequence[str],
        initial: Mapping[str, Tensor],
        n_records: int,
        generator: torch.Generator,
        checkpoint_generator: bool = False,
    ) -> ExchangePrivacy:
        """For an exchange-mode config: sigma as configured or calibrated, delta from n_records."""
        if config.mode != "exchange":
            raise PrivacyConfigError(f"ExchangePrivacy needs mode 'exchange', got {config.mode!r}")
        return cls(
            peers=peers,
            initial=initial,
            clip_norm=float(config.clip_norm),
            accountant=ExchangeAccountant.from_config(config, n_records=n_records),
            generator=generator,
            checkpoint_generator=checkpoint_generator,
        )

    @property
    def noise_multiplier(self) -> float:
        return self.accountant.noise_multiplier

    @property
    def exhausted(self) -> bool:
        """True once the next release would exceed the budget: the node no longer sends."""
        return self.accountant.exhausted

    def epsilon(self) -> float:
        return self.accountant.epsilon()

    def release(self, peer: str, current: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The privatised `current` for `peer`; raises PrivacyBudgetExhausted when spent."""
        if peer not in self._references:
            raise ValueError(f"no exchange-privacy reference for peer {peer!r}; peers {self.peers}")
        self.accountant.charge(peer)  # before anything is computed: a failure over-counts only
        released = gaussian_release(
            current,
            self._references[peer],
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            generator=self.generator,
        )
        self._references[peer] = _copy(released)
        return released

    def summary(self) -> dict[str, Any]:
        """The accountant's figures plus the clip norm (JSON-able)."""
        return {**self.accountant.summary(), "clip_norm": self.clip_norm}

    def state_dict(self) -> dict[str, Any]:
        """{"tensors": {"reference/PEER/NAME": ...[, "generator": ...]}, "meta": {...}}."""
        tensors = {
            f"reference/{peer}/{name}": tensor
            for peer, reference in self._references.items()
            for name, tensor in _copy(reference).items()
        }
        if self.checkpoint_generator:
            tensors["generator"] = self.generator.get_state()
        meta = {
            "version": STATE_VERSION,
            "peers": list(self.peers),
            "clip_norm": self.clip_norm,
            "accountant": self.accountant.state_dict(),
        }
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore references and spent epsilon (and the generator, if checkpointed)."""
        meta, tensors = state["meta"], state["tensors"]
        if meta.get("version") != STATE_VERSION:
            raise ValueError(f"exchange-privacy state version {meta.get('version')!r} unsupported")
        if list(meta["peers"]) != list(self.peers):
            raise ValueError(f"privacy state has peers {meta['peers']}, this node {self.peers}")
        references = {}
        for peer, reference in self._references.items():
            references[peer] = {}
            for name, tensor in reference.items():
                saved = tensors[f"reference/{peer}/{name}"]
                if saved.shape != tensor.shape:
                    raise ValueError(f"privacy reference {peer}/{name} has the wrong shape")
                references[peer][name] = saved.to(dtype=tensor.dtype, device=tensor.device)
        self.accountant.load_state_dict(meta["accountant"])
        self._references = {peer: _copy(reference) for peer, reference in references.items()}
        if self.checkpoint_generator and "generator" in tensors:
            self.generator.set_state(tensors["generator"])
