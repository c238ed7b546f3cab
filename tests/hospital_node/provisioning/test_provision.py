"""Provisioning: network description validation, CA and hospital certificates, bundles, renewal."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hospital_node.provisioning.network import NetworkError, load_network, parse_network
from hospital_node.provisioning.provision import ProvisionError, main, provision, renew

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)

NETWORK_TOML = """
name = "demo"
topology = "ring"

[[hospitals]]
name = "N1"
host = "127.0.0.1"
port = 50051
site_dir = "/data/site"

[[hospitals]]
name = "N2"
host = "127.0.0.1"
port = 50052
site_dir = "/data/site"
extra_sans = ["n2.hospital.example"]

[[hospitals]]
name = "N3"
host = "10.0.0.3"
port = 50051
site_dir = "/data/site"
listen = "0.0.0.0"

[algorithm]
method = "ecl-pdmm"
rho = 0.25
note = "quote \\" backslash \\\\ tab \\t"
[algorithm.privacy]
noise_multiplier = 1.1
targets = [1, 2.5, "x"]
"""


@pytest.fixture
def network_file(tmp_path: Path) -> Path:
    path = tmp_path / "network.toml"
    path.write_text(NETWORK_TOML)
    return path


def _hospitals(*names: str) -> list[dict]:
    return [
        {"name": n, "host": "127.0.0.1", "port": 6000 + i, "site_dir": "/d"}
        for i, n in enumerate(names)
    ]


def test_load_network_ring_and_algorithm(network_file: Path) -> None:
    network = load_network(network_file)
    assert [h.name for h in network.hospitals] == ["N1", "N2", "N3"]
    assert network.edges == (("N1", "N2"), ("N1", "N3"), ("N2", "N3"))
    assert network.neighbours("N1") == ("N2", "N3")
    assert network.algorithm["privacy"]["targets"] == [1, 2.5, "x"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"edges": [["a", "zz"]]}, "unknown hospital 'zz'"),
        ({"edges": [["a", "a"], ["a", "b"]]}, "joins 'a' to itself"),
        ({"edges": [["a", "b"], ["b", "a"]]}, "listed twice"),
        ({"edges": [["a", "b"]], "topology": "ring"}, "exactly one of"),
        ({"hospitals": _hospitals("a", "A")}, "appears twice"),
        ({"hospitals": _hospitals("a", "b/../c")}, "letters, digits or '-'"),
        ({"hospitals": _hospitals("a", "-b")}, "letters, digits or '-'"),
        (
            {"hospitals": [*_hospitals("a", "b")[:1], {**_hospitals("a", "b")[1], "port": 6000}]},
            "both use",
        ),
        ({"hospitals": _hospitals("a", "b", "c"), "edges": [["a", "b"]]}, "not connected"),
        (
            {"hospitals": [{**_hospitals("a")[0], "port": 70000}, *_hospitals("x", "b")[1:]]},
            "`port`",
        ),
        ({"colour": "red"}, "unknown top-level keys"),
        (
            {"hospitals": [{**_hospitals("a")[0], "extra_sans": ["B"]}, *_hospitals("x", "b")[1:]]},
            "hospital name 'b'",
        ),
    ],
)
def test_invalid_network_is_refused_with_a_clear_error(change: dict, message: str) -> None:
    data = {"hospitals": _hospitals("a", "b"), "edges": [["a", "b"]], **change}
    with pytest.raises(NetworkError, match=re.escape(message)):
        parse_network(data)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_provision_writes_ca_and_bundles_with_private_keys_0600(
    network_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    written = provision(load_network(network_file), out, now=NOW)

    assert set(written) >= {out / "_ca" / "ca.key", out / "N1" / "node.toml", out / "N3" / "N3.key"}
    keys = [p for p in written if p.suffix == ".key"]
    assert len(keys) == 4 and all(_mode(p) == 0o600 for p in keys)
    assert _mode(out / "_ca") == 0o700 and "offline" in (out / "_ca" / "README.txt").read_text()
    assert not any((out / h / "ca.key").exists() for h in ("N1", "N2", "N3"))
    ca = _cert(out / "_ca" / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_hospital_certificate_names_usages_and_validity(network_file: Path, tmp_path: Path) -> None:
    provision(load_network(network_file), tmp_path, now=NOW, valid_days=30)
    cert, ca = _cert(tmp_path / "N2" / "N2.crt"), _cert(tmp_path / "N2" / "ca.crt")

    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "N2"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"N2", "localhost", "n2.hospital.example"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=30)
    n3 = _cert(tmp_path / "N3" / "N3.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert n3.value.get_values_for_type(x509.DNSName) == ["N3"]  # no localhost for a remote node


def test_node_toml_is_ready_to_run(network_file: Path, tmp_path: Path) -> None:
    provision(load_network(network_file), tmp_path, now=NOW)
    bundle = tmp_path / "N3"
    config = tomllib.loads((bundle / "node.toml").read_text())

    assert config["node"]["name"] == "N3" and config["node"]["site_dir"] == "/data/site"
    assert config["transport"] == {
        "listen_host": "0.0.0.0",
        "listen_port": 50051,
        "advertised_host": "10.0.0.3",
    }
    assert [p["name"] for p in config["peers"]] == ["N1", "N2"]
    assert config["peers"][0] == {"name": "N1", "host": "127.0.0.1", "port": 50051}
    assert all((bundle / config["tls"][k]).is_file() for k in ("ca_cert", "cert", "key"))
    assert config["algorithm"] == tomllib.loads(NETWORK_TOML)["algorithm"]  # verbatim
    assert {"results_store", "checkpoint_dir"} <= config["node"].keys()


def test_provision_refuses_to_overwrite_the_ca_unless_forced(
    network_file: Path, tmp_path: Path
) -> None:
    network = load_network(network_file)
    provision(network, tmp_path, now=NOW)
    first_ca = (tmp_path / "_ca" / "ca.crt").read_bytes()
    with pytest.raises(ProvisionError, match="already exists: use `renew`"):
        provision(network, tmp_path, now=NOW)
    assert (tmp_path / "_ca" / "ca.crt").read_bytes() == first_ca

    (tmp_path / "N1" / "N1.key").chmod(0o644)  # a replaced key must come back 0600
    provision(network, tmp_path, now=NOW, force=True)
    assert (tmp_path / "_ca" / "ca.crt").read_bytes() != first_ca
    assert _mode(tmp_path / "N1" / "N1.key") == 0o600


def test_renew_one_hospital_and_add_a_new_one_from_the_existing_ca(
    network_file: Path, tmp_path: Path
) -> None:
    network = load_network(network_file)
    provision(network, tmp_path, now=NOW)
    old = _cert(tmp_path / "N2" / "N2.crt")
    untouched = (tmp_path / "N3" / "N3.crt").read_bytes()

    written = renew(network, tmp_path, "N2", now=NOW + dt.timedelta(days=400))
    new, ca = _cert(tmp_path / "N2" / "N2.crt"), _cert(tmp_path / "_ca" / "ca.crt")
    new.verify_directly_issued_by(ca)
    assert (
        new.serial_number != old.serial_number and new.not_valid_after_utc > old.not_valid_after_utc
    )
    assert _mode(tmp_path / "N2" / "N2.key") == 0o600
    assert {p.parent.name for p in written} == {"N1", "N2", "N3"}  # N1, N3 get refreshed peer lists
    assert (tmp_path / "N3" / "N3.crt").read_bytes() == untouched

    text = network_file.read_text().replace(
        'topology = "ring"', 'edges = [["N1","N2"],["N2","N3"],["N3","N4"]]'
    )
    text += '\n[[hospitals]]\nname = "N4"\nhost = "127.0.0.1"\nport = 50054\nsite_dir = "/d"\n'
    network_file.write_text(text)
    bigger = load_network(network_file)
    renew(bigger, tmp_path, "N4", now=NOW)
    _cert(tmp_path / "N4" / "N4.crt").verify_directly_issued_by(ca)
    assert [
        p["name"] for p in tomllib.loads((tmp_path / "N3" / "node.toml").read_text())["peers"]
    ] == ["N2", "N4"]
    with pytest.raises(NetworkError, match="no hospital named 'N9'"):
        renew(bigger, tmp_path, "N9")


def test_renew_without_a_ca_says_to_provision_first(network_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="run `provision` first"):
        renew(load_network(network_file), tmp_path, "N1")


def test_command_line(
    network_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(network_file), "--out", str(tmp_path)]) == 0
    assert str(tmp_path / "N1" / "node.toml") in capsys.readouterr().out
    assert main(["init", str(network_file), "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["renew", str(network_file), "--out", str(tmp_path), "--hospital", "N1"]) == 0
