"""Opt-in network-wide metrics: per-finding AUC summaries swapped with neighbours that share
too, and relayed, so every sharing hospital sees every sharing site (node.toml [metrics]).

What travels (hospital_node.node.metrics_wire): per finding the AUC, its CI and the test
counts, the model's step and the node's boot epoch, signed by the hospital that evaluated;
never images, labels or per-case scores; small cells suppressed at the origin. Rules:
- only between two nodes with `share = true`: a node that does not share refuses the call
  before any data moves (`metrics_off`), so nothing reaches a hospital that did not opt in;
- each node keeps the newest summary per origin, ordered by (boot epoch, step), and relays
  what it keeps at its next exchanges: a summary coming back is not newer and is dropped,
  so relaying ends (no loops, at most one message each way per edge and interval);
- a relayed summary counts only when the origin's certificate passes this node's per-call
  checks (network CA, dates, revocation list) and its signature verifies;
- summaries older than MAX_AGE_S, or dated more than MAX_CLOCK_SKEW_S ahead, are dropped.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from consensus.transport.grpc_transport import (
    IdentityError,
    PeerClient,
    PeerVerifier,
    RejectedByPeer,
    TransportError,
)
from consensus.transport.identity import ProofSigner
from consensus.wire import MessageRejected, SequenceCounter, check_sequence
from hospital_node.evaluation.summary import SiteSummary
from hospital_node.node.metrics_wire import (
    SignedSummary,
    canonical_bytes,
    decode_metrics,
    encode_metrics,
    summary_to_dict,
)

log = logging.getLogger(__name__)

MAX_AGE_S = 7 * 24 * 3600.0  # a summary older than a week is neither kept nor relayed
MAX_CLOCK_SKEW_S = 300.0  # certificates allow 5 minutes too; more is a wrong clock
OFF_BACKOFF = 10  # a neighbour that does not share is asked again after 10 intervals
SummarySink = Callable[[SiteSummary, str, float], None]  # (summary, via, received_at)


def sign_summary(signer: ProofSigner, summary: SiteSummary) -> SignedSummary:
    """This node's own summary, signed with its certificate's key."""
    message = canonical_bytes(summary_to_dict(summary))
    signature = signer.key.sign(message, ec.ECDSA(hashes.SHA256()))
    return SignedSummary(summary, signer.certificate_der, signature)


def verify_summary(verifier: PeerVerifier, entry: SignedSummary) -> None:
    """IdentityError unless the origin's certificate passes `verifier` (CA, dates, CRL, name =
    origin) and its signature over the summary verifies."""
    try:
        cert = x509.load_der_x509_certificate(entry.certificate)
    except ValueError as exc:
        raise IdentityError("bad_certificate", "not a DER certificate") from exc
    verifier.check(cert, name=entry.summary.origin)
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IdentityError("bad_signature", "the certificate's key is not an EC key")
    try:
        message = canonical_bytes(summary_to_dict(entry.summary))
        public.verify(entry.signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise IdentityError("bad_signature", "summary signature does not verify") from exc


class MetricsSharer:
    """The node's MetricsHandler (consensus.transport): what it knows, what it accepts.

    Thread-safe: gRPC server threads (callee side) and the MetricsWorker (caller side) call
    it at once. `sink` stores an accepted summary (the node's results store).
    """

    def __init__(
        self,
        *,
        name: str,
        peers: Sequence[str],
        signer: ProofSigner,
        verifier: PeerVerifier,
        boot_epoch: int,
        sink: SummarySink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.peers = frozenset(peers)
        self._signer = signer
        self._verifier = verifier
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self._counter = SequenceCounter(boot_epoch=boot_epoch)
        self._last_sequence: dict[str, int] = {}
        self._known: dict[str, SignedSummary] = {}
        self._received_from: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # per reason: summaries not kept

    def publish(self, summary: SiteSummary) -> None:
        """Sign and keep this node's newest summary; it leaves with the next exchanges."""
        signed = sign_summary(self._signer, summary)
        with self._lock:
            self._known[self.name] = signed
        self._sink(summary, self.name, self._clock())

    def metrics_for(self, peer: str) -> bytes:
        """Every summary we keep (but the peer's own), fresh enough to relay."""
        now = self._clock()
        with self._lock:
            entries = tuple(
                e for origin, e in sorted(self._known.items())
                if origin != peer and now - e.summary.created_at <= MAX_AGE_S
            )  # fmt: skip
            sequence = self._counter.next()
        return encode_metrics(sender=self.name, receiver=peer, sequence=sequence, entries=entries)

    def accept_metrics(self, peer: str, payload: bytes) -> None:
        """Validate a neighbour's message (MessageRejected refuses it whole), then keep each
        summary that verifies and is newer than what we have (the others are counted)."""
        if peer not in self.peers:
            raise MessageRejected("unknown_sender", f"{peer!r} is not a neighbour")
        message = decode_metrics(payload, receiver=self.name, authenticated_sender=peer)
        now = self._clock()
        with self._lock:
            check_sequence(self._last_sequence.get(peer), message.sequence)
            self._last_sequence[peer] = message.sequence
            self._received_from[peer] += 1
            fresh = [e for e in message.entries if self._wanted(e, now)]
        for entry in fresh:
            self._sink(entry.summary, peer, now)

    def _wanted(self, entry: SignedSummary, now: float) -> bool:
        """Keep `entry`? (caller holds the lock) Counts why not."""
        summary, reason = entry.summary, None
        known = self._known.get(summary.origin)
        if summary.origin == self.name:
            reason = "own"
        elif now - summary.created_at > MAX_AGE_S:
            reason = "expired"
        elif summary.created_at - now > MAX_CLOCK_SKEW_S:
            reason = "future"
        elif known is not None and summary.order_key <= known.summary.order_key:
            reason = "not_newer"  # what relaying brings back: the end of every loop
        else:
            try:
                verify_summary(self._verifier, entry)
            except IdentityError as exc:
                reason = exc.reason
                log.warning("%s: dropped the summary of %s: %s", self.name, summary.origin, exc)
        if reason is not None:
            self.dropped[reason] += 1
            return False
        self._known[summary.origin] = entry
        return True

    def snapshot(self) -> dict[str, Any]:
        """For status.json: origins known (step, boot epoch), messages per peer, drops."""
        with self._lock:
            known = {
                o: {
                    "step": e.summary.step,
                    "boot_epoch": e.summary.boot_epoch,
                    "created_at": e.summary.created_at,
                }
                for o, e in self._known.items()
            }
            return {"known": known, "received": dict(self._received_from),
                    "dropped": dict(self.dropped)}  # fmt: skip


class MetricsWorker:
    """Calls each neighbour this node initiates with every ~`interval_s` (exponential gaps,
    seeded): our message out, theirs back, both through the sharer. Never raises."""

    def __init__(
        self,
        *,
        sharer: MetricsSharer,
        clients: Mapping[str, PeerClient],
        interval_s: float,
        rng: random.Random,
    ) -> None:
        self._sharer = sharer
        self._clients = dict(clients)
        self._interval = interval_s
        self._rng = rng
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-share", daemon=True)
        self.not_sharing: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for client in self._clients.values():
            client.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _gap(self, peer: str) -> float:
        factor = OFF_BACKOFF if peer in self.not_sharing else 1
        return self._rng.expovariate(1.0 / (self._interval * factor))

    def _loop(self) -> None:
        due = {peer: time.monotonic() + self._gap(peer) for peer in sorted(self._clients)}
        while not self._stop.is_set() and due:
            peer = min(due, key=due.get)
            if self._stop.wait(max(0.0, due[peer] - time.monotonic())):
                break
            self.exchange(peer)
            due[peer] = time.monotonic() + self._gap(peer)

    def exchange(self, peer: str) -> bool:
        """One metrics exchange with `peer`; True when both directions went through."""
        client, sharer = self._clients[peer], self._sharer
        try:
            reply = client.share_metrics(sharer.metrics_for(peer))
            sharer.accept_metrics(peer, reply)
        except RejectedByPeer as exc:
            if "metrics_off" in str(exc) and peer not in self.not_sharing:
                log.info("%s: %s does not share metrics; asking again every %.0f s",
                         sharer.name, peer, self._interval * OFF_BACKOFF)  # fmt: skip
                self.not_sharing.add(peer)
            return False
        except MessageRejected as exc:
            log.warning("%s: refused the metrics of %s: %s", sharer.name, peer, exc)
            return False
        except TransportError:
            return False  # PeerClient logged it
        self.not_sharing.discard(peer)
        return True
