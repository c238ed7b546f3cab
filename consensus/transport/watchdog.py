"""One thread per server that cancels calls gone quiet or past their time limit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


class CallWatch:
    """The watchdog's view of one call: when it started and when its last frame arrived."""

    def __init__(self, context: grpc.ServicerContext, peer: str, *, idle_s: float, limit_s: float):
        self.context = context
        self.peer = peer
        self._idle_s = idle_s
        self._started = self._last = time.monotonic()
        self._limit_at = self._started + limit_s
        self._idle = True  # idle timeout applies while the caller's frames are awaited
        self.expired: str | None = None  # "idle_timeout" or "call_timeout" once cancelled

    def touching(self, frames: Iterator[T]) -> Iterator[T]:
        """`frames`, noting the arrival of each one (the idle clock restarts)."""
        for frame in frames:
            self._last = time.monotonic()
            yield frame

    def request_done(self) -> None:
        """The caller's frames are all in: from now on only the call's time limit applies."""
        self._idle = False

    def due_at(self) -> float:
        if self._idle:
            return min(self._limit_at, self._last + self._idle_s)
        return self._limit_at

    def overdue(self, now: float) -> str | None:
        if now >= self._limit_at:
            return "call_timeout"
        if self._idle and now >= self._last + self._idle_s:
            return "idle_timeout"
        return None


class CallWatchdog:
    """Cancels a call when no frame of the caller arrives for `idle_s` seconds (a stalled or
    trickling sender) or when it runs `limit_s` seconds in all, whatever deadline the caller
    chose; either would otherwise hold that neighbour's only call slot. One daemon thread for
    the whole server, waking at the earliest due time; `on_expire(watch)` counts and logs.
    """

    def __init__(self, *, name: str, on_expire: Callable[[CallWatch], None]) -> None:
        self._on_expire = on_expire
        self._watches: set[CallWatch] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"watchdog-{name}", daemon=True)
        self._thread.start()

    def watch(
        self, context: grpc.ServicerContext, peer: str, *, idle_s: float, limit_s: float
    ) -> CallWatch:
        """Start watching a call; it is forgotten when the call ends."""
        watch = CallWatch(context, peer, idle_s=idle_s, limit_s=limit_s)
        with self._cond:
            self._watches.add(watch)
            self._cond.notify()
        context.add_callback(lambda: self._forget(watch))
        return watch

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(5)

    def _forget(self, watch: CallWatch) -> None:
        with self._cond:
            self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                expired = [w for w in self._watches if w.overdue(now)]
                for watch in expired:
                    watch.expired = watch.overdue(now)
                    self._watches.discard(watch)
                due = min((w.due_at() for w in self._watches), default=now + 60.0)
                if not expired:
                    self._cond.wait(max(due - now, 0.001))
                    continue
            for watch in expired:  # outside the lock: cancel() runs the call's callbacks
                watch.context.cancel()
                self._on_expire(watch)
