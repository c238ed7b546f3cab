"""One method's run in the simulation: N hospital models driven by a seeded async schedule."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from consensus import make_algorithm
from consensus.algorithms import SERVER, FedAvgServer
from consensus.exchange_schedule import ExchangeSchedule, Round, Step, Swap
from consensus.topology import Topology
from consensus.transport.memory import InMemoryTransport
from hospital_node.sim_config import SimulationConfig
from hospital_node.sim_privacy import RunPrivacy
from hospital_node.train import BatchSampler, FunctionalModel, positive_weights, stacked_parameters


@dataclass(frozen=True)
class NodeTrainData:
    """One hospital's training split, decoded and resized: images [n, 1, S, S], labels [n, 14]."""

    name: str
    images: Tensor
    labels: Tensor


class MethodRun:
    """Runs `method` on the hospitals; each node takes `steps` local steps (same budget per method).

    Steps of different hospitals commute with each other and with swaps between other hospitals, so
    consecutive independent steps are gathered and computed as one vmapped batch: the result is the
    same as stepping them one by one in event order, only faster.
    """

    def __init__(
        self,
        *,
        method: str,
        graph: Topology,
        train: Sequence[NodeTrainData],
        config: SimulationConfig,
        init_module: nn.Module,
        steps: int,
        speeds: Sequence[float] | None = None,
    ) -> None:
        self.method = method
        self.graph = graph
        self.config = config
        self.steps = steps
        self.device = torch.device(config.training.device)
        self.train = list(train)
        self.model = FunctionalModel(init_module.to(self.device))
        nodes = graph.nodes
        self.params = {
            k: v.to(self.device) for k, v in stacked_parameters(init_module, len(nodes)).items()
        }
        self.views = [{k: v[i] for k, v in self.params.items()} for i in range(len(nodes))]
        algorithm_method = "local" if method == "centralized" else method
        consensus_config = dataclasses.replace(config.consensus, method=algorithm_method)
        self.privacy = self._make_privacy(method)
        self.algorithms = [
            make_algorithm(
                consensus_config,
                node=name,
                neighbours=graph.neighbours(name),
                params=self.views[i],
                node_order=nodes,
                edge_weights=graph.edge_weights(name),
                num_samples=len(self.train[i].labels),
                privacy=self.privacy.exchange[i],
            )
            for i, name in enumerate(nodes)
        ]
        self.samplers = [
            BatchSampler(
                num_items=len(t.labels),
                batch_size=config.training.batch_size,
                seed=config.seed * 7919 + i,
            )
            for i, t in enumerate(self.train)
        ]
        self.pos_weight = [
            positive_weights(t.labels).to(self.device)
            if config.training.positive_weighting
            else None
            for t in self.train
        ]
        self.transport = InMemoryTransport()
        for name, algorithm in zip(nodes, self.algorithms, strict=True):
            # FedAvg clients hear only from the server; the others from their graph neighbours.
            self.transport.register(
                algorithm, peers=[SERVER] if method == "fedavg" else graph.neighbours(name)
            )
        self._server = FedAvgServer(clients=nodes) if method == "fedavg" else None
        fedavg = method == "fedavg"
        self._schedule = ExchangeSchedule(
            topology=graph,
            steps=steps,
            exchange_interval=self._round_interval()
            if fedavg
            else config.network.exchange_interval,
            seed=config.seed,
            speeds=dict(zip(graph.nodes, speeds, strict=True)) if speeds else None,
            speed_jitter=0.0 if fedavg else config.network.speed_jitter,
            loss_probability=0.0 if fedavg else config.network.message_loss,
            rounds=fedavg,
        )
        # local-only and centralized never exchange: their swaps are skipped, their steps kept.
        self._exchanges = method not in ("local", "centralized")
        self._events: Iterator = iter(self._schedule)
        self.events_consumed = 0
        self.steps_done = [0] * len(nodes)
        self.recent_loss = [float("nan")] * len(nodes)
        self._pending: list[int] = []

    def _make_privacy(self, method: str) -> RunPrivacy:
        """Each node's exchange privacy or DP-SGD (config.privacy), seeded per node."""
        fedavg = method == "fedavg"
        interval = self._round_interval() if fedavg else self.config.network.exchange_interval
        return RunPrivacy(
            self.config.privacy,
            method=method,
            peers=[[SERVER] if fedavg else self.graph.neighbours(n) for n in self.graph.nodes],
            train_sizes=[len(t.labels) for t in self.train],
            initial={k: v[0].clone() for k, v in self.params.items()},  # common, public
            schedule=(self.steps, interval, self.config.training.batch_size),
            seed=self.config.seed,
        )

    def _round_interval(self) -> int:
        """FedAvg round length in local steps: `local_epochs` passes over the median site."""
        sizes = sorted(len(t.labels) for t in self.train)
        per_epoch = max(1, sizes[len(sizes) // 2] // self.config.training.batch_size)
        return max(1, int(self.config.consensus.local_epochs * per_epoch))

    # --- stepping -------------------------------------------------------------------------------
    @property
    def mean_steps(self) -> float:
        return sum(self.steps_done) / len(self.steps_done)

    @property
    def finished(self) -> bool:
        return all(s >= self.steps for s in self.steps_done)

    def advance(self, until_total_steps: int) -> None:
        """Consume events until the nodes have taken `until_total_steps` local steps in all."""
        index = {n: i for i, n in enumerate(self.graph.nodes)}
        while sum(self.steps_done) + len(self._pending) < until_total_steps:
            event = next(self._events, None)
            if event is None:
                break
            self.events_consumed += 1
            if isinstance(event, Step):
                i = index[event.node]
                if i in self._pending:
                    self._flush()
                self._pending.append(i)
            elif isinstance(event, Swap) and self._exchanges:
                if index[event.a] in self._pending or index[event.b] in self._pending:
                    self._flush()
                self.transport.swap(event.a, event.b, lost_ab=event.lost_ab, lost_ba=event.lost_ba)
            elif isinstance(event, Round):
                self._flush()
                self.transport.broadcast_round(self._server, self.graph.nodes)
        self._flush()

    def _flush(self) -> None:
        """Compute the pending nodes' gradients as one batch, then apply each node's local step."""
        if not self._pending:
            return
        idx = self._pending
        self._pending = []
        batches = [self.samplers[i].next_indices() for i in idx]
        images = torch.stack(
            [self.train[i].images[b] for i, b in zip(idx, batches, strict=True)]
        ).to(self.device)
        labels = torch.stack(
            [self.train[i].labels[b] for i, b in zip(idx, batches, strict=True)]
        ).to(self.device)
        pos_weight = self.pos_weight[idx[0]]
        if self.privacy.dpsgd is not None:  # per-example clipping and noise, always batched
            sub = {k: v[idx] for k, v in self.params.items()}
            grads, losses = self.privacy.dpsgd.gradients(self.model, sub, images, labels, idx)
            per_node = [({k: g[j] for k, g in grads.items()}, losses[j]) for j in range(len(idx))]
        elif self.config.training.batched and (pos_weight is None or len(idx) == 1):
            sub = {k: v[idx] for k, v in self.params.items()}
            grads, losses = self.model.stacked_gradients(sub, images, labels, pos_weight)
            per_node = [({k: g[j] for k, g in grads.items()}, losses[j]) for j in range(len(idx))]
        else:
            per_node = [
                self.model.gradients(self.views[i], images[j], labels[j], self.pos_weight[i])
                for j, i in enumerate(idx)
            ]
        for (grads, loss), i in zip(per_node, idx, strict=True):
            self.algorithms[i].local_step(grads)
            self.steps_done[i] += 1
            self.recent_loss[i] = float(loss)

    # --- evaluation -----------------------------------------------------------------------------
    def predict(self, images: Tensor) -> Tensor:
        """Probabilities [nodes, N, 14] of every node's current model."""
        return self.model.stacked_predict(self.params, images.to(self.device)).cpu()

    def node_state(self, i: int) -> dict[str, Tensor]:
        """A detached copy of node i's model parameters."""
        return {k: v.detach().cpu().clone() for k, v in self.views[i].items()}

    # --- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "params": {k: v.cpu() for k, v in self.params.items()},
            "algorithms": [a.state_dict() for a in self.algorithms],
            "samplers": [s.state_dict() for s in self.samplers],
            "transport": self.transport.state_dict(),
            "events_consumed": self.events_consumed,
            "steps_done": list(self.steps_done),
            "recent_loss": list(self.recent_loss),
            "privacy": self.privacy.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.params.items():
            v.copy_(state["params"][k])
        for alg, s in zip(self.algorithms, state["algorithms"], strict=True):
            alg.load_state_dict(s)
        for sampler, s in zip(self.samplers, state["samplers"], strict=True):
            sampler.load_state_dict(s)
        self.transport.load_state_dict(state["transport"])
        # The schedule is a pure function of its seed: replay it to where the checkpoint stood.
        self._events = itertools.islice(iter(self._schedule), int(state["events_consumed"]), None)
        self.events_consumed = int(state["events_consumed"])
        self.steps_done = [int(s) for s in state["steps_done"]]
        self.recent_loss = [float(x) for x in state["recent_loss"]]
        self.privacy.load_state_dict(state.get("privacy", {}))
