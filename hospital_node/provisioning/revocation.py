"""Revocation on the coordinator's side: the register of issued certificates and the signed CRL.

The CA folder keeps `issued.json` (every certificate the CA issued: serial, hospital, dates)
and `crl.pem`, the certificate revocation list signed with the CA key. `revoke` adds every
certificate of one hospital (or chosen serials) to the CRL with the next CRL number and
writes it to the CA folder and to every bundle; nodes re-read their bundle's crl.pem when it
changes (consensus/transport/revocation.py) and refuse revoked certificates from the next
call on, on both ends.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hospital_node.provisioning.pki import CertifiedKey, PkiError, common_name, write_file

CRL_FILE = "crl.pem"
REGISTER_FILE = "issued.json"
CRL_VALID_DAYS = 365  # nodes warn past this date and keep enforcing; refresh yearly
REASONS = {
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation": x509.ReasonFlags.cessation_of_operation,
    "unspecified": x509.ReasonFlags.unspecified,
}


@dataclass(frozen=True)
class Revocation:
    """What `revoke` did: the serials it added and every file it wrote."""

    hospital: str
    serials: tuple[int, ...]
    number: int
    written: tuple[Path, ...]


def _utc(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.UTC)


# --- the register of issued certificates -------------------------------------------------------


def record_issued(ca_dir: Path, cert: x509.Certificate, *, fresh: bool = False) -> Path:
    """Add `cert` to CA_DIR/issued.json (`fresh`: start a new register, for a new CA)."""
    path = ca_dir / REGISTER_FILE
    entries = [] if fresh else read_register(ca_dir)
    entries.append(
        {
            "serial": f"{cert.serial_number:x}",
            "hospital": common_name(cert),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
    )
    text = json.dumps({"certificates": entries}, indent=1) + "\n"
    return write_file(path, text.encode(), mode=0o644)


def read_register(ca_dir: Path) -> list[dict[str, str]]:
    path = ca_dir / REGISTER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read {path}: {exc}; restore it from the CA backup") from exc
    return list(data.get("certificates", []))


def issued_serials(ca_dir: Path, hospital: str, bundle_cert: Path | None = None) -> list[int]:
    """Serials of every certificate issued to `hospital`: the register's, plus the one in its
    bundle (networks provisioned before the register existed)."""
    serials = [int(e["serial"], 16) for e in read_register(ca_dir) if e["hospital"] == hospital]
    if bundle_cert is not None and bundle_cert.is_file():
        serials.append(x509.load_pem_x509_certificate(bundle_cert.read_bytes()).serial_number)
    return sorted(set(serials))


# --- the CRL -----------------------------------------------------------------------------------


def build_crl(
    ca: CertifiedKey,
    revoked: list[x509.RevokedCertificate],
    *,
    number: int,
    now: dt.datetime | None = None,
    valid_days: int = CRL_VALID_DAYS,
) -> x509.CertificateRevocationList:
    """A CRL signed by the CA, numbered `number` (nodes refuse a lower number than theirs)."""
    now = _utc(now)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=valid_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256())


def load_crl(ca_dir: Path, ca: CertifiedKey) -> x509.CertificateRevocationList | None:
    """The CA folder's current CRL (None: none yet); it must be signed by `ca`."""
    path = ca_dir / CRL_FILE
    if not path.exists():
        return None
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read {path}: {exc}; restore it from the CA backup") from exc
    if not crl.is_signature_valid(ca.key.public_key()):
        raise PkiError(f"{path} was not signed by this CA; restore it from the CA backup")
    return crl


def crl_number(crl: x509.CertificateRevocationList | None) -> int:
    if crl is None:
        return 0
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def bundle_dirs(out_dir: Path) -> list[Path]:
    """Every hospital bundle under `out_dir` (folders with a node.toml; not `_ca`)."""
    return sorted(
        p for p in out_dir.iterdir() if not p.name.startswith("_") and (p / "node.toml").is_file()
    )


def publish_crl(
    out_dir: Path, ca_dir: Path, crl: x509.CertificateRevocationList, *, bundles: bool = True
) -> list[Path]:
    """Write the CRL to the CA folder and (`bundles`) into every bundle; the files written."""
    pem = crl.public_bytes(serialization.Encoding.PEM)
    written = [write_file(ca_dir / CRL_FILE, pem, mode=0o644)]
    if bundles:
        written += [write_file(b / CRL_FILE, pem, mode=0o644) for b in bundle_dirs(out_dir)]
    return written


def current_crl(ca_dir: Path, ca: CertifiedKey) -> x509.CertificateRevocationList:
    """The CA folder's CRL, or a first empty one (number 1) when there is none yet."""
    return load_crl(ca_dir, ca) or build_crl(ca, [], number=1)


def revoke(
    out_dir: Path,
    ca_dir: Path,
    ca: CertifiedKey,
    hospital: str,
    *,
    serials: list[int] | None = None,
    reason: str = "key-compromise",
    now: dt.datetime | None = None,
) -> Revocation:
    """Revoke `serials`, by default every certificate issued to `hospital`; publish the CRL."""
    if reason not in REASONS:
        raise PkiError(f"reason {reason!r}: choose one of {sorted(REASONS)}")
    if serials is None:
        serials = issued_serials(ca_dir, hospital, out_dir / hospital / f"{hospital}.crt")
    if not serials:
        raise PkiError(f"no certificate issued to {hospital!r} is known (register or bundle)")
    old = load_crl(ca_dir, ca)
    entries = list(old or [])
    already = {entry.serial_number for entry in entries}
    when = _utc(now)
    for serial in sorted(set(serials) - already):
        entries.append(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(when)
            .add_extension(x509.CRLReason(REASONS[reason]), critical=False)
            .build()
        )
    number = crl_number(old) + 1
    crl = build_crl(ca, entries, number=number, now=when)
    written = publish_crl(out_dir, ca_dir, crl)
    return Revocation(
        hospital=hospital, serials=tuple(sorted(serials)), number=number, written=tuple(written)
    )


def refresh(out_dir: Path, ca_dir: Path, ca: CertifiedKey, *, now: dt.datetime | None = None):
    """Re-sign the current CRL with a new next-update date (same entries, next number)."""
    old = load_crl(ca_dir, ca)
    crl = build_crl(ca, list(old or []), number=crl_number(old) + 1, now=now)
    return publish_crl(out_dir, ca_dir, crl)
