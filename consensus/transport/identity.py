"""Who is at the other end of a call: certificate checks on every call, and the callee's proof.

TLS checks certificates once, at the handshake; an HTTP/2 connection then carries calls for
as long as it stays open. `PeerVerifier.check` repeats the checks that can change meanwhile
(validity dates, revocation) on every call, on both ends. The server reads the caller's
certificate from the call's TLS context. gRPC's Python client does not expose the server's
certificate, so the callee sends an `IdentityProof` as its first frame: its certificate and
an ECDSA signature, with that certificate's key, over the caller's fresh nonce and both
names. The caller checks it before sending any data (docs/wire-format.md, section 9).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from consensus.transport.revocation import RevocationList

NONCE_BYTES = 32
_PROOF_CONTEXT = b"ecl-exchange identity proof v2\0"


class IdentityError(Exception):
    """A certificate or proof that must be refused; `reason` is a stable code for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class PeerVerifier:
    """The checks a node makes on a peer's certificate at every call.

    Issued directly by the network CA (`other_ca`), within its validity dates
    (`not_yet_valid`, `expired`), not in the revocation list (`revoked`), and, when a name is
    expected, carrying it as CN (`wrong_name`). `revocation` None: no CRL is configured.
    """

    ca: x509.Certificate
    revocation: RevocationList | None = None
    clock: Callable[[], dt.datetime] = _utc_now

    @classmethod
    def from_pem(cls, ca_pem: bytes, revocation: RevocationList | None = None) -> PeerVerifier:
        return cls(ca=x509.load_pem_x509_certificate(ca_pem), revocation=revocation)

    def check(self, cert: x509.Certificate, *, name: str | None = None) -> None:
        """Raise IdentityError when `cert` must be refused now."""
        try:
            cert.verify_directly_issued_by(self.ca)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise IdentityError("other_ca", "certificate not issued by this network's CA") from exc
        now = self.clock()
        if now < cert.not_valid_before_utc:
            raise IdentityError("not_yet_valid", f"valid from {cert.not_valid_before_utc}")
        if now > cert.not_valid_after_utc:
            raise IdentityError("expired", f"expired on {cert.not_valid_after_utc}")
        if self.revocation is not None and self.revocation.is_revoked(cert.serial_number):
            raise IdentityError(
                "revoked",
                f"certificate {cert.serial_number:x} of {common_name(cert)!r} is in the "
                f"revocation list {self.revocation.path.name} (number {self.revocation.number})",
            )
        if name is not None and common_name(cert) != name:
            raise IdentityError("wrong_name", f"certificate is for {common_name(cert)!r}")


def _proof_message(*, callee: str, caller: str, purpose: int, nonce: bytes) -> bytes:
    names = callee.encode() + b"\0" + caller.encode() + b"\0"
    return _PROOF_CONTEXT + names + purpose.to_bytes(4, "big") + nonce


@dataclass(frozen=True, repr=False)
class ProofSigner:
    """The callee's side: its certificate (DER) and key, signing each caller's nonce."""

    certificate_der: bytes
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> ProofSigner:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the node's key must be an EC key (provisioning writes P-256)")
        cert = x509.load_pem_x509_certificate(cert_pem)
        return cls(certificate_der=cert.public_bytes(serialization.Encoding.DER), key=key)

    def sign(self, *, callee: str, caller: str, purpose: int, nonce: bytes) -> bytes:
        message = _proof_message(callee=callee, caller=caller, purpose=purpose, nonce=nonce)
        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify_proof(
    verifier: PeerVerifier,
    *,
    certificate_der: bytes,
    signature: bytes,
    callee: str,
    caller: str,
    purpose: int,
    nonce: bytes,
) -> x509.Certificate:
    """The callee's certificate, once it passes `verifier.check` for the name `callee` and the
    signature over our nonce verifies with its key; IdentityError otherwise."""
    try:
        cert = x509.load_der_x509_certificate(certificate_der)
    except ValueError as exc:
        raise IdentityError("bad_proof", "the identity proof holds no certificate") from exc
    verifier.check(cert, name=callee)
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IdentityError("bad_proof", "the certificate's key is not an EC key")
    message = _proof_message(callee=callee, caller=caller, purpose=purpose, nonce=nonce)
    try:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise IdentityError("bad_proof", "signature over our nonce does not verify") from exc
    return cert
