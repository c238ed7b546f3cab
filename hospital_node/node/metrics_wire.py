"""The metrics message: per-finding AUC summaries between hospitals that opted in (JSON, signed).

A small schema of its own, separate from the consensus swap (docs/wire-format.md, sec. 10).
One message is a UTF-8 JSON object with exactly the keys `format` ('ecl-metrics'),
`version` (1), `sender`, `receiver`, `sequence` and `summaries`: at most MAX_SUMMARIES signed
site summaries, one per origin hospital. Each entry holds the summary, the origin's
certificate (DER, base64) and its ECDSA-SHA256 signature over the summary's canonical JSON,
so a neighbour that relays another hospital's figures cannot change or invent them.

Decoding checks everything before anything is kept: size, strict JSON (no duplicate keys, no
NaN/Infinity), exact key sets, names, integer ranges, probabilities in [0, 1], counts that
respect the origin's own suppression threshold. A failure raises MessageRejected with a
stable reason; nothing is ever unpickled or evaluated.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consensus.wire import MAX_SEQUENCE, MessageRejected
from data_tools.labels import FINDINGS
from hospital_node.evaluation.summary import FindingSummary, SiteSummary

METRICS_FORMAT = "ecl-metrics"
METRICS_VERSION = 1
MAX_METRICS_BYTES = 256 * 1024  # 64 signed summaries need about 150 kB
MAX_SUMMARIES = 64  # origins per message: far above the 2-16 hospitals of a network
MAX_CERTIFICATE_BYTES = 4096
MAX_SIGNATURE_BYTES = 256
MAX_STEP = 2**53  # exact in JSON numbers of any reader
MAX_BOOT_EPOCH = 2**31 - 1
MAX_IMAGES = 10**8
MESSAGE_KEYS = frozenset({"format", "version", "sender", "receiver", "sequence", "summaries"})
ENTRY_KEYS = frozenset({"summary", "certificate", "signature"})
SUMMARY_KEYS = frozenset(
    {"origin", "method", "boot_epoch", "step", "created_at", "test_set", "n_images",
     "ci_level", "min_positives", "findings"}
)  # fmt: skip
CELL_KEYS = frozenset({"auc", "ci_low", "ci_high", "n_pos", "n_neg"})
SIGNATURE_CONTEXT = b"ecl-metrics summary v1\0"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class SignedSummary:
    """A site summary with its origin's certificate and signature (kept for relaying)."""

    summary: SiteSummary
    certificate: bytes  # DER
    signature: bytes


@dataclass(frozen=True)
class MetricsMessage:
    """A decoded, structurally valid metrics message (signatures not yet checked)."""

    sender: str
    receiver: str
    sequence: int
    entries: tuple[SignedSummary, ...]


def summary_to_dict(summary: SiteSummary) -> dict[str, Any]:
    """The JSON form of a summary (what is signed, and what travels)."""
    cells = {}
    for f in summary.findings:
        if f.suppressed:
            cells[f.finding] = {"suppressed": True}
        else:
            cells[f.finding] = {"auc": f.auc, "ci_low": f.ci_low, "ci_high": f.ci_high,
                                "n_pos": f.n_pos, "n_neg": f.n_neg}  # fmt: skip
    return {
        "origin": summary.origin, "method": summary.method, "boot_epoch": summary.boot_epoch,
        "step": summary.step, "created_at": summary.created_at, "test_set": summary.test_set,
        "n_images": summary.n_images, "ci_level": summary.ci_level,
        "min_positives": summary.min_positives, "findings": cells,
    }  # fmt: skip


def canonical_bytes(summary: Mapping[str, Any]) -> bytes:
    """What the origin signs: its context string, then the summary's canonical JSON."""
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return SIGNATURE_CONTEXT + text.encode()


