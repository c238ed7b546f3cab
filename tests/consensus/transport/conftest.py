"""Real certificates for the transport tests: a 3-hospital line network plus a rogue CA."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from transport_helpers import CONFIG, FAST_RETRY, RecordingHandler

from consensus.transport.grpc_transport import (
    ExchangeServer,
    PeerClient,
    PeerVerifier,
    RetryPolicy,
)
from consensus.transport.tls import TlsMaterial, load_tls
from hospital_node.provisioning.network import NetworkDescription, parse_network
from hospital_node.provisioning.provision import provision


def line_network(
    names: tuple[str, ...] = ("alpha", "beta", "gamma"), name: str = "test"
) -> NetworkDescription:
    """alpha -- beta -- gamma on 127.0.0.1; gamma is certified but no neighbour of alpha."""
    hospitals = [
        {"name": n, "host": "127.0.0.1", "port": 50100 + i, "site_dir": f"/data/{n}"}
        for i, n in enumerate(names)
    ]
    edges = [[a, b] for a, b in zip(names, names[1:], strict=False)]
    return parse_network({"name": name, "hospitals": hospitals, "edges": edges})


def bundle_tls(out: Path, name: str) -> TlsMaterial:
    bundle = out / name
    return load_tls(
        ca_cert=bundle / "ca.crt", cert=bundle / f"{name}.crt", key=bundle / f"{name}.key"
    )


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Provisioned folders: `net` (alpha -- beta -- gamma, with _ca/) and `rogue` (another CA)."""
    out = tmp_path_factory.mktemp("pki")
    provision(line_network(), out / "net")
    provision(line_network(("alpha", "beta"), name="rogue"), out / "rogue")
    return out


@pytest.fixture(scope="session")
def tls(pki_dir: Path) -> dict[str, TlsMaterial]:
    """TLS material per hospital; 'rogue-beta' is named beta but signed by another CA."""
    out = pki_dir
    material = {n: bundle_tls(out / "net", n) for n in ("alpha", "beta", "gamma")}
    material["rogue-beta"] = bundle_tls(out / "rogue", "beta")
    return material


@pytest.fixture
def serve(tls: dict[str, TlsMaterial]) -> Iterator[Callable[..., ExchangeServer]]:
    """Start a node's server on 127.0.0.1 (port 0 unless given); all stopped at teardown.

    Keywords: `config`, `verifier` (PeerVerifier), `material` (TlsMaterial instead of the
    hospital's own bundle)."""
    started: list[ExchangeServer] = []

    def start(
        name: str, neighbours: tuple[str, ...], handler: RecordingHandler, port: int = 0, **kw
    ):
        server = ExchangeServer(
            name=name,
            neighbours=neighbours,
            handler=handler,
            tls=kw.pop("material", None) or tls[name],
            port=port,
            config=kw.pop("config", CONFIG),
            verifier=kw.pop("verifier", None),
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=0)


@pytest.fixture
def connect(tls: dict[str, TlsMaterial]) -> Iterator[Callable[..., PeerClient]]:
    """A PeerClient from hospital `bundle` (default: its own name) to `peer` at 127.0.0.1:`port`;
    `material` (TlsMaterial) replaces the bundle, `verifier` checks the server's proof."""
    clients: list[PeerClient] = []

    def make(
        name: str,
        peer: str,
        port: int,
        *,
        retry: RetryPolicy = FAST_RETRY,
        bundle: str = "",
        material: TlsMaterial | None = None,
        verifier: PeerVerifier | None = None,
    ) -> PeerClient:
        client = PeerClient(
            name=name, peer=peer, address=f"127.0.0.1:{port}", tls=material or tls[bundle or name],
            rng=random.Random(0), config=CONFIG, retry=retry, verifier=verifier,
        )  # fmt: skip
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
