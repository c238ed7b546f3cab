"""Hostile messages for the hostile-peer campaign: a neighbour holding a valid certificate (N2's
real bundle) sends raw frames to N1's endpoint. Each kind makes one call (a few make many at once)
and returns what the node answered; `KINDS` lists them with their share of the campaign.

Gate-level kinds send a well-framed stream whose payload the node's MessageGate must refuse
(malformed bytes, wrong shapes or dtypes, NaN/Inf, forged sender, replayed or absurd sequence
numbers...); transport-level kinds break the framing or the call itself (forged header sender,
oversized announcements, digests, truncated or overlong streams, huge frames and metadata);
slow kinds never finish (stalled and slow-loris streams); `burst` opens many streams at once.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import torch

from consensus.transport import exchange_pb2 as pb
from consensus.transport import exchange_pb2_grpc as pb_grpc
from consensus.transport.framing import PROTOCOL_VERSION
from consensus.transport.tls import TlsMaterial, channel_credentials
from consensus.wire import Message, MessageHeader, encode_message

Outcome = tuple[str, str]  # (gRPC status name or "OK", refusal reason parsed from the details)
EPOCH = 1 << 32
MIB = 1 << 20


def reason_of(err: grpc.RpcError) -> Outcome:
    details = err.details() or ""
    head = details.split(":", 1)[0].strip()
    reason = head if head.replace("_", "").isalnum() and " " not in head else details[:60]
    return err.code().name, reason


class HostilePeer:
    """N2 towards N1 over one mutual-TLS channel, with the tensors of a valid N2 message."""

    def __init__(self, *, tls: TlsMaterial, address: str, method: str, schema_hash: str,
                 valid: dict[str, torch.Tensor], rng: random.Random) -> None:  # fmt: skip
        options = [("grpc.ssl_target_name_override", "N1"),
                   ("grpc.max_send_message_length", 64 * MIB),
                   ("grpc.max_receive_message_length", 64 * MIB)]  # fmt: skip
        self.channel = grpc.secure_channel(address, channel_credentials(tls), options)
        self.stub = pb_grpc.ConsensusExchangeStub(self.channel)
        self.method, self.schema_hash, self.valid, self.rng = method, schema_hash, valid, rng
        self.sequence = 5 * EPOCH  # "boot epoch 5" of N2: every crafted message is fresh
        self.accepted: list[tuple[int, bytes]] = []  # valid payloads the node took
        self._lock = threading.Lock()

    def close(self) -> None:
        self.channel.close()

    # -- building blocks ------------------------------------------------------------------------

    def next_sequence(self) -> int:
        with self._lock:
            self.sequence += 1
            return self.sequence

    def message(self, tensors: dict[str, torch.Tensor] | None = None, **header: object) -> bytes:
        fields = {"sender": "N2", "receiver": "N1", "method": self.method,
                  "schema_hash": self.schema_hash, "sequence": self.next_sequence()}  # fmt: skip
        fields.update(header)
        tensors = self.valid if tensors is None else tensors
        return encode_message(Message(header=MessageHeader(**fields), tensors=tensors))

    def frames(self, payload: bytes, *, chunk: int = MIB, **header: object) -> list[pb.Chunk]:
        fields = {"protocol_version": PROTOCOL_VERSION, "sender": "N2", "edge": "N1--N2",
                  "method": self.method, "purpose": pb.PURPOSE_SWAP,
                  "total_bytes": len(payload), "sha256": hashlib.sha256(payload).digest(),
                  "nonce": os.urandom(32)}  # fmt: skip
        fields.update(header)
        out = [pb.Chunk(header=pb.Header(**fields))]
        out += [pb.Chunk(data=payload[i : i + chunk]) for i in range(0, len(payload), chunk)]
        return out

    def call(self, frames: Iterator[pb.Chunk] | list[pb.Chunk], *, timeout: float = 30.0,
             metadata: tuple | None = None, rpc: str = "Swap") -> Outcome:  # fmt: skip
        try:
            for _ in getattr(self.stub, rpc)(iter(frames), timeout=timeout, metadata=metadata):
                pass
        except grpc.RpcError as err:
            return reason_of(err)
        return "OK", ""

    def send(self, payload: bytes, **header: object) -> Outcome:
        return self.call(self.frames(payload, **header))

    def tensors(self, change: Callable[[dict[str, torch.Tensor]], None]) -> dict:
        out = {k: v.clone() for k, v in self.valid.items()}
        change(out)
        return out

    def pick(self) -> str:
        return self.rng.choice(sorted(self.valid))

    # -- gate-level kinds -------------------------------------------------------------------------

    def valid_message(self) -> Outcome:
        payload = self.message()
        outcome = self.send(payload)
        if outcome[0] == "OK":
            self.accepted.append((self.sequence, payload))
        return outcome

    def random_bytes(self) -> Outcome:
        return self.send(os.urandom(self.rng.randint(1, len(self.message()))))

    def truncated(self) -> Outcome:
        payload = self.message()
        return self.send(payload[: self.rng.randrange(1, len(payload))])

    def flipped_header_byte(self) -> Outcome:
        data = bytearray(self.message())
        data[8 + self.rng.randrange(200)] ^= 0x5A  # inside the JSON header
        return self.send(bytes(data))

    def huge_header_length(self) -> Outcome:
        data = bytearray(self.message())
        data[:8] = (self.rng.choice([2**40, 2**62, 10**9, len(data)])).to_bytes(8, "little")
        return self.send(bytes(data))

    def deep_json(self) -> Outcome:
        depth = self.rng.randint(10_000, 80_000)
        text = ("[" * depth + "]" * depth).encode()
        return self.send(len(text).to_bytes(8, "little") + text)

    def wrong_shape(self) -> Outcome:
        name = self.pick()

        def reshape(t: dict[str, torch.Tensor]) -> None:
            flat = t[name].reshape(-1)
            t[name] = flat[:-1].clone() if flat.numel() > 1 else torch.zeros(2)

        return self.send(self.message(self.tensors(reshape)))

    def wrong_dtype(self) -> Outcome:
        name = self.pick()
        return self.send(self.message(self.tensors(lambda t: t.update({name: t[name].double()}))))

    def non_finite(self) -> Outcome:
        name, value = self.pick(), self.rng.choice([float("nan"), float("inf"), float("-inf")])

        def poison(t: dict[str, torch.Tensor]) -> None:
            t[name].view(-1)[self.rng.randrange(t[name].numel())] = value

        return self.send(self.message(self.tensors(poison)))

    def missing_tensor(self) -> Outcome:
        return self.send(self.message(self.tensors(lambda t: t.pop(self.pick()))))

    def unexpected_tensor(self) -> Outcome:
        return self.send(self.message(self.tensors(lambda t: t.update({"y/extra": torch.ones(3)}))))

    def wrong_schema(self) -> Outcome:
        return self.send(self.message(schema_hash=os.urandom(32).hex()))

    def wrong_method(self) -> Outcome:
        return self.send(self.message(method=self.rng.choice(["gossip", "ecl-admm", "model"])))

    def wrong_receiver(self) -> Outcome:
        return self.send(self.message(receiver=self.rng.choice(["N2", "N3", "N4", "N9"])))

    def forged_sender(self) -> Outcome:
        return self.send(self.message(sender=self.rng.choice(["N3", "N4", "N9"])))

    def replayed(self) -> Outcome:
        if not self.accepted:
            return self.random_bytes()
        return self.send(self.accepted[-1][1])  # the last one taken: replayed

    def stale(self) -> Outcome:
        if not self.accepted:
            return self.random_bytes()
        return self.send(self.message(sequence=self.accepted[-1][0] - self.rng.randint(1, 5)))

    def sequence_jump(self) -> Outcome:
        return self.send(self.message(sequence=self.rng.choice([2**62, 2**63 - 1, 2**55])))

    # -- transport-level kinds --------------------------------------------------------------------

    def header_forged_sender(self) -> Outcome:
        return self.send(self.message(), sender=self.rng.choice(["N3", "N4"]))

    def header_bad_edge(self) -> Outcome:
        return self.send(self.message(), edge=self.rng.choice(["N1--N3", "N2--N3", "", "x"]))

    def header_wrong_purpose(self) -> Outcome:
        return self.send(self.message(), purpose=self.rng.choice([0, 2, 3, 77]))

    def header_wrong_method(self) -> Outcome:
        return self.send(self.message(), method="gossip")

    def old_protocol(self) -> Outcome:
        return self.send(self.message(), protocol_version=self.rng.choice([0, 1, 3, 2**31]))

    def bad_nonce(self) -> Outcome:
        return self.send(self.message(), nonce=os.urandom(self.rng.choice([0, 16, 31, 64])))

    def too_large(self) -> Outcome:
        return self.send(b"", total_bytes=self.rng.choice([2**30, 2**40, 2**63]))

    def hash_mismatch(self) -> Outcome:
        return self.send(self.message(), sha256=os.urandom(32))

    def bad_digest_length(self) -> Outcome:
        return self.send(self.message(), sha256=os.urandom(self.rng.choice([0, 16, 64])))

    def truncated_stream(self) -> Outcome:
        payload = self.message()
        frames = self.frames(payload, chunk=16 * 1024)
        return self.call(frames[: self.rng.randint(1, len(frames) - 1)])

    def too_many_bytes(self) -> Outcome:
        payload = self.message()
        frames = self.frames(payload)
        return self.call([*frames, pb.Chunk(data=os.urandom(self.rng.randint(1, 4096)))])

    def second_header(self) -> Outcome:
        frames = self.frames(self.message(), chunk=16 * 1024)
        return self.call([*frames[:2], frames[0], *frames[2:]])

    def no_header(self) -> Outcome:
        return self.call([pb.Chunk(data=self.message())])

    def empty_stream(self) -> Outcome:
        return self.call([])

    def withheld_with_bytes(self) -> Outcome:
        return self.send(self.message(), withheld=True)

    def oversize_frame(self) -> Outcome:
        data = os.urandom(5 * MIB)  # above the node's 4 MiB gRPC message limit
        return self.call(self.frames(data, chunk=5 * MIB, total_bytes=100_000))

    def huge_metadata(self) -> Outcome:
        blob = "x" * self.rng.choice([16 * 1024, 64 * 1024, 256 * 1024])
        return self.call(self.frames(self.message()), metadata=(("x-junk", blob),))

    def fetch_forged(self) -> Outcome:
        request = pb.ModelRequest(
            sender=self.rng.choice(["N3", "N4", "N9"]),
            method=self.method,
            nonce=os.urandom(32),
            protocol_version=PROTOCOL_VERSION,
        )
        return self.unary_stream(request)

    def fetch_bad_nonce(self) -> Outcome:
        request = pb.ModelRequest(sender="N2", method=self.method, nonce=os.urandom(8),
                                  protocol_version=PROTOCOL_VERSION)  # fmt: skip
        return self.unary_stream(request)

    def unary_stream(self, request: pb.ModelRequest) -> Outcome:
        try:
            for _ in self.stub.FetchModel(request, timeout=30):
                pass
        except grpc.RpcError as err:
            return reason_of(err)
        return "OK", ""

    def metrics_junk(self) -> Outcome:
        payload = os.urandom(1000)
        frames = self.frames(payload, purpose=pb.PURPOSE_METRICS)
        return self.call(frames, rpc="ShareMetrics")

    # -- slow and concurrent kinds -----------------------------------------------------------------

    def stall(self) -> Outcome:
        """A header, then nothing: the node's watchdog must cut it (idle timeout)."""
        release = threading.Event()

        def frames() -> Iterator[pb.Chunk]:
            yield self.frames(self.message())[0]
            release.wait(60)

        try:
            return self.call(frames(), timeout=60)
        finally:
            release.set()

    def slow_loris(self) -> Outcome:
        """A byte every second, never all of them: the whole-call limit must cut it."""
        payload = self.message()
        stop = threading.Event()

        def frames() -> Iterator[pb.Chunk]:
            yield self.frames(payload)[0]
            for i in range(len(payload) - 1):
                if stop.wait(1.0):
                    return
                yield pb.Chunk(data=payload[i : i + 1])

        try:
            return self.call(frames(), timeout=120)
        finally:
            stop.set()

    def burst(self, width: int = 16) -> list[Outcome]:
        """`width` junk swaps at the same moment."""
        with futures.ThreadPoolExecutor(width) as pool:
            jobs = [pool.submit(self.random_bytes) for _ in range(width)]
            return [job.result() for job in jobs]


