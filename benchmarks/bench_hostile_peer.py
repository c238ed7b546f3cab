"""A hostile neighbour against one node's gRPC endpoint (loopback, real certificates).

Four measurements, each the figure of one defect the hostile-peer review found:
- flood: junk swaps for `--flood-s` seconds; what the node counts as sent to the attacker and
  how many exchange-privacy releases it makes (should be 0 for refused junk);
- stall: a stream that announces a payload and goes quiet; how long until an honest swap on
  the same edge goes through again (the edge's slot is held meanwhile);
- oversize: one swap announcing and sending `--oversize-mib` MiB; the server process's peak
  RSS growth (the server runs in a child process, measured from /proc/<pid>/status VmHWM);
- sequence: one valid message numbered 2**62, then an honest one; what the node answers.

The node side is built as `hospital-node run` builds it (node.toml, NodeHandler, the node's
`start_server`), without data or training loop (a thread stands in for the local steps).
Run against any checkout: `PYTHONPATH=<tree> python -m benchmarks.bench_hostile_peer`.
Writes a small JSON (default benchmarks/results/hostile_peer.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import torch

from consensus import make_algorithm
from consensus.accounting import ExchangeAccountant
from consensus.private_exchange import ExchangePrivacy
from consensus.transport import exchange_pb2 as pb
from consensus.transport import exchange_pb2_grpc as pb_grpc
from consensus.transport import framing
from consensus.transport.grpc_transport import (
    PeerClient,
    RetryPolicy,
    TransportConfig,
    TransportError,
    load_tls,
)
from consensus.transport.tls import channel_credentials
from consensus.wire import Message, MessageHeader, encode_message
from hospital_node.node.config import load_node_config
from hospital_node.node.handler import NodeHandler
from hospital_node.node.network import start_server
from hospital_node.provisioning.network import parse_network
from hospital_node.provisioning.provision import provision
from hospital_node.training.model import initial_model

DEFAULT_OUT = Path("benchmarks/results/hostile_peer.json")
NAMES = ("N1", "N2", "N3")


def make_network(root: Path) -> dict[str, Path]:
    """A provisioned 3-node ring on 127.0.0.1; returns each node.toml."""
    import socket

    ports = []
    for _ in NAMES:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    hospitals = [
        {"name": n, "host": "127.0.0.1", "listen": "127.0.0.1", "port": p, "site_dir": "/d"}
        for n, p in zip(NAMES, ports, strict=True)
    ]
    algorithm = {"method": "ecl-pdmm", "learning_rate": 0.05, "consensus_weight": 0.5}
    provision(parse_network({"name": "bench", "topology": "ring", "hospitals": hospitals,
                             "algorithm": algorithm}), root)  # fmt: skip
    return {n: root / n / "node.toml" for n in NAMES}


class Side:
    """One node's handler and algorithm (and its server, for N1), as the runtime builds them."""

    def __init__(self, toml: Path, *, private: bool) -> None:
        self.config = load_node_config(toml)
        paths = self.config.paths
        self.tls = load_tls(ca_cert=paths.ca_cert, cert=paths.cert, key=paths.key)
        model = initial_model(self.config.model, seed=0)
        self.params = dict(model.named_parameters())
        self.privacy = None
        if private:
            accountant = ExchangeAccountant(noise_multiplier=1.0, delta=1e-5)
            self.privacy = ExchangePrivacy(
                peers=self.config.peer_names, initial=self.params, clip_norm=0.1,
                accountant=accountant, generator=torch.Generator().manual_seed(1),
            )  # fmt: skip
        self.algorithm = make_algorithm(
            self.config.consensus, node=self.config.name, neighbours=self.config.peer_names,
            params=self.params, privacy=self.privacy,
        )  # fmt: skip
        self.lock = threading.Lock()
        self.handler = NodeHandler(
            name=self.config.name, peers=self.config.peer_names, params=self.params,
            swap_schema=self.algorithm.wire_schema(), lock=self.lock, boot_epoch=1,
            reuse_releases=private,
        )  # fmt: skip
        self.handler.attach(self.algorithm)

    def releases(self) -> int:
        return 0 if self.privacy is None else self.privacy.accountant.releases

    def step(self) -> None:
        """One local step with zero gradients (the duals and the state still move)."""
        self.handler.apply_pending()
        with self.lock:
            self.algorithm.local_step({n: torch.zeros_like(p) for n, p in self.params.items()})


