"""Per-finding summaries a hospital may share with the network (AUC, CI, counts; no cases).

Small cells are suppressed before anything leaves: a finding with fewer than `min_positives`
positive (or negative) test images is sent as 'suppressed', without AUC, interval or counts,
because an AUC over a handful of patients says little and can single them out.
"""

from __future__ import annotations

from dataclasses import dataclass

from hospital_node.evaluation.records import Evaluation


@dataclass(frozen=True)
class FindingSummary:
    """One finding of a site summary; every number is None when `suppressed`."""

    finding: str
    suppressed: bool
    auc: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_pos: int | None = None
    n_neg: int | None = None


@dataclass(frozen=True)
class SiteSummary:
    """A hospital's latest evaluation on its own test set, as it is published and relayed.

    (`boot_epoch`, `step`) orders the summaries of one origin: a node keeps and relays only
    the newest it has seen, so a summary travelling in a loop is dropped where it was seen.
    """

    origin: str  # the hospital that evaluated (its certificate name)
    method: str
    boot_epoch: int
    step: int
    created_at: float  # Unix time at the origin when it evaluated
    test_set: str
    n_images: int
    ci_level: float | None
    min_positives: int  # the origin's suppression threshold
    findings: tuple[FindingSummary, ...]

    @property
    def order_key(self) -> tuple[int, int]:
        return self.boot_epoch, self.step


def summarize(
    evaluation: Evaluation,
    *,
    origin: str,
    method: str,
    boot_epoch: int,
    step: int,
    created_at: float,
    min_positives: int,
    test_set: str = "local",
) -> SiteSummary:
    """The shareable form of `evaluation`, small cells suppressed (see the module docstring)."""
    cis = evaluation.ci or (None,) * len(evaluation.findings)
    findings = []
    for name, auc, ci, n_pos, n_neg in zip(
        evaluation.findings, evaluation.auc, cis, evaluation.n_pos, evaluation.n_neg, strict=True
    ):
        if auc is None or min(n_pos, n_neg) < min_positives:
            findings.append(FindingSummary(name, suppressed=True))
            continue
        low, high = ci if ci is not None else (None, None)
        findings.append(FindingSummary(name, False, auc, low, high, int(n_pos), int(n_neg)))
    return SiteSummary(
        origin=origin,
        method=method,
        boot_epoch=boot_epoch,
        step=step,
        created_at=created_at,
        test_set=test_set,
        n_images=evaluation.n_images,
        ci_level=evaluation.ci_level if evaluation.ci is not None else None,
        min_positives=min_positives,
        findings=tuple(findings),
    )
