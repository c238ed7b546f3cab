"""Mutual-TLS material for the gRPC transport: loading PEM files, credentials, the peer's name."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """Certificate files that are missing, unreadable or do not fit together."""


@dataclass(frozen=True, repr=False)
class TlsMaterial:
    """PEM bytes of the network CA and of this node's certificate and key.

    `repr` is kept short so the private key never ends up in a log line or a traceback.
    """

    ca_cert: bytes
    cert: bytes
    key: bytes
    name: str  # this node's certificate CN

    def __repr__(self) -> str:
        return f"TlsMaterial(name={self.name!r})"


def load_tls(*, ca_cert: Path, cert: Path, key: Path) -> TlsMaterial:
    """Read and cross-check the three PEM files of a node bundle (see provisioning.provision).

    Checks: each parses, the key matches the certificate, the certificate was signed by the CA.
    A key readable by group or others is logged as a warning (provisioning writes 0600).
    """
    blobs = {}
    for label, path in (("CA certificate", ca_cert), ("certificate", cert), ("private key", key)):
        try:
            blobs[label] = Path(path).read_bytes()
        except OSError as exc:
            raise TlsConfigError(f"cannot read the {label} {path}: {exc}") from exc
    try:
        ca = x509.load_pem_x509_certificate(blobs["CA certificate"])
        leaf = x509.load_pem_x509_certificate(blobs["certificate"])
        private = serialization.load_pem_private_key(blobs["private key"], password=None)
    except ValueError as exc:
        raise TlsConfigError(f"bad PEM in {ca_cert}, {cert} or {key}: {exc}") from exc
    if private.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise TlsConfigError(f"{key} is not the key of {cert}; take both from the same bundle")
    try:
        leaf.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise TlsConfigError(
            f"{cert} was not issued by the CA in {ca_cert}; take both from the same bundle"
        ) from exc
    if Path(key).stat().st_mode & 0o077:
        log.warning("private key %s is readable by other users; run `chmod 600 %s`", key, key)
    return TlsMaterial(
        ca_cert=blobs["CA certificate"],
        cert=blobs["certificate"],
        key=blobs["private key"],
        name=certificate_common_name(blobs["certificate"]),
    )


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def certificate_common_name(pem: bytes) -> str:
    """Subject CN of a PEM certificate ('' when it has none)."""
    attrs = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def server_credentials(material: TlsMaterial) -> grpc.ServerCredentials:
    """Server side of mutual TLS: clients must present a certificate signed by the network CA."""
    return grpc.ssl_server_credentials(
        [(material.key, material.cert)],
        root_certificates=material.ca_cert,
        require_client_auth=True,
    )


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: trust only the network CA, present this node's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_cert,
        private_key=material.key,
        certificate_chain=material.cert,
    )


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate | None:
    """The client certificate TLS verified for this call; None without one.

    Parsed with cryptography from the PEM gRPC exposes ('x509_pem_cert'), so its CN, serial
    number and dates are exactly the certificate's (PeerVerifier checks them on every call).
    """
    auth = context.auth_context()
    if auth.get("transport_security_type", [b""])[0] != b"ssl":
        return None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    return x509.load_pem_x509_certificate(pems[0])


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """CN of the client certificate that TLS verified for this call; None without one."""
    cert = peer_certificate(context)
    if cert is None:
        return None
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None