def attacker(side: Side, address: str) -> PeerClient:
    """N2's client towards N1, one attempt per call."""
    return PeerClient(
        name="N2", peer="N1", address=address, tls=side.tls, rng=random.Random(0),
        config=TransportConfig(method="ecl-pdmm", max_payload_bytes=1 << 30),
        retry=RetryPolicy(max_attempts=1, give_up_after_s=600.0),
    )  # fmt: skip


@contextmanager
def served(toml: Path, *, private: bool):
    side = Side(toml, private=private)
    server = start_server(side.config, side.tls, side.handler)
    try:
        yield side, f"127.0.0.1:{server.port}", server
    finally:
        server.stop(0)


def flood(tomls: dict[str, Path], seconds: float) -> dict[str, Any]:
    """Junk swaps from N2 while N1 keeps stepping (20 steps/s) under exchange privacy."""
    n2 = Side(tomls["N2"], private=False)
    with served(tomls["N1"], private=True) as (n1, address, server):
        stop = threading.Event()

        def train() -> None:
            while not stop.wait(0.05):
                n1.step()

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        client, calls = attacker(n2, address), 0
        junk = os.urandom(len(n2.handler.outgoing_for("N1")))
        before = (n1.handler.counters()["N2"].messages_sent, n1.releases())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            calls += 1
            if calls % 500 == 0:  # a fresh client: its failure count (and back-off) restarts
                client.close()
                client = attacker(n2, address)
            with suppress(TransportError):  # every junk call is refused
                client.swap(junk)
        stop.set()
        trainer.join()
        client.close()
        counters = n1.handler.counters()["N2"]
        return {
            "seconds": seconds, "junk_calls": calls, "junk_bytes_each": len(junk),
            "messages_sent_to_attacker": counters.messages_sent - before[0],
            "bytes_sent_to_attacker": counters.bytes_sent,
            "privacy_releases": n1.releases() - before[1],
            "server_bytes_sent": server.stats().get("bytes_sent", 0),
        }  # fmt: skip


def stalled_stream(side: Side, address: str, release: threading.Event) -> None:
    """A Swap that announces 1000 bytes and never sends them (no deadline)."""
    channel = grpc.secure_channel(address, channel_credentials(side.tls),
                                  [("grpc.ssl_target_name_override", "N1")])  # fmt: skip
    header = pb.Header(protocol_version=framing.PROTOCOL_VERSION, sender="N2", edge="N1--N2",
                       method="ecl-pdmm", purpose=pb.PURPOSE_SWAP, total_bytes=1000,
                       sha256=b"\0" * 32)  # fmt: skip
    if "nonce" in pb.Header.DESCRIPTOR.fields_by_name:
        header.nonce = os.urandom(32)

    def requests():
        yield pb.Chunk(header=header)
        release.wait()

    try:
        for _ in pb_grpc.ConsensusExchangeStub(channel).Swap(requests()):
            pass
    except grpc.RpcError:
        pass
    finally:
        channel.close()


