"""One method's run in the simulation: N hospital models driven by a seeded async schedule."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from consensus import make_algorithm
from consensus.algorithms import SERVER, Algorithm, FedAvgServer
from consensus.exchange_schedule import ExchangeSchedule, Round, Step, Swap
from consensus.topology import Topology
from consensus.transport.memory import InMemoryTransport
from hospital_node.simulation.budget import with_schedule_length
from hospital_node.simulation.config import SimulationConfig
from hospital_node.simulation.privacy import RunPlan, RunPrivacy
from hospital_node.training.step import HospitalTrainer, ModelStack

if TYPE_CHECKING:  # a type only: importing it would load Opacus
    from consensus.private_exchange import ExchangePrivacy


@dataclass(frozen=True)
class NodeTrainData:
    """One hospital's training split, decoded and resized: images [n, 1, S, S], labels [n, 14]."""

    name: str
    images: Tensor
    labels: Tensor


def node_algorithm(
    method: str,
    config: SimulationConfig,
    *,
    graph: Topology,
    index: int,
    params: dict[str, Tensor],
    num_samples: int,
    interval: float,
    privacy: ExchangePrivacy | None = None,
) -> Algorithm:
    """Hospital `index`'s algorithm object, as every engine builds it (in-process or Ray)."""
    algorithm_method = "local" if method == "centralized" else method
    # ECL-ISVR's K is the local steps between two swaps on an edge: the exchange interval
    consensus_config = dataclasses.replace(
        config.consensus, method=algorithm_method, isvr_local_steps=interval
    )
    name = graph.nodes[index]
    return make_algorithm(
        consensus_config,
        node=name,
        neighbours=graph.neighbours(name),
        params=params,
        node_order=graph.nodes,
        edge_weights=graph.edge_weights(name),
        num_samples=num_samples,
        privacy=privacy,
    )


