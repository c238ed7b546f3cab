"""The simulation's comparison: methods x AUC on the common test set, from the results store."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pandas as pd

from data_tools.labels import FINDINGS
from hospital_node.store.reader import StoreReader


def _nan_to_none(value: float) -> float | None:
    return (
        None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    )


def absent_findings(reader: StoreReader, run_id: str) -> dict[str, list[str]]:
    """Per hospital, the findings with no positive in its training split."""
    sites = reader.sites(run_id)
    sites = sites[sites["role"] == "hospital"]
    return {row["site"]: [f for f in FINDINGS if row[f] == 0] for _, row in sites.iterrows()}


def build_report(reader: StoreReader, run_id: str, methods: list[str]) -> dict[str, Any]:
    """The `--report-json` document: per method, mean and per-site per-finding AUC (common test)."""
    final = reader.final_auc(run_id, test_set="common")
    absent = absent_findings(reader, run_id)
    privacy = reader.privacy(run_id)
    report: dict[str, Any] = {"config": reader.run_config(run_id), "run_id": run_id, "methods": {}}
    for method in methods:
        rows = final[final["method"] == method]
        if rows.empty:
            continue
        per_site = {}
        for site, group in rows.groupby("site", sort=False):
            per_finding = {r.finding: _nan_to_none(r.auc) for r in group.itertuples()}
            available = [v for v in per_finding.values() if v is not None]
            per_site[site] = {
                "mean_auc": sum(available) / len(available) if available else None,
                "per_finding": {f: per_finding.get(f) for f in FINDINGS},
            }
        site_means = [s["mean_auc"] for s in per_site.values() if s["mean_auc"] is not None]
        report["methods"][method] = {
            "mean_auc": sum(site_means) / len(site_means) if site_means else None,
            "min_site_auc": min(site_means) if site_means else None,
            "max_site_auc": max(site_means) if site_means else None,
            "absent_findings_auc": _absent_auc(per_site, absent),
            "per_site": per_site,
            **_privacy_spent(privacy, method),
        }
    return report


def _privacy_spent(privacy: pd.DataFrame, method: str) -> dict[str, Any]:
    """Largest epsilon over the method's sites ('off' when the run used no privacy mode)."""
    if privacy.empty:
        return {"privacy_mode": "off", "epsilon": None, "sites_exhausted": 0}
    rows = privacy[privacy["method"] == method]
    if rows.empty:  # e.g. the centralized reference in exchange mode: pooled data, no figure
        return {"privacy_mode": "n/a", "epsilon": None, "sites_exhausted": 0}
    return {
        "privacy_mode": str(rows["mode"].iloc[0]),
        "epsilon": _nan_to_none(float(rows["epsilon"].max())),
        "sites_exhausted": int(rows["exhausted"].astype(bool).sum()),
    }


def _absent_auc(per_site: dict[str, Any], absent: dict[str, list[str]]) -> float | None:
    """Mean AUC over (hospital, finding it never saw) pairs; centralized stands for every site."""
    values = []
    for site, findings in absent.items():
        model = per_site.get(site) or per_site.get("all")
        if model is None:
            continue
        values += [
            model["per_finding"][f] for f in findings if model["per_finding"].get(f) is not None
        ]
    return sum(values) / len(values) if values else None


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method: mean, min and max over sites, AUC on findings absent at a site."""
    rows = []
    for method, entry in report["methods"].items():
        rows.append(
            {
                "method": method,
                "mean_auc": entry["mean_auc"],
                "min_site_auc": entry["min_site_auc"],
                "max_site_auc": entry["max_site_auc"],
                "absent_findings_auc": entry["absent_findings_auc"],
                "epsilon": _fmt_epsilon(entry),
            }
        )
    return rows


def _fmt_epsilon(entry: dict[str, Any]) -> str:
    mode = entry.get("privacy_mode", "off")
    if mode in ("off", "n/a"):
        return mode
    if entry.get("epsilon") is None:
        return "n/a"
    exhausted = entry.get("sites_exhausted", 0)
    return f"{entry['epsilon']:.2f} ({mode})" + (f", {exhausted} stopped" if exhausted else "")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_table(report: dict[str, Any]) -> str:
    """The terminal / Markdown comparison table."""
    header = (
        "| method | mean AUC (common test) | min over sites | max over sites "
        "| AUC on findings a site never saw | epsilon (max over sites) |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for row in table_rows(report):
        lines.append(
            f"| {row['method']} | {_fmt(row['mean_auc'])} | {_fmt(row['min_site_auc'])} | "
            f"{_fmt(row['max_site_auc'])} | {_fmt(row['absent_findings_auc'])} | "
            f"{row['epsilon']} |"
        )
    return "\n".join(lines)


def write_exports(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """comparison.md (summary + per-site tables) and per_site_auc.csv (long format)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "comparison.md"
    parts = [
        "# Simulation comparison",
        "",
        f"Run `{report['run_id']}`.",
        "",
        format_table(report),
        "",
    ]
    for method, entry in report["methods"].items():
        frame = pd.DataFrame(
            {site: s["per_finding"] for site, s in entry["per_site"].items()}
        ).T.round(3)
        parts += [
            f"## {method}",
            "",
            frame.to_markdown() if _has_tabulate() else frame.to_string(),
            "",
        ]
    md.write_text("\n".join(parts))
    csv_path = out_dir / "per_site_auc.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "site", "finding", "auc"])
        for method, entry in report["methods"].items():
            for site, s in entry["per_site"].items():
                for finding, auc in s["per_finding"].items():
                    writer.writerow([method, site, finding, "" if auc is None else f"{auc:.4f}"])
    return [md, csv_path]


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def plot_progress(reader: StoreReader, run_id: str, path: Path) -> Path:
    """PNG of mean AUC on the common test subset vs local steps, one line per method (site mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = reader.metrics(run_id, names=["mean_auc_common"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for method, group in frame.groupby("method", sort=False):
        curve = group.groupby("step")["value"].mean()
        ax.plot(curve.index, curve.values, marker="o", markersize=3, label=method)
    ax.set_xlabel("local steps per hospital")
    ax.set_ylabel("mean AUC, common test set (mean over hospitals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
