"""The seeded asynchronous event stream: determinism, step budget, swap rate, loss, rounds."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from consensus.exchange_schedule import ExchangeSchedule, Round, Step, Swap
from consensus.topology import full, node_names, ring

RING = ring(node_names(8))


def test_same_seed_same_events_other_seed_other_events() -> None:
    def make(seed: int) -> list:
        return list(ExchangeSchedule(topology=RING, steps=200, exchange_interval=2.0, seed=seed))

    assert make(1) == make(1)
    assert make(1) != make(2)
    schedule = ExchangeSchedule(topology=RING, steps=50, exchange_interval=2.0, seed=1)
    assert list(schedule) == list(schedule) and len(schedule) == len(list(schedule))


def test_every_node_takes_exactly_the_step_budget_whatever_its_speed() -> None:
    speeds = {n: 1.0 + k for k, n in enumerate(RING.nodes)}
    events = list(
        ExchangeSchedule(topology=RING, steps=300, exchange_interval=1.0, seed=0, speeds=speeds)
    )
    counts = Counter(e.node for e in events if isinstance(e, Step))
    assert counts == {n: 300 for n in RING.nodes}
    # the fastest node finishes first
    last_step = {e.node: k for k, e in enumerate(events) if isinstance(e, Step)}
    assert last_step["N8"] < last_step["N1"]


def test_each_edge_swaps_about_once_per_exchange_interval_steps() -> None:
    steps, interval = 4000, 4.0
    events = ExchangeSchedule(topology=RING, steps=steps, exchange_interval=interval, seed=3)
    per_edge = Counter((e.a, e.b) for e in events if isinstance(e, Swap))
    assert set(per_edge) == set(RING.edges)
    expected = steps / interval  # Poisson: standard deviation sqrt(1000) ~ 32
    assert all(abs(count - expected) < 5 * expected**0.5 for count in per_edge.values())


def test_swaps_happen_between_steps_not_only_at_the_end() -> None:
    events = list(ExchangeSchedule(topology=RING, steps=100, exchange_interval=1.0, seed=0))
    first_half = events[: len(events) // 2]
    assert any(isinstance(e, Swap) for e in first_half)
    assert any(isinstance(e, Step) for e in events[len(events) // 2 :])


def test_message_loss_is_drawn_per_direction() -> None:
    events = ExchangeSchedule(
        topology=RING, steps=2000, exchange_interval=1.0, seed=5, loss_probability=0.25
    )
    swaps = [e for e in events if isinstance(e, Swap)]
    lost_ab = sum(s.lost_ab for s in swaps) / len(swaps)
    lost_ba = sum(s.lost_ba for s in swaps) / len(swaps)
    both = sum(s.lost_ab and s.lost_ba for s in swaps) / len(swaps)
    assert lost_ab == pytest.approx(0.25, abs=0.02)
    assert lost_ba == pytest.approx(0.25, abs=0.02)
    assert both == pytest.approx(0.0625, abs=0.01)  # independent directions


def test_rounds_mode_steps_every_node_then_averages() -> None:
    nodes = node_names(3)
    events = list(
        ExchangeSchedule(topology=full(nodes), steps=7, exchange_interval=3, seed=0, rounds=True)
    )
    rounds = [k for k, e in enumerate(events) if isinstance(e, Round)]
    assert [events[k] for k in rounds] == [Round(0), Round(1), Round(2)]
    assert rounds == [9, 19, 23]  # 3 nodes x 3 steps, x 3 steps, x 1 step (the remainder)
    assert not any(isinstance(e, Swap) for e in events)


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="exchange_interval"):
        ExchangeSchedule(topology=RING, steps=10, exchange_interval=0.0, seed=0)
    with pytest.raises(ValueError, match="loss_probability"):
        ExchangeSchedule(topology=RING, steps=10, exchange_interval=1, seed=0, loss_probability=1)
    with pytest.raises(ValueError, match="speeds"):
        ExchangeSchedule(topology=RING, steps=10, exchange_interval=1, seed=0, speeds={"N1": 1})
    with pytest.raises(ValueError, match="rounds"):
        ExchangeSchedule(topology=RING, steps=10, exchange_interval=1.5, seed=0, rounds=True)


def test_eight_nodes_ten_thousand_steps_is_cheap() -> None:
    start = time.process_time()
    schedule = ExchangeSchedule(
        topology=RING, steps=10_000, exchange_interval=1.0, seed=0, loss_probability=0.1
    )
    elapsed = time.process_time() - start
    assert len(schedule) > 8 * 10_000
    assert elapsed < 1.0  # CPU time; typically ~0.05 s