def round_interval(train: Sequence[NodeTrainData], config: SimulationConfig) -> int:
    """FedAvg round length in local steps: `local_epochs` passes over the median site."""
    sizes = sorted(len(t.labels) for t in train)
    per_epoch = max(1, sizes[len(sizes) // 2] // config.training.batch_size)
    return max(1, int(config.consensus.local_epochs * per_epoch))


def make_schedule(
    method: str,
    config: SimulationConfig,
    graph: Topology,
    steps: int,
    *,
    speeds: Sequence[float] | None,
    interval: float,
) -> ExchangeSchedule:
    """The seeded event stream of one method's run (the same for every engine)."""
    fedavg = method == "fedavg"
    network = config.network
    return ExchangeSchedule(
        topology=graph,
        steps=steps,
        exchange_interval=interval,
        seed=config.training.seed,
        speeds=dict(zip(graph.nodes, speeds, strict=True)) if speeds else None,
        speed_jitter=0.0 if fedavg else network.speed_jitter,
        loss_probability=0.0 if fedavg else network.message_loss,
        rounds=fedavg,
    )


class MethodRun:
    """Runs `method` on the hospitals; each node takes `steps` local steps (same budget per method).

    Every hospital trains exactly as a node does (`training.step`: the same batches, loss,
    DP-SGD and algorithm). Steps of different hospitals commute with each other and with swaps
    between other hospitals, so consecutive independent steps are gathered and computed as one
    vmapped batch: the result is that of stepping them one by one in event order, only faster.
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
        # a cosine decay without its own length decays over this run's steps
        self.config = config = with_schedule_length(config, steps)
        self.steps = steps
        self.train = list(train)
        copies = len(graph.nodes)
        self.stack = ModelStack.for_training(init_module, copies=copies, config=config.training)
        self.views = self.stack.views
        self.privacy = self._make_privacy()
        self.trainers = [
            HospitalTrainer.build(
                name=t.name,
                images=t.images,
                labels=t.labels,
                config=config.training,
                dpsgd=None if self.privacy.dpsgd is None else self.privacy.dpsgd[i],
            )
            for i, t in enumerate(self.train)
        ]
        self.algorithms = self._make_algorithms()
        self.transport = InMemoryTransport()
        for name, algorithm in zip(graph.nodes, self.algorithms, strict=True):
            # FedAvg clients hear only from the server; the others from their graph neighbours.
            peers = [SERVER] if method == "fedavg" else graph.neighbours(name)
            self.transport.register(algorithm, peers=peers)
        self._server = FedAvgServer(clients=graph.nodes) if method == "fedavg" else None
        self._schedule = self._make_schedule(speeds)
        # local-only and centralized never exchange: their swaps are skipped, their steps kept.
        self._exchanges = method not in ("local", "centralized")
        self._events: Iterator = iter(self._schedule)
        self.events_consumed = 0
        self.steps_done = [0] * len(graph.nodes)
        self.recent_loss = [float("nan")] * len(graph.nodes)
        self._pending: list[int] = []
        self._deferred: list[Swap] = []  # swaps waiting for pending steps (advance)
        self._blocked: set[int] = set()  # nodes of the waiting swaps

    def _interval(self) -> float:
        """Local steps between two swaps on an edge (FedAvg: between two rounds)."""
        if self.method == "fedavg":
            return round_interval(self.train, self.config)
        return self.config.network.exchange_interval

    def _make_privacy(self) -> RunPrivacy:
        """Each node's exchange privacy or DP-SGD (config.privacy), seeded per node."""
        fedavg = self.method == "fedavg"
        nodes = self.graph.nodes
        return RunPrivacy(
            self.config.privacy,
            method=self.method,
            nodes=nodes,
            peers=[[SERVER] if fedavg else self.graph.neighbours(n) for n in nodes],
            train_sizes=[len(t.labels) for t in self.train],
            initial={k: v.clone() for k, v in self.views[0].items()},  # common, public
            plan=RunPlan(
                steps=self.steps,
                exchange_interval=self._interval(),
                batch_size=self.config.training.batch_size,
                seed=self.config.training.seed,
            ),
        )

    def _make_algorithms(self) -> list:
        return [
            node_algorithm(
                self.method,
                self.config,
                graph=self.graph,
                index=i,
                params=self.views[i],
                num_samples=len(self.train[i].labels),
                interval=self._interval(),
                privacy=self.privacy.exchange[i],
            )
            for i in range(len(self.graph.nodes))
        ]

    def _make_schedule(self, speeds: Sequence[float] | None) -> ExchangeSchedule:
        return make_schedule(self.method, self.config, self.graph, self.steps, speeds=speeds,
                             interval=self._interval())  # fmt: skip

    # --- stepping -------------------------------------------------------------------------------
    @property
    def mean_steps(self) -> float:
        return sum(self.steps_done) / len(self.steps_done)

    @property
    def finished(self) -> bool:
        return all(s >= self.steps for s in self.steps_done)

    def advance(self, until_total_steps: int) -> None:
        """Consume events until the nodes have taken `until_total_steps` local steps in all.

        A swap between nodes with pending steps waits for them (`_deferred`) instead of
        cutting the batch: the steps of other nodes commute with it, so later steps of other
        nodes still join the batch. A node in a waiting swap cuts it at its next step.
        """
        index = {n: i for i, n in enumerate(self.graph.nodes)}
        while sum(self.steps_done) + len(self._pending) < until_total_steps:
            event = next(self._events, None)
            if event is None:
                break
            self.events_consumed += 1
            if isinstance(event, Step):
                i = index[event.node]
                if i in self._pending or i in self._blocked:
                    self._flush()
                self._pending.append(i)
            elif isinstance(event, Swap) and self._exchanges:
                a, b = index[event.a], index[event.b]
                if {a, b} & (set(self._pending) | self._blocked):
                    self._deferred.append(event)  # after the pending steps, in event order
                    self._blocked.update((a, b))
                else:
                    self._swap(event)
            elif isinstance(event, Round):
                self._flush()
                self.transport.broadcast_round(self._server, self.graph.nodes)
        self._flush()

    def _swap(self, event: Swap) -> None:
        self.transport.swap(event.a, event.b, lost_ab=event.lost_ab, lost_ba=event.lost_ba)

    def _flush(self) -> None:
        """The pending nodes' gradients as one computation (or one by one), their steps, then
        the swaps that waited for them, in event order."""
        idx, self._pending = self._pending, []
        groups = ([idx] if self.config.batched else [[i] for i in idx]) if idx else []
        for group in groups:
            results = self.stack.gradients(group, [self.trainers[i] for i in group])
            for (grads, loss), i in zip(results, group, strict=True):
                self.algorithms[i].local_step(grads)
                self.steps_done[i] += 1
                if loss is not None:
                    self.recent_loss[i] = loss
        deferred, self._deferred, self._blocked = self._deferred, [], set()
        for event in deferred:
            self._swap(event)

    # --- evaluation -----------------------------------------------------------------------------
    def predict(self, images: Tensor) -> Tensor:
        """Probabilities [nodes, N, 14] of every node's current model."""
        return self.stack.predict(images)

    def predict_node(self, i: int, images: Tensor) -> Tensor:
        """Probabilities [N, 14] of node i's current model."""
        return self.stack.predict_node(i, images)

    def close(self) -> None:
        """Nothing to release in-process (the Ray engine ends its actors here)."""

    def node_state(self, i: int) -> dict[str, Tensor]:
        """A detached copy of node i's model (parameters and buffers)."""
        return self.stack.node_state(i)

    # --- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "params": {k: v.cpu() for k, v in self.stack.params.items()},
            "algorithms": [a.state_dict() for a in self.algorithms],
            "trainers": [t.state_dict() for t in self.trainers],
            "transport": self.transport.state_dict(),
            "events_consumed": self.events_consumed,
            "steps_done": list(self.steps_done),
            "recent_loss": list(self.recent_loss),
            "privacy": self.privacy.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.stack.params.items():
            v.copy_(state["params"][k])
        for alg, s in zip(self.algorithms, state["algorithms"], strict=True):
            alg.load_state_dict(s)
        for trainer, s in zip(self.trainers, state["trainers"], strict=True):
            trainer.load_state_dict(s)
        self.transport.load_state_dict(state["transport"])
        # The schedule is a pure function of its seed: replay it to where the checkpoint stood.
        self._events = itertools.islice(iter(self._schedule), int(state["events_consumed"]), None)
        self.events_consumed = int(state["events_consumed"])
        self.steps_done = [int(s) for s in state["steps_done"]]
        self.recent_loss = [float(x) for x in state["recent_loss"]]
        self.privacy.load_state_dict(state.get("privacy", {}))
