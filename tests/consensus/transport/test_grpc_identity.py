"""Certificates campaign over loopback gRPC: expired, not yet valid and revoked certificates are
refused on both ends, also on connections opened before; the revocation list is re-read."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from transport_helpers import ONE_TRY, RecordingHandler

from consensus.transport.grpc_transport import (
    PeerRefused,
    PeerUnavailable,
    PeerVerifier,
    RevocationList,
    RevocationListError,
    TlsMaterial,
)
from hospital_node.provisioning.pki import CertifiedKey, cert_pem, issue_leaf, key_pem, load_ca
from hospital_node.provisioning.revocation import build_crl

pytestmark = pytest.mark.timeout(60)
NOW = dt.datetime.now(dt.UTC)
SANS = ("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def ca(pki_dir: Path) -> CertifiedKey:
    return load_ca(pki_dir / "net" / "_ca" / "ca.crt", pki_dir / "net" / "_ca" / "ca.key")


def leaf(ca: CertifiedKey, name: str, *, issued: dt.datetime, days: int = 30) -> TlsMaterial:
    made = issue_leaf(ca, name, sans=(name, *SANS), valid_days=days, now=issued)
    return TlsMaterial(
        ca_cert=cert_pem(ca.cert), cert=cert_pem(made.cert), key=key_pem(made.key), name=name
    )


def serial(material: TlsMaterial) -> int:
    return x509.load_pem_x509_certificate(material.cert).serial_number


def write_crl(path: Path, ca: CertifiedKey, serials: list[int], number: int) -> None:
    """Replace `path` atomically with a CRL revoking `serials`, as the coordinator would."""
    entries = [
        x509.RevokedCertificateBuilder().serial_number(s).revocation_date(NOW).build()
        for s in serials
    ]
    pem = build_crl(ca, entries, number=number).public_bytes(serialization.Encoding.PEM)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    os.replace(tmp, path)


DATES = {
    "expired": {"issued": NOW - dt.timedelta(days=40), "days": 10},
    "not_yet_valid": {"issued": NOW + dt.timedelta(days=3)},
}


@pytest.mark.parametrize("case", DATES)
def test_client_certificate_out_of_its_dates_fails_the_handshake(serve, connect, ca, case):
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha)
    material = leaf(ca, "beta", **DATES[case])
    client = connect("beta", "alpha", server.port, retry=ONE_TRY, material=material)
    with pytest.raises(PeerUnavailable):
        client.swap(b"hello")
    assert alpha.calls == 0


@pytest.mark.parametrize("case", DATES)
def test_server_certificate_out_of_its_dates_is_refused_by_the_client(serve, connect, ca, case):
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha, material=leaf(ca, "alpha", **DATES[case]))
    with pytest.raises(PeerUnavailable):
        connect("beta", "alpha", server.port, retry=ONE_TRY).swap(b"hello")
    assert alpha.calls == 0


def test_certificate_that_expires_on_an_open_connection_is_refused(serve, connect, ca) -> None:
    # the session's certificates may be younger than this module's NOW (a slow session): the
    # clock starts at the real time, inside every certificate's validity
    clock = [dt.datetime.now(dt.UTC)]
    verifier = PeerVerifier(ca=ca.cert, clock=lambda: clock[0])
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha, verifier=verifier)
    client = connect("beta", "alpha", server.port, retry=ONE_TRY)
    client.swap(b"before")

    clock[0] += dt.timedelta(days=900)  # past beta's 825 days; the connection stays open
    with pytest.raises(PeerRefused, match="expired"):
        client.swap(b"after")

    assert alpha.received == [("beta", b"before")] and server.stats()["refused.expired"] == 1


def test_revoked_caller_is_refused_from_its_next_call_on(serve, connect, ca, tls, tmp_path):
    crl = tmp_path / "crl.pem"
    write_crl(crl, ca, [], number=1)
    verifier = PeerVerifier(ca=ca.cert, revocation=RevocationList(crl, ca=ca.cert))
    alpha = RecordingHandler(b"x")
    server = serve("alpha", ("beta",), alpha, verifier=verifier)
    client = connect("beta", "alpha", server.port, retry=ONE_TRY)
    client.swap(b"before")

    write_crl(crl, ca, [serial(tls["beta"])], number=2)  # nodes re-read the file: no restart
    with pytest.raises(PeerRefused, match="revoked") as err:
        client.swap(b"after")  # same client, same channel, opened before the revocation

    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert alpha.received == [("beta", b"before")] and server.stats()["refused.revoked"] == 1


def test_caller_refuses_a_revoked_callee_before_sending_anything(serve, connect, ca, tls, tmp_path):
    crl = tmp_path / "crl.pem"
    write_crl(crl, ca, [serial(tls["alpha"])], number=4)
    verifier = PeerVerifier(ca=ca.cert, revocation=RevocationList(crl, ca=ca.cert))
    alpha = RecordingHandler(b"from alpha")
    server = serve("alpha", ("beta",), alpha)
    client = connect("beta", "alpha", server.port, verifier=verifier)
    beta = RecordingHandler(b"beta's private message")

    with pytest.raises(PeerRefused, match="revoked"):
        client.exchange(beta)

    assert alpha.order == [] and alpha.received == []  # not one byte of beta's message arrived
    assert client.status().attempts == 1 and beta.received == [] and beta.sent == []
    assert "bytes_sent" not in server.stats()


def test_revocation_list_ignores_rollbacks_and_forgeries(ca, tls, tmp_path) -> None:
    crl, revoked = tmp_path / "crl.pem", serial(tls["beta"])
    write_crl(crl, ca, [revoked], number=5)
    listing = RevocationList(crl, ca=ca.cert)
    assert listing.is_revoked(revoked) and listing.number == 5

    write_crl(crl, ca, [], number=4)  # an older list would un-revoke beta
    assert listing.is_revoked(revoked)
    rogue = leaf(ca, "x", issued=NOW)  # a key that is not the CA's signs a list
    forged = CertifiedKey(key=serialization.load_pem_private_key(rogue.key, None), cert=ca.cert)
    write_crl(crl, forged, [], number=9)
    assert listing.is_revoked(revoked)
    crl.write_bytes(b"garbage")
    assert listing.is_revoked(revoked) and listing.number == 5
    crl.unlink()
    assert listing.is_revoked(revoked)  # a file that disappears changes nothing

    write_crl(crl, ca, [], number=6)  # the CA itself lifts the revocation
    assert not listing.is_revoked(revoked) and listing.number == 6


def test_revocation_list_at_start(ca, tmp_path) -> None:
    assert not RevocationList(tmp_path / "missing.pem", ca=ca.cert).loaded
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n")
    with pytest.raises(RevocationListError, match="not a CRL"):
        RevocationList(tmp_path / "bad.pem", ca=ca.cert)
