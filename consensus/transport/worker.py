"""Background exchanges: swaps with each peer at random (Poisson) times, never blocking training."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from concurrent import futures

from consensus.transport.grpc_client import PeerClient, PeerStatus
from consensus.transport.grpc_common import NodeNotReady, SwapHandler, TransportError
from consensus.wire import MessageRejected

log = logging.getLogger(__name__)


class ExchangeWorker:
    """Starts swaps with every given peer at exponentially distributed intervals.

    One scheduler thread draws the times (from the seeded `rng`), a small pool runs the swaps
    (`PeerClient.exchange`: outgoing_for -> swap -> validate -> deliver), at most one per peer at a
    time. A peer that failed is not called again before its back-off time. Failures are logged
    and shown in `status()`; nothing here ever raises into the caller. The worker owns the
    clients and closes them on `stop()`.

    Pass only the peers this node should initiate with: e.g. each edge's lower-named end, for
    one initiator per edge, or all neighbours, for twice the exchange rate.
    """

    def __init__(
        self,
        *,
        handler: SwapHandler,
        clients: Iterable[PeerClient],
        mean_interval_s: float,
        rng: random.Random,
        max_parallel: int = 2,
    ) -> None:
        if mean_interval_s <= 0:
            raise ValueError(f"mean_interval_s must be positive, got {mean_interval_s}")
        self._handler = handler
        self._clients = {c.peer: c for c in clients}
        self._mean = mean_interval_s
        self._rng = rng
        self._pool = futures.ThreadPoolExecutor(max_parallel, thread_name_prefix="exchange")
        self._stop = threading.Event()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._outcomes = {"ok": 0, "failed": 0, "not_ready": 0, "rejected": 0}

    def start(self) -> None:
        """Start the scheduler thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("ExchangeWorker.start() called twice")
        self._thread = threading.Thread(
            target=self._schedule, name="exchange-scheduler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling, interrupt back-off waits, close the clients, wait for running swaps."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for client in self._clients.values():
            client.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def status(self) -> dict[str, PeerStatus]:
        """Per-peer status for the node's `status` command."""
        return {peer: client.status() for peer, client in self._clients.items()}

    def outcomes(self) -> dict[str, int]:
        """How many exchanges ended ok / failed / not_ready / rejected so far."""
        with self._lock:
            return dict(self._outcomes)

    def _next_gap(self) -> float:
        return self._rng.expovariate(1.0 / self._mean)

    def _schedule(self) -> None:
        now = time.monotonic()
        due = {peer: now + self._next_gap() for peer in sorted(self._clients)}
        while not self._stop.is_set():
            now = time.monotonic()
            for peer in sorted(due):
                if due[peer] > now:
                    continue
                not_before = self._clients[peer].ready_at()
                if not_before > now:  # still backing off after a failure
                    due[peer] = not_before
                    continue
                with self._lock:
                    busy = peer in self._in_flight
                    self._in_flight.add(peer)
                if not busy:  # an activation while a swap is running is skipped
                    self._pool.submit(self._run, peer)
                due[peer] = now + self._next_gap()
            self._stop.wait(min(max(min(due.values()) - time.monotonic(), 0.005), 1.0))

    def _run(self, peer: str) -> None:
        try:
            self._clients[peer].exchange(self._handler)
            outcome = "ok"
        except NodeNotReady as exc:
            log.debug("exchange with %s skipped: %s", peer, exc)
            outcome = "not_ready"
        except MessageRejected as exc:
            log.warning("reply from %s refused: %s", peer, exc)
            outcome = "rejected"
        except TransportError:
            outcome = "failed"  # PeerClient logged it and recorded it in its status
        except Exception:
            if not self._stop.is_set():  # after stop(), closed channels fail calls: expected
                log.exception("exchange with %s failed unexpectedly", peer)
            outcome = "failed"
        finally:
            with self._lock:
                self._in_flight.discard(peer)
        with self._lock:
            self._outcomes[outcome] += 1
