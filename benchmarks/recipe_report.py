"""Aggregate per-split results into mean +- sd summaries and a Markdown report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from data_tools.labels import FINDINGS

METRICS = (
    ("test", "mean_auc", "common_test mean AUC"),
    ("test", "powered_mean_auc", "common_test mean AUC, findings with >= 10 positives"),
    ("val", "mean_auc", "hospitals' val splits pooled, mean AUC"),
)


def mean_sd(values: Sequence[float | None]) -> dict:
    """Mean, sample sd (n - 1) and count of the values that are not None."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(kept) / len(kept)
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)) if len(kept) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(kept)}


def _metric(result: Mapping, part: str, key: str) -> float | None:
    return (result.get(part) or {}).get(key)


def summarise(splits: Mapping[str, Mapping[str, Mapping]], methods: Sequence[str]) -> dict:
    """Per method: every METRIC as mean +- sd over splits, and mean per-finding test AUC."""
    out = {}
    for method in methods:
        rows = [split[method] for split in splits.values() if method in split]
        entry = {
            f"{part}.{key}": mean_sd([_metric(r, part, key) for r in rows])
            for part, key, _ in METRICS
        }
        entry["per_finding"] = {
            f: mean_sd([(r.get("test") or {}).get("per_finding", {}).get(f) for r in rows])
            for f in FINDINGS
        }
        entry["seconds"] = mean_sd([r.get("seconds") for r in rows])
        out[method] = entry
    return out


def paired_difference(
    splits: Mapping[str, Mapping[str, Mapping]], method: str, reference: str, part: str, key: str
) -> dict:
    """Per-split difference method - reference of one metric, with its mean +- sd."""
    diffs = []
    for split in splits.values():
        a = _metric(split.get(method, {}), part, key)
        b = _metric(split.get(reference, {}), part, key)
        diffs.append(None if a is None or b is None else a - b)
    return {"values": diffs, **mean_sd(diffs)}


def _fmt(stat: Mapping, digits: int = 3) -> str:
    if stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def _values(splits: Mapping, method: str, part: str, key: str) -> str:
    vals = [_metric(s.get(method, {}), part, key) for s in splits.values()]
    return " / ".join("n/a" if v is None else f"{v:.3f}" for v in vals)


def markdown(report: Mapping, labels: Mapping[str, str]) -> str:
    """The report as Markdown: the summary table, paired differences, the per-finding table."""
    splits, summary = report["splits"], report["summary"]
    methods = list(summary)
    lines = [f"# {report['title']}", "", *report["preamble"], ""]
    lines += [
        "| method | common_test mean AUC (mean ± sd) | per split | findings with >= 10 test "
        "positives | val splits pooled | seconds per split |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        s = summary[m]
        lines.append(
            f"| {labels.get(m, m)} | {_fmt(s['test.mean_auc'])} | "
            f"{_values(splits, m, 'test', 'mean_auc')} | {_fmt(s['test.powered_mean_auc'])} | "
            f"{_fmt(s['val.mean_auc'])} | {_fmt(s['seconds'], 0)} |"
        )
    lines += ["", "Paired differences (same split, `ecl-sim` minus the better baseline):", ""]
    lines += ["| difference | metric | per split | mean ± sd |", "|---|---|---:|---:|"]
    for d in report["paired"]:
        vals = " / ".join("n/a" if v is None else f"{v:+.3f}" for v in d["values"])
        mean = "n/a" if d["mean"] is None else f"{d['mean']:+.3f} ± {d['sd']:.3f}"
        lines.append(f"| {d['label']} | {d['metric']} | {vals} | {mean} |")
    lines += [
        "",
        "Per finding, common_test AUC (mean ± sd over the splits that have a positive;",
        "positives summed over splits in brackets):",
        "",
    ]
    lines.append("| finding (positives) | " + " | ".join(labels.get(m, m) for m in methods) + " |")
    lines.append("|---|" + "---:|" * len(methods))
    positives = report["test_positives"]
    for f in FINDINGS:
        cells = [_fmt(summary[m]["per_finding"][f], 2) for m in methods]
        lines.append(f"| {f} ({positives[f]}) | " + " | ".join(cells) + " |")
    return "\n".join([*lines, *report.get("postscript", []), ""])
