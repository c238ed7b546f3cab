"""Seeded asynchronous event stream for the simulation: node steps, edge swaps, losses, rounds."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from consensus.topology import Topology


class Step(NamedTuple):
    """`node` takes one local step (one gradient evaluation)."""

    node: str


class Swap(NamedTuple):
    """Edge (a, b) swaps messages; `lost_ab`: a's message to b is lost (and vice versa)."""

    a: str
    b: str
    lost_ab: bool
    lost_ba: bool


class Round(NamedTuple):
    """FedAvg: every client sends to the server, the server averages and sends back."""

    index: int


Event = Step | Swap | Round


class ExchangeSchedule:
    """The order of local steps and exchanges in simulated time (docs/algorithm.md sec. 8).

    Node i steps at times (k + phase_i) / speed_i, k = 0..steps-1 (phase uniform in [0, 1)).
    Each edge swaps at the events of a Poisson process of rate min(speed_a, speed_b) /
    exchange_interval, i.e. about once per `exchange_interval` local steps, until the last
    node's last step; each direction of a swap is lost with probability `loss_probability`.
    With `rounds=True` (FedAvg) all nodes take `exchange_interval` steps, then a Round.
    Every node takes exactly `steps` steps. Pure: no clock, its own seeded generator.
    """

    def __init__(
        self,
        *,
        topology: Topology,
        steps: int,
        exchange_interval: float,
        seed: int,
        speeds: Mapping[str, float] | None = None,
        speed_jitter: float = 0.0,
        loss_probability: float = 0.0,
        rounds: bool = False,
    ) -> None:
        if steps < 0 or not exchange_interval > 0:
            raise ValueError("need steps >= 0 and exchange_interval > 0")
        if not 0 <= loss_probability < 1 or not 0 <= speed_jitter < 1:
            raise ValueError("loss_probability and speed_jitter must be in [0, 1)")
        if rounds and (loss_probability > 0 or exchange_interval != int(exchange_interval)):
            raise ValueError("rounds=True needs an integer exchange_interval and no message loss")
        self.topology = topology
        self.steps = steps
        self.exchange_interval = exchange_interval
        self.loss_probability = loss_probability
        self.rounds = rounds
        rng = np.random.default_rng(seed)
        self.speeds = self._speeds(rng, speeds, speed_jitter)
        self._events = self._build(rng)

    def _speeds(
        self, rng: np.random.Generator, speeds: Mapping[str, float] | None, jitter: float
    ) -> dict[str, float]:
        nodes = self.topology.nodes
        if speeds is not None:
            if set(speeds) != set(nodes) or min(speeds.values()) <= 0:
                raise ValueError(f"speeds must give a positive speed for each of {nodes}")
            return {n: float(speeds[n]) for n in nodes}
        factors = 1.0 + jitter * rng.uniform(-1.0, 1.0, size=len(nodes))
        return {n: float(f) for n, f in zip(nodes, factors, strict=True)}

    def _step_times(self, rng: np.random.Generator) -> list[np.ndarray]:
        phases = rng.uniform(0.0, 1.0, size=len(self.topology.nodes))
        ticks = np.arange(self.steps, dtype=np.float64)
        return [
            (ticks + phase) / self.speeds[n]
            for n, phase in zip(self.topology.nodes, phases, strict=True)
        ]

    def _build(self, rng: np.random.Generator) -> list[Event]:
        step_times = self._step_times(rng)
        steps = [Step(n) for n in self.topology.nodes]
        if self.rounds:
            return self._build_rounds(step_times, steps)
        times, codes = list(step_times), [np.full(self.steps, k) for k in range(len(steps))]
        end = max((t[-1] for t in step_times if len(t)), default=0.0)
        table: list[Event] = list(steps)
        for a, b in self.topology.edges:
            rate = min(self.speeds[a], self.speeds[b]) / self.exchange_interval
            count = int(rng.poisson(rate * end))
            times.append(rng.uniform(0.0, end, size=count))
            lost = rng.random(size=(count, 2)) < self.loss_probability
            # four precomputed Swap objects per edge, picked by the two loss bits
            codes.append(len(table) + 2 * lost[:, 0] + lost[:, 1])
            table += [Swap(a, b, bool(x), bool(y)) for x in (0, 1) for y in (0, 1)]
        all_times, all_codes = np.concatenate(times), np.concatenate(codes).astype(np.int64)
        order = np.argsort(all_times, kind="stable")
        return [table[c] for c in all_codes[order].tolist()]

    def _build_rounds(self, step_times: list[np.ndarray], steps: list[Step]) -> list[Event]:
        interval = int(self.exchange_interval)
        events: list[Event] = []
        for index, start in enumerate(range(0, self.steps, interval)):
            stop = min(start + interval, self.steps)
            times = np.concatenate([t[start:stop] for t in step_times])
            codes = np.repeat(np.arange(len(steps)), stop - start)
            events += [steps[c] for c in codes[np.argsort(times, kind="stable")].tolist()]
            events.append(Round(index))
        return events

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)
