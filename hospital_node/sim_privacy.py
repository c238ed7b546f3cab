"""Differential privacy in the simulation: per-node exchange privacy or DP-SGD, and its figures."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from opacus.accountants import create_accountant
from torch import Tensor

from consensus.privacy import PrivacyConfig, PrivacyConfigError
from consensus.private_exchange import ExchangePrivacy
from hospital_node.dpsgd import RecordLevelPrivacy, dpsgd_noise_multiplier
from hospital_node.store_schema import PrivacyStatus
from hospital_node.train import FunctionalModel, private_gradients

# Seed streams of the noise generators, apart from the simulation's other seeded streams.
EXCHANGE_STREAM = 0xE7C
DPSGD_STREAM = 0xD95
# Methods whose nodes send models to others; local-only and centralized send nothing.
SENDING_METHODS = ("gossip", "ecl-pdmm", "ecl-admm", "fedavg")


def node_generator(seed: int, node_index: int, stream: int) -> torch.Generator:
    """A noise generator from (simulation seed, node, stream): reproducible research runs.

    Simulation only. Anyone who knows a seed can subtract the noise, so a real node seeds its
    generator from the operating system at every start (docs/privacy.md).
    """
    state = np.random.SeedSequence([seed, stream, node_index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def planned_releases(*, steps: int, peers: int, exchange_interval: float) -> int:
    """Expected releases of one node over a run: steps x peers / exchange_interval, rounded up.

    Each edge swaps about once per `exchange_interval` local steps (ExchangeSchedule), and each
    swap is one release to that peer. The real count is random around this, and with speed
    jitter mostly above it (swaps go on until the slowest node's last step): a node that gets
    more swaps than planned spends its budget early and stops sending for the rest of the run.
    Pass `planned_releases` with a margin to avoid that.
    """
    return max(1, math.ceil(steps * peers / exchange_interval))


def exchange_privacies(
    config: PrivacyConfig,
    *,
    peers: Sequence[Sequence[str]],
    train_sizes: Sequence[int],
    initial: Mapping[str, Tensor],
    steps: int,
    exchange_interval: float,
    seed: int,
) -> list[ExchangePrivacy]:
    """One ExchangePrivacy per node; delta from the node's training-set size.

    With a target epsilon and no `planned_releases`, each node plans `planned_releases(...)`
    for its own number of peers, so sigma (and the budget it enforces) is per node.
    """
    privacies = []
    for index, (node_peers, n_train) in enumerate(zip(peers, train_sizes, strict=True)):
        node_config = config
        if config.target_epsilon is not None and config.planned_releases is None:
            plan = planned_releases(
                steps=steps, peers=len(node_peers), exchange_interval=exchange_interval
            )
            node_config = dataclasses.replace(config, planned_releases=plan)
        privacies.append(
            ExchangePrivacy.from_config(
                node_config,
                peers=node_peers,
                initial=initial,
                n_records=n_train,
                generator=node_generator(seed, index, EXCHANGE_STREAM),
                checkpoint_generator=True,  # a resumed research run draws the same noise
            )
        )
    return privacies


def exchange_status(privacy: ExchangePrivacy) -> PrivacyStatus:
    """The store's row for one node's exchange privacy."""
    accountant = privacy.accountant
    return PrivacyStatus(
        mode="exchange",
        epsilon=accountant.epsilon(),
        delta=accountant.delta,
        releases=accountant.releases,
        exhausted=accountant.exhausted,
        accountant=accountant.accountant,
        budget=accountant.epsilon_budget,
        noise_multiplier=accountant.noise_multiplier,
        clip=privacy.clip_norm,
    )


def record_level_status(
    privacy: RecordLevelPrivacy, *, budget: float | None = None, exhausted: bool = False
) -> PrivacyStatus:
    """The store's row for one node's DP-SGD: record-level epsilon and steps so far."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus: "optimal order is largest"
        epsilon = privacy.epsilon()
    return PrivacyStatus(
        mode="dpsgd",
        epsilon=epsilon,
        delta=privacy.delta,
        releases=privacy.steps,
        exhausted=exhausted,
        accountant=privacy.accountant.mechanism(),
        budget=budget,
        noise_multiplier=privacy.noise_multiplier,
        clip=privacy.clip_norm,
    )


class SimulatedDpsgd:
    """Record-level DP-SGD of the simulation's stacked models, with one accountant per node.

    Gradients: per-example gradients (torch.func), each clipped to C, summed, plus
    N(0, sigma^2 C^2 I) from the node's own generator, over the batch size
    (`train.private_gradients`). Batches are the BatchSampler's fixed-size shuffled batches,
    accounted as Poisson sampling at rate batch_size / n_train per step: a common
    approximation, not a proof (shuffled batches can be less private than Poisson sampling
    suggests). A real node uses `hospital_node.dpsgd.make_private` (Opacus, Poisson batches).
    """

    def __init__(
        self,
        config: PrivacyConfig,
        *,
        train_sizes: Sequence[int],
        batch_size: int,
        steps: int,
        seed: int,
    ) -> None:
        if config.mode != "dpsgd":
            raise PrivacyConfigError(f"SimulatedDpsgd needs mode 'dpsgd', got {config.mode!r}")
        self.clip_norm = float(config.clip_norm)
        self.nodes: list[RecordLevelPrivacy] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Opacus: "optimal order is largest"
            for n_train in train_sizes:
                sample_rate = min(1.0, batch_size / n_train)
                delta = config.resolve_delta(n_train)
                sigma = dpsgd_noise_multiplier(
                    config, sample_rate=sample_rate, steps=steps, delta=delta
                )
                self.nodes.append(
                    RecordLevelPrivacy(
                        accountant=create_accountant(mechanism=config.accountant),
                        noise_multiplier=sigma,
                        clip_norm=self.clip_norm,
                        sample_rate=sample_rate,
                        delta=delta,
                    )
                )
        self.generators = [
            node_generator(seed, index, DPSGD_STREAM) for index in range(len(train_sizes))
        ]

    def gradients(
        self,
        model: FunctionalModel,
        params: Mapping[str, Tensor],
        images: Tensor,
        labels: Tensor,
        nodes: Sequence[int],
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(private grads [K, ...], mean losses [K]) of the stacked `nodes`; one step each."""
        per_example, losses = model.stacked_per_example_gradients(params, images, labels)
        grads = private_gradients(
            per_example,
            clip_norm=self.clip_norm,
            noise_multipliers=[self.nodes[i].noise_multiplier for i in nodes],
            generators=[self.generators[i] for i in nodes],
        )
        for i in nodes:
            node = self.nodes[i]
            node.accountant.step(
                noise_multiplier=node.noise_multiplier, sample_rate=node.sample_rate
            )
        return grads, losses.mean(1)

    def status(self, index: int) -> PrivacyStatus:
        """The store's row for one node: record-level epsilon so far."""
        return record_level_status(self.nodes[index])

    def state_dict(self) -> dict[str, Any]:
        """Accountant histories (JSON) and generator states (tensors), for resumable runs."""
        return {
            "generators": [g.get_state() for g in self.generators],
            "accountants": [node.state_dict() for node in self.nodes],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)
        for node, saved in zip(self.nodes, state["accountants"], strict=True):
            node.load_state_dict(saved)


class RunPrivacy:
    """The privacy of one method's run: per-node exchange privacy or DP-SGD, and its figures.

    Exchange mode covers the methods that send models (gossip, ECL, FedAvg); local-only sends
    nothing (epsilon 0), and the centralized reference pools raw data, so it has no figure.
    DP-SGD covers every method, the centralized one included (one node, the pooled set).
    """

    def __init__(
        self,
        config: PrivacyConfig,
        *,
        method: str,
        peers: Sequence[Sequence[str]],
        train_sizes: Sequence[int],
        initial: Mapping[str, Tensor],
        schedule: tuple[int, float, int],
        seed: int,
    ) -> None:
        steps, exchange_interval, batch_size = schedule
        self.config = config
        self.method = method
        self.train_sizes = list(train_sizes)
        self.exchange: list[ExchangePrivacy | None] = [None] * len(train_sizes)
        self.dpsgd: SimulatedDpsgd | None = None
        if config.mode == "exchange" and method in SENDING_METHODS:
            self.exchange = list(
                exchange_privacies(
                    config,
                    peers=peers,
                    train_sizes=train_sizes,
                    initial=initial,
                    steps=steps,
                    exchange_interval=exchange_interval,
                    seed=seed,
                )
            )
        elif config.mode == "dpsgd":
            self.dpsgd = SimulatedDpsgd(
                config, train_sizes=train_sizes, batch_size=batch_size, steps=steps, seed=seed
            )

    def status(self, index: int) -> PrivacyStatus | None:
        """The node's privacy row for the results store; None where no figure applies."""
        if self.dpsgd is not None:
            return self.dpsgd.status(index)
        privacy = self.exchange[index]
        if privacy is not None:
            return exchange_status(privacy)
        if self.config.mode == "exchange" and self.method == "local":
            delta = self.config.resolve_delta(self.train_sizes[index])
            return PrivacyStatus("exchange", 0.0, delta, 0, False, self.config.accountant)
        return None

    def node_state(self, index: int, *, finished: bool) -> tuple[str, str]:
        """(state, detail) for node_status: 'stopped_sending' once the budget is spent."""
        privacy = self.exchange[index]
        spent = privacy is not None and privacy.exhausted
        detail = "privacy budget spent: sends nothing, still trains and receives" if spent else ""
        if finished:
            return "finished", detail
        return ("stopped_sending" if spent else "training"), detail

    def state_dict(self) -> dict[str, Any]:
        """DP-SGD accountants and generators; exchange privacy lives in the algorithms' state."""
        return {} if self.dpsgd is None else {"dpsgd": self.dpsgd.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if ("dpsgd" in state) != (self.dpsgd is not None):
            raise ValueError("checkpoint and configuration disagree on DP-SGD; resume with both")
        if self.dpsgd is not None:
            self.dpsgd.load_state_dict(state["dpsgd"])
