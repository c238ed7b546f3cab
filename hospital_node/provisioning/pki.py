"""Network PKI: an EC P-256 certificate authority and one TLS server+client leaf per hospital."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

# Certificates start this much in the past so a peer whose clock runs slightly behind accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)
CA_VALID_DAYS = 3650


class PkiError(RuntimeError):
    """A key or certificate that cannot be created, read or used; the message says what to do."""


@dataclass(frozen=True)
class CertifiedKey:
    """A private key with its certificate (EC P-256)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _utc(now: dt.datetime | None) -> dt.datetime:
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise PkiError("`now` must be timezone-aware (e.g. datetime.now(datetime.UTC))")
    return now


def _serial() -> int:
    # 159 random bits: positive, under the 20-octet limit of RFC 5280, section 4.1.2.2.
    return secrets.randbits(159) | 1


def create_ca(
    common_name: str, *, valid_days: int = CA_VALID_DAYS, now: dt.datetime | None = None
) -> CertifiedKey:
    """Create a self-signed CA that may only sign end-entity certificates (path length 0)."""
    now = _utc(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key=key, cert=cert)


def _general_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for the SubjectAlternativeName extension, without repeats."""
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue_leaf(
    ca: CertifiedKey,
    common_name: str,
    *,
    sans: tuple[str, ...],
    valid_days: int,
    now: dt.datetime | None = None,
) -> CertifiedKey:
    """Issue a key + certificate (CN = hospital name) usable as TLS server and TLS client.

    `sans` should start with the hospital name itself: clients verify the server against it.
    The certificate never outlives the CA.
    """
    now = _utc(now)
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + dt.timedelta(days=valid_days), ca.cert.not_valid_after_utc)
    if not_after <= now:
        raise PkiError("the network CA has expired; create a new one with `provision --force`")
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(eku, critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(key=key, cert=cert)


def common_name(cert: x509.Certificate) -> str:
    """The subject CN of a certificate ('' when it has none)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the node reads it unattended; file permissions protect it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_file(path: Path, data: bytes, *, mode: int) -> Path:
    """Write atomically (temp file + rename); the temp file is created with `mode` from the start.

    Creating with the final mode (not chmod afterwards) means a key is never readable by others,
    not even for a moment, whatever the umask or the permissions of a file being replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have removed bits we asked for (never adds any)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    """Write a private key readable by its owner only (0600)."""
    return write_file(path, key_pem(key), mode=0o600)


def load_ca(cert_path: Path, key_path: Path) -> CertifiedKey:
    """Read the network CA written by `provision`; checks that the key matches the certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read the network CA from {cert_path.parent}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise PkiError(f"{key_path} does not belong to {cert_path}")
    return CertifiedKey(key=key, cert=cert)
