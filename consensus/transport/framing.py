"""Chunked framing of one opaque payload on a gRPC stream: a header frame, then data frames;
callees first send an identity proof frame (consensus/transport/identity.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from consensus.transport import exchange_pb2 as pb
from consensus.transport.identity import NONCE_BYTES

PROTOCOL_VERSION = 2  # 2: nonce in requests, identity proof first in replies
PURPOSE_NAMES = {pb.PURPOSE_SWAP: "swap", pb.PURPOSE_MODEL: "model", pb.PURPOSE_METRICS: "metrics"}


class FramingError(ValueError):
    """A stream that breaks the framing rules; `reason` is a stable code for counters and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Announcement:
    """The decoded header frame: who sends how many bytes, with which digest, and why."""

    sender: str
    edge: str
    method: str
    purpose: int
    total_bytes: int
    sha256: bytes
    withheld: bool = False  # the sender sends nothing: its privacy budget is spent
    nonce: bytes = b""  # requests: what the callee signs in its identity proof


def edge_name(a: str, b: str) -> str:
    """The edge between two hospitals, the same string on both ends: '<a>--<b>' sorted."""
    return "--".join(sorted((a, b)))


def frames(
    payload: bytes | None,
    *,
    sender: str,
    edge: str,
    method: str,
    purpose: int,
    chunk_size: int,
    nonce: bytes = b"",
) -> Iterator[pb.Chunk]:
    """Yield the header frame, then `payload` in data frames of at most `chunk_size` bytes.

    `payload=None` announces a withheld message (privacy budget spent): a header with
    `withheld` set, 0 bytes and the digest of nothing, and no data frame. `nonce`: a request's
    fresh nonce, for the callee's identity proof.
    """
    withheld = payload is None
    payload = b"" if payload is None else payload
    header = pb.Header(
        protocol_version=PROTOCOL_VERSION,
        sender=sender,
        edge=edge,
        method=method,
        purpose=purpose,
        total_bytes=len(payload),
        sha256=hashlib.sha256(payload).digest(),
        withheld=withheld,
        nonce=nonce,
    )
    yield pb.Chunk(header=header)
    view = memoryview(payload)
    for start in range(0, len(payload), chunk_size):
        yield pb.Chunk(data=bytes(view[start : start + chunk_size]))


def check_protocol_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise FramingError(
            "protocol_version",
            f"peer speaks exchange protocol {version}, this node {PROTOCOL_VERSION}; run the "
            "same release on both nodes",
        )


def check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise FramingError("bad_nonce", f"a request needs a {NONCE_BYTES}-byte nonce")


def proof_frame(certificate_der: bytes, signature: bytes) -> pb.Chunk:
    return pb.Chunk(proof=pb.IdentityProof(certificate=certificate_der, signature=signature))


def read_proof(stream: Iterator[pb.Chunk]) -> pb.IdentityProof:
    """Take the callee's identity proof, the first frame of every reply, off `stream`."""
    first = next(stream, None)
    if first is None or first.WhichOneof("body") != "proof":
        raise FramingError("no_proof", "a reply must start with the callee's identity proof")
    return first.proof


def read_announcement(
    stream: Iterator[pb.Chunk], *, max_bytes: int, request: bool = False
) -> Announcement:
    """Take the header frame off `stream`; refuse a size over `max_bytes` before any data moves.

    `request`: a caller's header, which must carry a nonce.
    """
    first = next(stream, None)
    if first is None or first.WhichOneof("body") != "header":
        raise FramingError("no_header", "the first frame of a stream must carry the header")
    header = first.header
    check_protocol_version(header.protocol_version)
    if request:
        check_nonce(header.nonce)
    if header.total_bytes > max_bytes:
        raise FramingError(
            "too_large",
            f"announced {header.total_bytes} bytes, the largest message this node takes is "
            f"{max_bytes} (its model's size): same [model], [data] and [algorithm] on both?",
        )
    if len(header.sha256) != hashlib.sha256().digest_size:
        raise FramingError("bad_digest", f"sha256 must be 32 bytes, got {len(header.sha256)}")
    if header.withheld and (header.total_bytes != 0 or header.purpose != pb.PURPOSE_SWAP):
        raise FramingError(
            "bad_withheld",
            "a withheld message must be a swap announcing 0 bytes, got "
            f"purpose {header.purpose} with {header.total_bytes} bytes",
        )
    return Announcement(
        sender=header.sender,
        edge=header.edge,
        method=header.method,
        purpose=header.purpose,
        total_bytes=header.total_bytes,
        sha256=bytes(header.sha256),
        withheld=header.withheld,
        nonce=bytes(header.nonce),
    )


def read_payload(stream: Iterator[pb.Chunk], announcement: Announcement) -> bytes:
    """Reassemble the data frames; exactly `total_bytes` with the announced digest, or an error.

    The stream is abandoned at the first frame that would exceed the announced size, so a
    sender cannot make the receiver buffer more than it announced (which is under the limit).
    """
    pieces: list[bytes] = []
    received = 0
    digest = hashlib.sha256()
    for chunk in stream:
        if chunk.WhichOneof("body") != "data":
            raise FramingError("unexpected_header", "a second header frame arrived mid-stream")
        data = chunk.data  # read once: each attribute access may copy the bytes out of protobuf
        received += len(data)
        if received > announcement.total_bytes:
            raise FramingError(
                "too_many_bytes",
                f"more than the announced {announcement.total_bytes} bytes arrived",
            )
        pieces.append(data)
        digest.update(data)
    if received != announcement.total_bytes:
        raise FramingError(
            "truncated", f"stream ended after {received} of {announcement.total_bytes} bytes"
        )
    if digest.digest() != announcement.sha256:
        raise FramingError("hash_mismatch", "payload sha256 differs from the announced digest")
    return b"".join(pieces)
