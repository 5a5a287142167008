"""The self-contained HTML report: decision and reasons first, then the evidence.

No scripts, no external fetches, inline CSS and inline SVG, so it renders inside MLflow's sandboxed
artifact viewer (an iframe without scripts) and in any browser offline. Per-layer ESD charts are
also written as SVG files beside it, capped (offending layers first) so that a large model gives a
handful of files, not thousands.
"""

from __future__ import annotations

import math
import re
from html import escape
from pathlib import Path

import pandas as pd

from gate.report.plots import by_depth_svg, digits_svg, esd_svg

ESD_FILE_CAP = 48
ESD_INLINE_CAP = 12
_COLUMNS = ("name", "layer_type", "shape", "status", "alpha", "alpha_weighted", "log_spectral_norm", "stable_rank",
            "mlh", "num_pl_spikes", "reason")
_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
.decision{font-size:22px;font-weight:bold;padding:10px 16px;border-radius:6px;display:inline-block}
.approve{background:#d5f5e3;color:#145a32}.warn{background:#fcf3cf;color:#7d6608}.block{background:#fadbd8;color:#78281f}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
tr.bad td{background:#fadbd8}.failed{color:#c0392b;font-weight:bold}.passed{color:#1e8449}.skipped{color:#888}
.error{color:#c0392b;font-weight:bold}.charts svg{margin:4px;border:1px solid #eee}.meta{color:#666;font-size:12px}
"""


def write_report(out_dir: str | Path, scan, decision=None, baseline_scan=None) -> list[Path]:
    """report.html, the depth and digit charts, and capped per-layer ESD SVGs; returns the files."""
    directory = Path(out_dir)
    (directory / "esd").mkdir(parents=True, exist_ok=True)
    offending = _offending_layers(decision)
    baseline_layers = baseline_scan.layers if baseline_scan is not None else None
    charts = {
        "alpha_by_depth.svg": by_depth_svg(scan.layers, "alpha", baseline_layers, band=(2.0, 4.0), offending=offending),
        "mlh_by_depth.svg": by_depth_svg(scan.layers, "mlh", baseline_layers, offending=offending),
    }
    if "benford_digit_counts" in scan.summary:
        charts["benford_digits.svg"] = digits_svg(scan.summary["benford_digit_counts"])
    rows = scan.layers.set_index("name")
    chosen = sorted(scan.spectra, key=lambda name: (name not in offending, list(scan.spectra).index(name)))
    esd = {name: esd_svg(name, scan.spectra[name], rows.loc[name].to_dict()) for name in chosen[:ESD_FILE_CAP]}
    written = []
    for filename, svg in charts.items():
        written.append(_write(directory / filename, svg))
    for name, svg in esd.items():
        written.append(_write(directory / "esd" / f"{_safe(name)}.svg", svg))
    html = render_html(scan, decision, baseline_scan, charts, {n: esd[n] for n in list(esd)[:ESD_INLINE_CAP]},
                       offending, len(scan.spectra))
    written.append(_write(directory / "report.html", html))
    return written


def render_html(scan, decision, baseline_scan, charts: dict[str, str], esd: dict[str, str], offending: set[str],
                total_spectra: int) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>weightgate: {escape(scan.source)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>weightgate report — {escape(scan.source)}</h1>"]
    if decision is not None:
        parts.append(f"<div class='decision {decision.decision}'>{decision.decision.upper()}</div>")
        failed = decision.failed_rules
        if failed:
            parts.append("<ul>" + "".join(f"<li><b>{escape(r.rule_id)}</b> ({r.severity}): {escape(r.reason)}</li>"
                                          for r in failed) + "</ul>")
        else:
            parts.append(f"<p>All {len(decision.rules) - len(decision.inconclusive_rules)} conclusive rules passed.</p>")
        if decision.inconclusive_rules:  # no verdict is not a pass: shown apart
            parts.append("<h3>Inconclusive (not violations: too little trustworthy evidence)</h3><ul>" + "".join(
                f"<li><b>{escape(r.rule_id)}</b> ({r.severity}): {escape(r.reason)}</li>"
                for r in decision.inconclusive_rules) + "</ul>")
        parts.append(_rules_table(decision))
    parts.append("<h2>Charts</h2><div class='charts'>" + "".join(charts.values()) + "</div>")
    parts.append("<h2>Layers</h2>" + _layer_table(scan.layers, baseline_scan, offending))
    if esd:
        note = f" (showing {len(esd)} of {total_spectra}; offending layers first; all capped ESDs are in esd/)"
        parts.append(f"<h2>Eigenvalue spectra{note}</h2><div class='charts'>" + "".join(esd.values()) + "</div>")
    summary = ", ".join(f"{k}={_fmt(v)}" for k, v in scan.summary.items() if not isinstance(v, list))
    parts.append(f"<h2>Summary</h2><p class='meta'>{escape(summary)}</p>")
    if decision is not None:
        parts.append(f"<p class='meta'>policy {escape(decision.policy['name'])} sha256 {decision.policy['sha256']}<br>"
                     f"weights sha256 {decision.weights_sha256}<br>baseline {escape(decision.baseline or 'none')} "
                     f"{decision.baseline_weights_sha256 or ''}<br>decided {decision.timestamp} by weightgate "
                     f"{escape(decision.weightgate_version)}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def _rules_table(decision) -> str:
    rows = "".join(
        f"<tr><td>{escape(r.rule_id)}</td><td>{r.severity}</td><td class='{r.status}'>{r.status}</td>"
        f"<td>{_fmt(r.observed)}</td><td>{escape(_threshold(r.threshold))}</td>"
        f"<td>{escape(', '.join(o['name'] for o in r.offending_layers[:8]))}</td></tr>" for r in decision.rules)
    return ("<h2>Rules</h2><table><tr><th>rule</th><th>severity</th><th>status</th><th>observed</th>"
            f"<th>threshold</th><th>offending layers</th></tr>{rows}</table>")


def _layer_table(layers: pd.DataFrame, baseline_scan, offending: set[str]) -> str:
    columns = [c for c in _COLUMNS if c in layers.columns]
    base = baseline_scan.layers.set_index("name") if baseline_scan is not None else None
    header = "".join(f"<th>{c}</th>" for c in columns) + ("<th>baseline alpha</th><th>Δ alpha</th>" if base is not None else "")
    body = []
    for row in layers.to_dict(orient="records"):
        cells = "".join(f"<td>{escape(_fmt(row.get(c)))}</td>" for c in columns)
        if base is not None:
            before = base["alpha"].get(row["name"], math.nan) if "alpha" in base.columns else math.nan
            cells += f"<td>{_fmt(before)}</td><td>{_fmt(row.get('alpha', math.nan) - before)}</td>"
        marked = " class='bad'" if row["name"] in offending or row.get("status") in ("nonfinite", "degenerate") else ""
        body.append(f"<tr{marked}>{cells}</tr>")
    return f"<table><tr>{header}</tr>{''.join(body)}</table>"


def _offending_layers(decision) -> set[str]:
    if decision is None:
        return set()
    return {o["name"] for rule in decision.rules if not rule.passed for o in rule.offending_layers}


def _threshold(threshold: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in threshold.items() if v is not None)


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120] or "layer"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
