"""The self-contained HTML report: decision and reasons first, then the evidence.

Rendered from a Jinja2 template with autoescaping (every model, layer and rule string is escaped;
only our own SVG charts are inserted as markup). No scripts, no external fetches, inline CSS and
inline SVG, so it renders inside MLflow's sandboxed artifact viewer and in any browser offline.
The ESD charts of the first ``ESD_CAP`` layers (offending layers first) are drawn: inline, and as
SVG files beside the report, so a large model gives a handful of charts, not thousands.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

ESD_CAP = 12
_COLUMNS = ("name", "layer_type", "shape", "status", "alpha", "alpha_weighted", "log_spectral_norm", "stable_rank",
            "mlh", "num_pl_spikes", "reason")


def write_report(out_dir: str | Path, scan, decision=None, baseline_scan=None) -> list[Path]:
    """report.html, the depth and digit charts, and the capped per-layer ESD SVGs; returns the files."""
    from gate.report.plots import by_depth_svg, digits_svg, esd_svg
    from gate.report.verdict import summary_line

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
    order = list(scan.spectra)
    chosen = sorted(order, key=lambda name: (name not in offending, order.index(name)))[:ESD_CAP]
    esd = {name: esd_svg(name, scan.spectra[name], rows.loc[name].to_dict()) for name in chosen}
    written = [_write(directory / filename, svg) for filename, svg in charts.items()]
    written += [_write(directory / "esd" / f"{_safe(name)}.svg", svg) for name, svg in esd.items()]
    html = render_html(scan, decision, baseline_scan, list(charts.values()), list(esd.values()), offending,
                       len(scan.spectra), summary_line(decision) if decision is not None else "")
    written.append(_write(directory / "report.html", html))
    return written


def render_html(scan, decision, baseline_scan, charts: list[str], esd: list[str], offending: set[str],
                total_spectra: int, summary: str = "") -> str:
    from jinja2 import Environment, PackageLoader

    environment = Environment(loader=PackageLoader("gate.report", "templates"), autoescape=True)
    columns = [c for c in _COLUMNS if c in scan.layers.columns]
    base = baseline_scan.layers.set_index("name") if baseline_scan is not None else None
    table = []
    for row in scan.layers.to_dict(orient="records"):
        cells = [_fmt(row.get(c)) for c in columns]
        if base is not None:
            before = base["alpha"].get(row["name"], math.nan) if "alpha" in base.columns else math.nan
            cells += [_fmt(before), _fmt(row.get("alpha", math.nan) - before)]
        table.append({"cells": cells,
                      "bad": row["name"] in offending or row.get("status") in ("nonfinite", "degenerate")})
    scan_summary = ", ".join(f"{k}={_fmt(v)}" for k, v in scan.summary.items() if not isinstance(v, list))
    return environment.get_template("report.html.j2").render(
        source=scan.source, decision=decision, summary=summary, charts=charts, esd=esd, columns=columns,
        rows=table, has_baseline=base is not None, total_spectra=total_spectra, scan_summary=scan_summary,
        fmt=_fmt, threshold=_threshold)


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
