"""One method's run on Ray: each hospital an actor, wire-format bytes between them, same schedule.

The driver replays the seeded exchange schedule and only submits work: a Step is a call to the
hospital's actor, a Swap is two `send` calls whose results (wire bytes) are passed, as object
references, to the two `receive` calls. Ray runs the calls to one actor in submission order,
so each hospital sees exactly the event order of the in-process engine, while hospitals that
do not wait on each other's messages compute at the same time, on as many cores, GPUs or
hosts as the cluster has. Each actor trains exactly as the in-process engine's looped mode
(`batched = false`): the same batches, gradients, algorithm, gate and message bytes.

Ray itself carries the actors' set-up (the initial model, the hospital's data) and their
checkpoints with its own serializer, inside the researcher's cluster; what hospitals send
each other is only ever wire bytes, checked by the receiver's gate.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from consensus.exchange_schedule import Round, Step, Swap
from consensus.topology import Topology
from consensus.transport.memory import InMemoryTransport, TransportStats
from hospital_node.simulation.budget import with_schedule_length
from hospital_node.simulation.config import SimulationConfig
from hospital_node.simulation.engine import NodeTrainData, make_schedule, node_algorithm
from hospital_node.simulation.privacy import RunPlan, RunPrivacy
from hospital_node.training.step import HospitalTrainer, ModelStack


class RayUnavailable(ValueError):
    """--backend ray without Ray installed, or with a setting it does not run."""


def import_ray() -> Any:
    """The `ray` module, or RayUnavailable saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            "--backend ray needs Ray: pip install 'ecl-hospitals[ray]' (or the in-process "
            "engine, --backend inprocess)"
        ) from None
    return ray


