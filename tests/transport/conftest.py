"""Real certificates for the transport tests: a 3-hospital line network plus a rogue CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.transport.tls import TlsMaterial, load_tls
from hospital_node.network import NetworkDescription, parse_network
from hospital_node.provision import provision


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
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsMaterial]:
    """TLS material per hospital; 'rogue-beta' is named beta but signed by another CA."""
    out = tmp_path_factory.mktemp("pki")
    provision(line_network(), out / "net")
    provision(line_network(("alpha", "beta"), name="rogue"), out / "rogue")
    material = {n: bundle_tls(out / "net", n) for n in ("alpha", "beta", "gamma")}
    material["rogue-beta"] = bundle_tls(out / "rogue", "beta")
    return material