def stall(tomls: dict[str, Path], cap_s: float) -> dict[str, Any]:
    """How long a quiet stream keeps honest swaps on the edge refused (`busy`)."""
    n2 = Side(tomls["N2"], private=False)
    with served(tomls["N1"], private=False) as (_, address, server):
        release = threading.Event()
        staller = threading.Thread(target=stalled_stream, args=(n2, address, release))
        staller.start()
        time.sleep(0.5)
        client, started, freed_after, refusals = attacker(n2, address), time.monotonic(), None, 0
        while time.monotonic() - started < cap_s:
            try:
                client.exchange(n2.handler)
                freed_after = time.monotonic() - started + 0.5
                break
            except TransportError:
                refusals += 1
                time.sleep(0.25)
        release.set()
        client.close()
        staller.join(30)
        refused = {k: v for k, v in server.stats().items() if k.startswith("refused.")}
        return {"slot_freed_after_s": freed_after, "cap_s": cap_s, "honest_refusals": refusals,
                "server_refusals": refused}  # fmt: skip


def vm_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def oversize(tomls: dict[str, Path], mib: int) -> dict[str, Any]:
    """Peak RSS growth of a node's server process while one swap sends `mib` MiB."""
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_hostile_peer", "--serve", str(tomls["N1"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        address = child.stdout.readline().strip()
        n2 = Side(tomls["N2"], private=False)
        client = attacker(n2, address)
        client.exchange(n2.handler)  # warm-up: one honest swap, so buffers exist already
        time.sleep(0.5)
        before = vm_peak_kib(child.pid)
        started, outcome = time.monotonic(), "accepted"
        try:
            client.swap(b"\0" * (mib << 20))
        except TransportError as exc:
            outcome = str(exc)[:160]
        seconds = time.monotonic() - started
        time.sleep(0.5)
        after = vm_peak_kib(child.pid)
        client.close()
    finally:
        child.stdin.close()
        child.wait(30)
    return {"payload_mib": mib, "server_peak_rss_growth_mb": (after - before) * 1024 / 1e6,
            "server_peak_rss_before_mb": before * 1024 / 1e6, "seconds": seconds,
            "outcome": outcome}  # fmt: skip


def serve_forever(toml: Path) -> None:
    """Child process of `oversize`: serve until stdin closes."""
    with served(toml, private=False) as (_, address, _server):
        print(address, flush=True)
        sys.stdin.read()


def absurd_sequence(tomls: dict[str, Path]) -> dict[str, Any]:
    """A valid N2 message numbered 2**62, then N2's honest next message."""
    n2 = Side(tomls["N2"], private=False)
    with served(tomls["N1"], private=False) as (n1, address, _):
        client = attacker(n2, address)
        header = MessageHeader(sender="N2", receiver="N1", method="ecl-pdmm",
                               schema_hash=n2.algorithm.wire_schema().digest,
                               sequence=2**62)  # fmt: skip
        absurd = encode_message(Message(header=header, tensors=n2.algorithm.outgoing("N1")))
        outcomes = {}
        for label, send in (("absurd", lambda: client.swap(absurd)),
                            ("honest_after", lambda: client.exchange(n2.handler))):  # fmt: skip
            try:
                send()
                outcomes[label] = "accepted"
            except TransportError as exc:
                outcomes[label] = f"refused: {exc.detail[:120]}"
        client.close()
        return outcomes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood-s", type=float, default=20.0)
    parser.add_argument("--stall-cap-s", type=float, default=60.0)
    parser.add_argument("--oversize-mib", type=int, default=250)
    parser.add_argument("--only", nargs="*", default=["flood", "stall", "oversize", "sequence"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # thousands of refusals would flood the log
    if args.serve:
        serve_forever(args.serve)
        return {}
    result: dict[str, Any] = {"tree": str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryDirectory() as tmp:
        tomls = make_network(Path(tmp))
        runs = {
            "flood": lambda: flood(tomls, args.flood_s),
            "stall": lambda: stall(tomls, args.stall_cap_s),
            "oversize": lambda: oversize(tomls, args.oversize_mib),
            "sequence": lambda: absurd_sequence(tomls),
        }
        for name in args.only:
            result[name] = runs[name]()
            print(name, json.dumps(result[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
