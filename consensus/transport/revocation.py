"""The network's certificate revocation list (CRL), re-read whenever its file changes."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

log = logging.getLogger(__name__)


class RevocationListError(ValueError):
    """A CRL file that cannot be used: unreadable, not signed by the network CA, or older than
    the one in use. The message says what to do."""


@dataclass(frozen=True)
class LoadedCrl:
    """What one verified CRL file says: its number, its revoked serials, when it goes stale."""

    number: int
    revoked: frozenset[int]
    next_update: dt.datetime | None


def parse_crl(data: bytes, ca: x509.Certificate) -> LoadedCrl:
    """Parse a PEM or DER CRL and check it was issued and signed by `ca`."""
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
    except ValueError as exc:
        raise RevocationListError(f"not a CRL ({exc})") from exc
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):
        raise RevocationListError(
            "not issued by this network's CA; take crl.pem from the coordinator of this network"
        )
    try:
        number = crl.extensions.get_extension_for_oid(ExtensionOID.CRL_NUMBER).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return LoadedCrl(
        number=int(number),
        revoked=frozenset(entry.serial_number for entry in crl),
        next_update=crl.next_update_utc,
    )


class RevocationList:
    """Revoked certificate serials of the network, from a CRL file signed by the network CA.

    `is_revoked` looks at the file's modification time (and size and inode) on every call and
    re-reads it when it changed, so a new crl.pem takes effect on the next call without a
    restart. A replacement that is damaged, not signed by the CA or numbered lower than the
    one in use (a rollback that would un-revoke someone) is refused and logged; the list in
    use stays. A file that disappears also leaves the list in use: revocations never lapse
    silently. A CRL past its next-update date keeps being enforced (with a warning): refusing
    every peer because the coordinator was late would stop the network.
    """

    def __init__(self, path: Path, *, ca: x509.Certificate) -> None:
        self.path = Path(path)
        self._ca = ca
        self._lock = threading.Lock()
        self._current = LoadedCrl(number=-1, revoked=frozenset(), next_update=None)
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) last read
        self.loaded = False
        if self.path.exists():
            self._current = self._read()  # a bad file at start is an error, not a warning
            self._seen = self._signature()
            self.loaded = True
            self._warn_if_stale(self._current)
        else:
            log.warning("no revocation list at %s: revoked certificates are not refused until "
                        "the coordinator's crl.pem is put there", self.path)  # fmt: skip

    @property
    def number(self) -> int:
        """The CRL number in use (-1: none loaded)."""
        return self._current.number

    def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with `serial` is revoked (re-reading a changed file first)."""
        self.refresh()
        return serial in self._current.revoked

    def refresh(self) -> None:
        """Re-read the file when its modification time, size or inode changed."""
        signature = self._signature()
        if signature is None or signature == self._seen:
            return
        with self._lock:
            if signature == self._seen:
                return
            self._seen = signature
            try:
                loaded = self._read()
            except RevocationListError as exc:
                log.error("%s; still using revocation list number %d", exc, self.number)
                return
            if loaded.number < self._current.number:
                log.error("%s is CRL number %d, older than number %d in use: refused (a "
                          "rollback would restore revoked certificates)", self.path,
                          loaded.number, self._current.number)  # fmt: skip
                return
            self._current, self.loaded = loaded, True
            log.warning("revocation list %s number %d loaded: %d revoked certificate(s)",
                        self.path, loaded.number, len(loaded.revoked))  # fmt: skip
            self._warn_if_stale(loaded)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> LoadedCrl:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise RevocationListError(f"cannot read {self.path}: {exc}") from exc
        try:
            return parse_crl(data, self._ca)
        except RevocationListError as exc:
            raise RevocationListError(f"{self.path}: {exc}") from exc

    def _warn_if_stale(self, loaded: LoadedCrl) -> None:
        if loaded.next_update is not None and loaded.next_update < dt.datetime.now(dt.UTC):
            log.warning("%s was due for renewal on %s; still enforced. Ask the coordinator for "
                        "a fresh one (hospital-node revoke --refresh)", self.path,
                        loaded.next_update.date())  # fmt: skip
