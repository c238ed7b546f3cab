"""Differential privacy of one simulated method: each hospital's exchange privacy or DP-SGD.

The mechanisms are the nodes' own (`consensus.private_exchange`, `hospital_node.privacy`);
only the generators differ: seeded from (simulation seed, hospital) so research runs are
reproducible, where a real node seeds them from the operating system.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from consensus.config import METHODS
from consensus.privacy_config import PrivacyConfig
from consensus.private_exchange import ExchangePrivacy
from hospital_node.privacy.dpsgd import DpsgdMechanism
from hospital_node.privacy.status import exchange_status, record_level_status
from hospital_node.store.schema import PrivacyStatus
from hospital_node.training.batches import DPSGD_STREAM, EXCHANGE_STREAM, stream_generator

# Methods whose nodes send models to others; local-only and centralized send nothing.
SENDING_METHODS = tuple(m for m in METHODS if m not in ("local", "centralized"))


def planned_releases(*, steps: int, peers: int, exchange_interval: float) -> int:
    """Expected releases of one node over a run: steps x peers / exchange_interval, rounded up.

    Each edge swaps about once per `exchange_interval` local steps (ExchangeSchedule), and each
    swap is one release to that peer. The real count is random around this, and with speed
    jitter mostly above it (swaps go on until the slowest node's last step): a node that gets
    more swaps than planned spends its budget early and stops sending for the rest of the run.
    Pass `planned_releases` with a margin to avoid that.
    """
    return max(1, math.ceil(steps * peers / exchange_interval))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What one method's run looks like, for calibrating its noise."""

    steps: int
    exchange_interval: float
    batch_size: int
    seed: int


class RunPrivacy:
    """The privacy of one method's run: per-node exchange privacy or DP-SGD, and its figures.

    Exchange mode covers the methods that send models; local-only sends nothing (epsilon 0),
    and the centralized reference pools raw data, so it has no figure. DP-SGD covers every
    method, the centralized one included (one node, the pooled set).
    """

    def __init__(
        self,
        config: PrivacyConfig,
        *,
        method: str,
        nodes: Sequence[str],
        peers: Sequence[Sequence[str]],
        train_sizes: Sequence[int],
        initial: Mapping[str, Tensor],
        plan: RunPlan,
    ) -> None:
        self.config = config
        self.method = method
        self.train_sizes = list(train_sizes)
        self.exchange: list[ExchangePrivacy | None] = [None] * len(nodes)
        self.dpsgd: list[DpsgdMechanism] | None = None
        if config.mode == "exchange" and method in SENDING_METHODS:
            self.exchange = [
                self._exchange(node, node_peers, n, initial, plan)
                for node, node_peers, n in zip(nodes, peers, train_sizes, strict=True)
            ]
        elif config.mode == "dpsgd":
            self.dpsgd = [
                DpsgdMechanism.from_config(
                    config,
                    n_records=n,
                    batch_size=plan.batch_size,
                    steps=plan.steps,
                    generator=stream_generator(plan.seed, node, DPSGD_STREAM),
                )
                for node, n in zip(nodes, train_sizes, strict=True)
            ]

    def _exchange(self, node, node_peers, n_train, initial, plan: RunPlan) -> ExchangePrivacy:
        """With a target epsilon and no `planned_releases`, each node plans its own releases."""
        config = self.config
        if config.target_epsilon is not None and config.planned_releases is None:
            releases = planned_releases(
                steps=plan.steps, peers=len(node_peers), exchange_interval=plan.exchange_interval
            )
            config = dataclasses.replace(config, planned_releases=releases)
        return ExchangePrivacy.from_config(
            config,
            peers=node_peers,
            initial=initial,
            n_records=n_train,
            generator=stream_generator(plan.seed, node, EXCHANGE_STREAM),
            checkpoint_generator=True,  # a resumed research run draws the same noise
        )

    def status(self, index: int) -> PrivacyStatus | None:
        """The node's privacy row for the results store; None where no figure applies."""
        if self.dpsgd is not None:
            return record_level_status(self.dpsgd[index].privacy)
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
        if self.dpsgd is None:
            return {}
        return {
            "dpsgd": {
                "generators": [m.generator.get_state() for m in self.dpsgd],
                "accountants": [m.privacy.state_dict() for m in self.dpsgd],
            }
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if ("dpsgd" in state) != (self.dpsgd is not None):
            raise ValueError("checkpoint and configuration disagree on DP-SGD; resume with both")
        if self.dpsgd is None:
            return
        saved = state["dpsgd"]
        for mechanism, generator, accountant in zip(
            self.dpsgd, saved["generators"], saved["accountants"], strict=True
        ):
            mechanism.generator.set_state(generator)
            mechanism.privacy.load_state_dict(accountant)