def encode_metrics(
    *, sender: str, receiver: str, sequence: int, entries: tuple[SignedSummary, ...]
) -> bytes:
    """Bytes of one metrics message (deterministic: sorted keys, no whitespace)."""
    message = {
        "format": METRICS_FORMAT,
        "version": METRICS_VERSION,
        "sender": sender,
        "receiver": receiver,
        "sequence": sequence,
        "summaries": [
            {
                "summary": summary_to_dict(e.summary),
                "certificate": base64.b64encode(e.certificate).decode(),
                "signature": base64.b64encode(e.signature).decode(),
            }
            for e in entries
        ],
    }
    return json.dumps(message, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _reject(reason: str, detail: str) -> MessageRejected:
    return MessageRejected(reason, detail)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _reject("malformed", "duplicate key in JSON object")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise _reject("malformed", f"JSON literal {name} is not allowed")


def _object(value: Any, keys: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise _reject("malformed", f"{where} must have exactly the keys {sorted(keys)}: {got}")
    return value


def _int(value: Any, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _reject("malformed", f"{where} must be an integer in [{low}, {high}]")
    return value


def _number(value: Any, low: float, high: float, where: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high:
        raise _reject("malformed", f"{where} must be a finite number in [{low}, {high}]")
    return float(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _reject("malformed", f"{where} is not a valid name")
    return value


def _cell(name: str, value: Any, summary: Mapping[str, Any]) -> FindingSummary:
    """One finding: {'suppressed': true} or AUC, optional CI and counts over the threshold."""
    if isinstance(value, dict) and set(value) == {"suppressed"}:
        if value["suppressed"] is not True:
            raise _reject("malformed", f"{name}: 'suppressed' must be true")
        return FindingSummary(name, suppressed=True)
    cell = _object(value, CELL_KEYS, f"finding {name}")
    auc = _number(cell["auc"], 0.0, 1.0, f"{name} auc")
    low, high = cell["ci_low"], cell["ci_high"]
    if (low is None) != (high is None):
        raise _reject("malformed", f"{name}: ci_low and ci_high must both be given or both null")
    if low is not None:
        low, high = _number(low, 0.0, 1.0, f"{name} ci_low"), _number(high, 0.0, 1.0, name)
        if low > high:
            raise _reject("malformed", f"{name}: ci_low > ci_high")
    least = summary["min_positives"]
    n_pos = _int(cell["n_pos"], least, MAX_IMAGES, f"{name} n_pos (origin's threshold)")
    n_neg = _int(cell["n_neg"], least, MAX_IMAGES, f"{name} n_neg (origin's threshold)")
    if n_pos + n_neg > summary["n_images"]:
        raise _reject("malformed", f"{name}: more positives and negatives than images")
    return FindingSummary(name, False, auc, low, high, n_pos, n_neg)


def summary_from_dict(raw: Any) -> SiteSummary:
    """A validated SiteSummary from its JSON form (MessageRejected 'malformed' otherwise)."""
    s = _object(raw, SUMMARY_KEYS, "summary")
    if s["test_set"] != "local":
        raise _reject("malformed", "summary test_set must be 'local' (each site's own test set)")
    ci_level = s["ci_level"]
    if ci_level is not None:
        ci_level = _number(ci_level, 0.5, 0.999, "ci_level")
    s["n_images"] = _int(s["n_images"], 0, MAX_IMAGES, "n_images")
    s["min_positives"] = _int(s["min_positives"], 1, MAX_IMAGES, "min_positives")
    findings = _object(s["findings"], frozenset(FINDINGS), "findings")
    return SiteSummary(
        origin=_name(s["origin"], "origin"),
        method=_name(s["method"], "method"),
        boot_epoch=_int(s["boot_epoch"], 0, MAX_BOOT_EPOCH, "boot_epoch"),
        step=_int(s["step"], 0, MAX_STEP, "step"),
        created_at=_number(s["created_at"], 0.0, 1e11, "created_at"),
        test_set="local",
        n_images=s["n_images"],
        ci_level=ci_level,
        min_positives=s["min_positives"],
        findings=tuple(_cell(name, findings[name], s) for name in FINDINGS),
    )


def _b64(value: Any, limit: int, where: str) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * limit:
        raise _reject("malformed", f"{where} must be base64 of at most {limit} bytes")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _reject("malformed", f"{where} is not base64") from exc
    if not raw or len(raw) > limit:
        raise _reject("malformed", f"{where} must be 1-{limit} bytes")
    return raw


def _entry(raw: Any) -> SignedSummary:
    e = _object(raw, ENTRY_KEYS, "summaries[]")
    return SignedSummary(
        summary=summary_from_dict(e["summary"]),
        certificate=_b64(e["certificate"], MAX_CERTIFICATE_BYTES, "certificate"),
        signature=_b64(e["signature"], MAX_SIGNATURE_BYTES, "signature"),
    )


def _parse(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_METRICS_BYTES:
        raise _reject("too_large", f"{len(payload)} bytes > {MAX_METRICS_BYTES}")
    try:
        text = payload.decode("utf-8")
        message = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _reject("malformed", f"not UTF-8 JSON: {exc}") from exc
    return _object(message, MESSAGE_KEYS, "metrics message")


def decode_metrics(payload: bytes, *, receiver: str, authenticated_sender: str) -> MetricsMessage:
    """Structural and header checks of a metrics message from the TLS-authenticated peer."""
    m = _parse(payload)
    if m["format"] != METRICS_FORMAT or m["version"] != METRICS_VERSION:
        raise _reject("malformed", f"unsupported format/version {m['format']!r} {m['version']!r}")
    sender = _name(m["sender"], "sender")
    if sender != authenticated_sender:
        raise _reject("unknown_sender", f"sender {sender!r} is not the TLS peer")
    if _name(m["receiver"], "receiver") != receiver:
        raise _reject("wrong_receiver", f"receiver {m['receiver']!r} is not {receiver!r}")
    sequence = _int(m["sequence"], 0, MAX_SEQUENCE, "sequence")
    raw = m["summaries"]
    if not isinstance(raw, list) or len(raw) > MAX_SUMMARIES:
        raise _reject("malformed", f"summaries must be a list of at most {MAX_SUMMARIES}")
    entries = tuple(_entry(item) for item in raw)
    origins = [e.summary.origin for e in entries]
    if len(set(origins)) != len(origins):
        raise _reject("malformed", "one summary per origin and message")
    return MetricsMessage(sender, m["receiver"], sequence, entries)