# kind -> relative weight (per 10,000 messages, roughly); slow kinds run beside the others
GATE_KINDS = {
    "random_bytes": 600, "truncated": 500, "flipped_header_byte": 500, "huge_header_length": 400,
    "deep_json": 150, "wrong_shape": 500, "wrong_dtype": 400, "non_finite": 600,
    "missing_tensor": 300, "unexpected_tensor": 300, "wrong_schema": 300, "wrong_method": 300,
    "wrong_receiver": 300, "forged_sender": 400, "replayed": 300, "stale": 300,
    "sequence_jump": 300,
}  # fmt: skip
TRANSPORT_KINDS = {
    "header_forged_sender": 300, "header_bad_edge": 200, "header_wrong_purpose": 200,
    "header_wrong_method": 150, "old_protocol": 150, "bad_nonce": 150, "too_large": 200,
    "hash_mismatch": 200, "bad_digest_length": 100, "truncated_stream": 200,
    "too_many_bytes": 150, "second_header": 150, "no_header": 100, "empty_stream": 100,
    "withheld_with_bytes": 100, "oversize_frame": 30, "huge_metadata": 60,
    "fetch_forged": 100, "fetch_bad_nonce": 80, "metrics_junk": 80,
}  # fmt: skip
SLOW_KINDS = ("stall", "slow_loris")


def timed(call: Callable[[], Outcome]) -> tuple[Outcome, float]:
    started = time.monotonic()
    outcome = call()
    return outcome, time.monotonic() - started