class HospitalActor:
    """One hospital in its own process: its model, data, algorithm and wire endpoint."""

    def __init__(
        self, *, method: str, config: SimulationConfig, graph: Topology, index: int,
        train: NodeTrainData, init_module: nn.Module, interval: float,
    ) -> None:  # fmt: skip
        if config.training.threads > 0:
            torch.set_num_threads(config.training.threads)
        self.name = graph.nodes[index]
        self.stack = ModelStack.for_training(init_module, copies=1, config=config.training)
        self.trainer = HospitalTrainer.build(
            name=train.name, images=train.images, labels=train.labels, config=config.training
        )
        self.algorithm = node_algorithm(
            method, config, graph=graph, index=index, params=self.stack.views[0],
            num_samples=len(train.labels), interval=interval,
        )  # fmt: skip
        self.transport = InMemoryTransport()  # this hospital's endpoint only: gate and counter
        self.transport.register(self.algorithm, peers=graph.neighbours(self.name))
        self.steps_done = 0
        self.recent_loss = float("nan")

    def step(self, count: int) -> None:
        for _ in range(count):
            [(grads, loss)] = self.stack.gradients([0], [self.trainer])
            self.algorithm.local_step(grads)
            self.steps_done += 1
            if loss is not None:
                self.recent_loss = loss

    def send(self, receiver: str) -> bytes | None:
        """The wire bytes of this hospital's message to `receiver` (None: budget spent)."""
        return self.transport.send_unless_withheld(self.name, receiver)

    def receive(self, sender: str, data: bytes | None, lost: bool) -> None:
        self.transport.receive(sender, self.name, data, lost=lost)

    def progress(self) -> tuple[int, float, tuple]:
        """Steps taken, the last loss, and the links into this hospital (their counters)."""
        return self.steps_done, self.recent_loss, self.transport.stats().links

    def cpu_seconds(self) -> float:
        """CPU time this actor's process has used (for benchmarks on a shared machine)."""
        return time.process_time()

    def predict(self, images: Tensor) -> Tensor:
        return self.stack.predict_node(0, images)

    def node_state(self) -> dict[str, Tensor]:
        return self.stack.node_state(0)

    def state_dict(self) -> dict:
        return {
            "params": {k: v.cpu() for k, v in self.stack.params.items()},
            "algorithm": self.algorithm.state_dict(),
            "trainer": self.trainer.state_dict(),
            "transport": self.transport.state_dict(),
            "steps_done": self.steps_done,
            "recent_loss": self.recent_loss,
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.stack.params.items():
            v.copy_(state["params"][k])
        self.algorithm.load_state_dict(state["algorithm"])
        self.trainer.load_state_dict(state["trainer"])
        self.transport.load_state_dict(state["transport"])
        self.steps_done = int(state["steps_done"])
        self.recent_loss = float(state["recent_loss"])


class _TransportView:
    """What the runner reads of a transport: the counters of every link, from the actors."""

    def __init__(self, links: Sequence) -> None:
        self._links = tuple(sorted(links, key=lambda link: (link.sender, link.receiver)))

    def stats(self) -> TransportStats:
        return TransportStats(links=self._links)


def start_ray(config: SimulationConfig) -> Any:
    """Ray, initialised once per process: a local instance, or the configured cluster."""
    ray = import_ray()
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if config.ray.address:
            options["address"] = config.ray.address
        else:  # a local instance: on the loopback interface only, nothing listens outside
            options["object_store_memory"] = config.ray.object_store_mb * 2**20
            options["_node_ip_address"] = "127.0.0.1"
        ray.init(**options)
    return ray


class RayMethodRun:
    """`MethodRun`'s interface (what the runner reads), with every hospital a Ray actor.

    Runs ECL, gossip, gradient tracking, local-only and the centralized reference; FedAvg
    (a server round) and the privacy modes run in-process only for now.
    """

    def __init__(
        self, *, method: str, graph: Topology, train: Sequence[NodeTrainData],
        config: SimulationConfig, init_module: nn.Module, steps: int,
        speeds: Sequence[float] | None = None,
    ) -> None:  # fmt: skip
        if method == "fedavg" or config.privacy.mode != "off":
            raise RayUnavailable(
                "--backend ray runs every method but fedavg, without privacy modes; "
                "run fedavg or --dp with --backend inprocess"
            )
        config = with_schedule_length(config, steps)  # a cosine decay over this run's steps
        self.method, self.graph, self.config, self.steps = method, graph, config, steps
        ray = start_ray(config)
        self._ray = ray
        interval = config.network.exchange_interval
        self._schedule = make_schedule(method, config, graph, steps, speeds=speeds,
                                       interval=interval)  # fmt: skip
        self.privacy = RunPrivacy(
            config.privacy, method=method, nodes=graph.nodes,
            peers=[graph.neighbours(n) for n in graph.nodes],
            train_sizes=[len(t.labels) for t in train],
            initial=dict(init_module.named_parameters()),
            plan=RunPlan(steps=steps, exchange_interval=interval,
                         batch_size=config.training.batch_size, seed=config.training.seed),
        )  # fmt: skip
        remote = ray.remote(**_actor_resources(config, len(graph.nodes)))(HospitalActor)
        self.actors = [
            remote.remote(
                method=method,
                config=config,
                graph=graph,
                index=i,
                train=t,
                init_module=init_module,
                interval=interval,
            )  # fmt: skip
            for i, t in enumerate(train)
        ]
        self._exchanges = method not in ("local", "centralized")
        self._events = iter(self._schedule)
        self.events_consumed = 0
        self.steps_done = [0] * len(graph.nodes)
        self.recent_loss = [float("nan")] * len(graph.nodes)
        self.transport = _TransportView(())

    @property
    def mean_steps(self) -> float:
        return sum(self.steps_done) / len(self.steps_done)

    @property
    def finished(self) -> bool:
        return all(s >= self.steps for s in self.steps_done)

    def advance(self, until_total_steps: int) -> None:
        """Submit events until `until_total_steps` local steps in all, then wait for them."""
        index = {n: i for i, n in enumerate(self.graph.nodes)}
        planned = sum(self.steps_done)
        pending = [0] * len(self.actors)  # consecutive steps, submitted as one call
        while planned < until_total_steps:
            event = next(self._events, None)
            if event is None:
                break
            self.events_consumed += 1
            if isinstance(event, Step):
                pending[index[event.node]] += 1
                planned += 1
            elif isinstance(event, Swap) and self._exchanges:
                a, b = index[event.a], index[event.b]
                self._submit_steps(pending, (a, b))
                # both messages are built before either is received, as in a swap in-process
                data_ab = self.actors[a].send.remote(event.b)
                data_ba = self.actors[b].send.remote(event.a)
                self.actors[b].receive.remote(event.a, data_ab, event.lost_ab)
                self.actors[a].receive.remote(event.b, data_ba, event.lost_ba)
            elif isinstance(event, Round):  # pragma: no cover - refused in __init__
                raise RayUnavailable("FedAvg rounds run in-process only")
        self._submit_steps(pending, range(len(self.actors)))
        self._collect()

    def _submit_steps(self, pending: list[int], nodes: Sequence[int]) -> None:
        for i in nodes:
            if pending[i]:
                self.actors[i].step.remote(pending[i])
                pending[i] = 0

    def _collect(self) -> None:
        """Wait for every submitted call; read steps, losses and link counters back."""
        progress = self._ray.get([actor.progress.remote() for actor in self.actors])
        links = []
        for i, (steps_done, loss, node_links) in enumerate(progress):
            self.steps_done[i], self.recent_loss[i] = steps_done, loss
            links.extend(node_links)
        self.transport = _TransportView(links)

    def close(self, *, timeout_s: float = 60.0) -> None:
        """End the actors and wait for their processes to exit (each frees ~0.5 GB)."""
        exits = [actor.__ray_terminate__.remote() for actor in self.actors]
        self._ray.wait(exits, num_returns=len(exits), timeout=timeout_s)
        self.actors = []

    def cpu_seconds(self) -> float:
        """CPU time used by all hospital actors so far."""
        return sum(self._ray.get([actor.cpu_seconds.remote() for actor in self.actors]))

    def predict(self, images: Tensor) -> Tensor:
        """Probabilities [nodes, N, 14] of every node's current model."""
        return torch.stack(self._ray.get([a.predict.remote(images) for a in self.actors]))

    def predict_node(self, i: int, images: Tensor) -> Tensor:
        return self._ray.get(self.actors[i].predict.remote(images))

    def node_state(self, i: int) -> dict[str, Tensor]:
        return self._ray.get(self.actors[i].node_state.remote())

    def state_dict(self) -> dict:
        return {
            "backend": "ray",
            "hospitals": self._ray.get([a.state_dict.remote() for a in self.actors]),
            "events_consumed": self.events_consumed,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != "ray":
            raise ValueError("checkpoint written by the in-process engine: resume it with it")
        self._ray.get(
            [
                a.load_state_dict.remote(s)
                for a, s in zip(self.actors, state["hospitals"], strict=True)
            ]
        )
        self._events = itertools.islice(iter(self._schedule), int(state["events_consumed"]), None)
        self.events_consumed = int(state["events_consumed"])
        self._collect()


def _actor_resources(config: SimulationConfig, hospitals: int) -> dict[str, float]:
    """Each actor's share: the configured one, else the local CPUs split between hospitals."""
    cpus = config.ray.cpus_per_hospital or (os.cpu_count() or 1) / hospitals
    return {"num_cpus": cpus, "num_gpus": config.ray.gpus_per_hospital}
