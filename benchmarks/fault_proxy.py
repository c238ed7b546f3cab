"""A TCP proxy on loopback that damages the traffic between two nodes: it drops connections,
delays, truncates and corrupts bytes (seeded draws per chunk, in both directions).

The nodes' TLS runs end to end through it (the client checks the peer's name, not the address it
dials), so the proxy only ever sees ciphertext: every damaged byte must be caught by TLS or gRPC
and the swap retried, never handed to the node's gate.

    proxy = FaultProxy(target_port=50052, seed=1); proxy.start(); ... proxy.set_plan(FaultPlan(
        corrupt=0.02)); ... proxy.stop(); proxy.counters()
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """Probabilities per forwarded chunk (each read of up to 64 KiB, either direction)."""

    drop: float = 0.0  # close both sides at once, the chunk is lost
    delay: float = 0.0  # hold the chunk for up to `max_delay_s` before forwarding it
    truncate: float = 0.0  # forward a random prefix of the chunk, then close both sides
    corrupt: float = 0.0  # flip 1 to 3 random bytes of the chunk, forward it
    max_delay_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("drop", "delay", "truncate", "corrupt"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FaultPlan.{name} must be a probability")


class FaultProxy:
    """Listens on 127.0.0.1:`port` (0: any), forwards to 127.0.0.1:`target_port`; its own
    event loop in a daemon thread. `set_plan` changes the faults for chunks from then on."""

    def __init__(self, *, target_port: int, seed: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self._rng = random.Random(seed)
        self._plan = FaultPlan()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fault-proxy")  # fmt: skip
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> int:
        """Start listening; returns the port."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(10)
        return self.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    # -- inside the event loop ------------------------------------------------------------------

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    def _count(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count("connections")
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self._count("upstream_refused")
            writer.close()
            return
        pair = (writer, up_writer)
        self._writers.update(pair)
        await asyncio.gather(self._pump(reader, up_writer, pair),
                             self._pump(up_reader, writer, pair))  # fmt: skip
        self._writers.difference_update(pair)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        """Forward one direction chunk by chunk, damaging chunks as the plan says."""
        try:
            while chunk := await reader.read(CHUNK):
                data, cut = await self._damage(chunk)
                if data:
                    writer.write(data)
                    await writer.drain()
                    self._count("bytes", len(data))
                if cut:  # dropped or truncated: the connection ends here
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pair:  # either side ending ends the connection (as a cut cable would)
                w.close()

    async def _damage(self, chunk: bytes) -> tuple[bytes, bool]:
        """What to forward of `chunk`, and whether to cut the connection after it."""
        with self._lock:
            plan = self._plan
            draws = [self._rng.random() for _ in range(4)]
            self._counts["chunks"] += 1
        if draws[0] < plan.drop:
            self._count("dropped")
            return b"", True
        if draws[1] < plan.delay:
            self._count("delayed")
            await asyncio.sleep(self._rng.uniform(0.0, plan.max_delay_s))
        if draws[2] < plan.truncate:
            self._count("truncated")
            return chunk[: self._rng.randrange(len(chunk))], True
        if draws[3] < plan.corrupt:
            self._count("corrupted")
            data = bytearray(chunk)
            for _ in range(self._rng.randint(1, 3)):
                data[self._rng.randrange(len(data))] ^= self._rng.randint(1, 255)
            return bytes(data), False
        return chunk, False
