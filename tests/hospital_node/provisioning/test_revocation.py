"""Revocation on the coordinator's side: the issued register, the signed CRL in every bundle."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509

from consensus.transport.revocation import RevocationList
from hospital_node import cli
from hospital_node.provisioning.network import load_network
from hospital_node.provisioning.provision import (
    ProvisionError,
    provision,
    refresh_revocations,
    renew,
    revoke,
)

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
NETWORK = """
name = "demo"
topology = "ring"
""" + "".join(
    f'[[hospitals]]\nname = "N{i}"\nhost = "127.0.0.1"\nport = {50050 + i}\nsite_dir = "/d"\n'
    for i in (1, 2, 3)
)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    (tmp_path / "network.toml").write_text(NETWORK)
    provision(load_network(tmp_path / "network.toml"), tmp_path / "out", now=NOW)
    return tmp_path / "out"


def crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def serial(out: Path, name: str) -> int:
    return x509.load_pem_x509_certificate((out / name / f"{name}.crt").read_bytes()).serial_number


def test_provision_writes_an_empty_signed_list_and_the_register(out: Path) -> None:
    ca = x509.load_pem_x509_certificate((out / "_ca" / "ca.crt").read_bytes())
    for folder in ("_ca", "N1", "N2", "N3"):
        listing = crl(out / folder / "crl.pem")
        assert listing.is_signature_valid(ca.public_key()) and len(listing) == 0
        assert listing.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    register = json.loads((out / "_ca" / "issued.json").read_text())["certificates"]
    assert [e["hospital"] for e in register] == ["N1", "N2", "N3"]
    assert int(register[1]["serial"], 16) == serial(out, "N2")


def test_revoke_lists_the_hospital_in_every_bundle(out: Path) -> None:
    n2 = serial(out, "N2")
    done = revoke(out, "N2", now=NOW + dt.timedelta(days=1))

    assert done.serials == (n2,) and done.number == 2
    assert {p.parent.name for p in done.written} == {"_ca", "N1", "N2", "N3"}
    entry = crl(out / "N3" / "crl.pem").get_revoked_certificate_by_serial_number(n2)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    ca = x509.load_pem_x509_certificate((out / "N1" / "ca.crt").read_bytes())
    node_side = RevocationList(out / "N1" / "crl.pem", ca=ca)  # what N1's node loads
    assert node_side.is_revoked(n2) and not node_side.is_revoked(serial(out, "N3"))


def test_revoke_covers_every_certificate_issued_and_renew_issues_a_clean_one(
    out: Path, tmp_path: Path
) -> None:
    network = load_network(tmp_path / "network.toml")
    old = serial(out, "N2")
    renew(network, out, "N2", now=NOW + dt.timedelta(days=2))  # the old key may be stolen
    current = serial(out, "N2")

    done = revoke(out, "N2")  # both: the stolen one and the one just issued
    renew(network, out, "N2")  # a clean certificate, carrying the current list

    assert set(done.serials) == {old, current}
    listing = crl(out / "N2" / "crl.pem")
    assert {e.serial_number for e in listing} == {old, current}
    assert listing.get_revoked_certificate_by_serial_number(serial(out, "N2")) is None


def test_revoke_one_serial_refresh_and_refusals(out: Path) -> None:
    n1 = serial(out, "N1")
    revoke(out, "N1", serials=[n1], reason="superseded")
    refresh_revocations(out)

    listing = crl(out / "N2" / "crl.pem")
    assert [e.serial_number for e in listing] == [n1]
    assert listing.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    with pytest.raises(ProvisionError, match="no certificate issued to 'N9'"):
        revoke(out, "N9")
    with pytest.raises(ProvisionError, match="reason 'maybe'"):
        revoke(out, "N1", reason="maybe")


def test_revoke_command_line(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n3 = serial(out, "N3")
    assert cli.main(["revoke", "N3", "--out", str(out), "--serial", f"{n3:x}"]) == 0
    printed = capsys.readouterr().out
    assert f"revoked 1 certificate(s) of N3 ({n3:x})" in printed and "crl.pem" in printed
    assert cli.main(["revoke", "--out", str(out)]) == 2
    assert "name the hospital" in capsys.readouterr().err
    assert cli.main(["revoke", "N3", "--out", str(out / "nowhere")]) == 2
