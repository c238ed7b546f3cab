"""Server-side bookkeeping of the exchange: counters, and the checks that refuse a call."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import NoReturn, TypeVar

import grpc

from consensus.transport.framing import Announcement, edge_name
from consensus.transport.grpc_common import ModelWithheld, NodeNotReady, TransportConfig
from consensus.wire import MessageRejected

log = logging.getLogger("consensus.transport.grpc_server")  # one logger for the server's lines
T = TypeVar("T")


class Stats:
    """Thread-safe counters: swaps, bytes, and refusals by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Refusals:
    """Checks that end a call with a status; every refusal is logged and counted."""

    def __init__(self, name: str, config: TransportConfig, stats: Stats) -> None:
        self._name = name
        self._config = config
        self.stats = stats

    def refuse(
        self,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        reason: str,
        peer: str,
        detail: str,
    ) -> NoReturn:
        self.stats.add(f"refused.{reason}")
        log.warning("%s: refused call from %s: %s (%s)", self._name, peer, reason, detail)
        context.abort(code, f"{reason}: {detail}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def check_announcement(
        self, context: grpc.ServicerContext, peer: str, announcement: Announcement, purpose: int
    ) -> None:
        if announcement.sender != peer:
            self.refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "sender_mismatch",
                peer,
                f"header names sender {announcement.sender!r}, certificate CN is {peer!r}",
            )
        expected_edge = edge_name(peer, self._name)
        if announcement.purpose != purpose or announcement.edge != expected_edge:
            self.refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_header",
                peer,
                f"expected purpose {purpose} on edge {expected_edge!r}, got "
                f"{announcement.purpose} on {announcement.edge!r}",
            )
        self.check_method(context, peer, announcement.method)

    def check_method(self, context: grpc.ServicerContext, peer: str, method: str) -> None:
        mine = self._config.method
        if mine and method and method != mine:
            self.refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "method_mismatch",
                peer,
                f"peer runs {method!r}, this node {mine!r}; use one algorithm network-wide",
            )

    def call_handler(
        self, context: grpc.ServicerContext, peer: str, call: Callable[..., T], *args: object
    ) -> T:
        """Run a handler method; map refusals to statuses without leaking internal errors."""
        try:
            return call(peer, *args)
        except MessageRejected as exc:
            self.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, peer, exc.detail)
        except NodeNotReady as exc:
            self.refuse(context, grpc.StatusCode.UNAVAILABLE, "not_ready", peer, str(exc))
        except ModelWithheld as exc:
            self.refuse(
                context, grpc.StatusCode.FAILED_PRECONDITION, "model_withheld", peer, str(exc)
            )
        except Exception:
            log.exception("%s: handler failed on a call from %s", self._name, peer)
            self.stats.add("refused.handler_error")
            context.abort(grpc.StatusCode.INTERNAL, f"{self._name} failed; see its log")
            raise  # pragma: no cover (abort raises)
