"""The self-contained HTML report: decision and reasons first, then the evidence.

Rendered from a Jinja2 template with autoescaping (every model, layer and rule string is escaped;
only our own SVG charts are inserted as markup). No scripts, no external fetches, inline CSS and
inline SVG, so it renders inside MLflow's sandboxed artifact viewer and in any browser offline.
ESD charts of at most ``ESD_CAP`` layers (offending layers first, then the most extreme alphas;
:func:`esd_layers`) are drawn: inline, and as SVG files beside the report, so a large model gives a
handful of charts, not thousands, and the report costs a fraction of the scan (bench_report.py).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from gate.vocabulary import LayerStatus

if TYPE_CHECKING:
    import pandas as pd

ESD_CAP = 2  # the default (bench_report.py: ~3% of the scan per chart); `weightgate report --esd-charts N`
_COLUMNS = ("name", "layer_type", "shape", "status", "alpha", "alpha_weighted", "log_spectral_norm", "stable_rank",
            "mlh", "num_pl_spikes", "reason")


def write_report(out_dir: str | Path, scan, decision=None, baseline_scan=None, esd_charts: int = ESD_CAP) -> list[Path]:
    """report.html, the depth and digit charts, and at most ``esd_charts`` per-layer ESD SVGs
    (:func:`esd_layers` picks them); returns the files."""
    from gate.report.plots import ESD_KEY, chart_style, report_charts
    from gate.report.verdict import summary_line

    directory = Path(out_dir)
    (directory / "esd").mkdir(parents=True, exist_ok=True)
    offending = _offending_layers(decision)
    baseline_layers = baseline_scan.layers if baseline_scan is not None else None
    rows = scan.layers.set_index("name")
    chosen = esd_layers(list(scan.spectra), rows["alpha"] if "alpha" in rows.columns else None, offending)[:esd_charts]
    drawn = report_charts()
    with drawn.lock, chart_style():
        charts = {
            "alpha_by_depth.svg": drawn.depth.svg(scan.layers, "alpha", baseline_layers, band=(2.0, 4.0),
                                                  offending=offending),
            "mlh_by_depth.svg": drawn.depth.svg(scan.layers, "mlh", baseline_layers, offending=offending),
        }
        if "benford_digit_counts" in scan.summary:
            charts["benford_digits.svg"] = drawn.digits.svg(scan.summary["benford_digit_counts"])
        esd = {name: drawn.esd.svg(name, scan.spectra[name], rows.loc[name].to_dict()) for name in chosen}
    written = [_write(directory / filename, svg) for filename, svg in charts.items()]
    written += [_write(directory / "esd" / f"{_safe(name)}.svg", svg) for name, svg in esd.items()]
    html = render_html(scan, decision, baseline_scan, list(charts.values()), list(esd.values()), offending,
                       len(scan.spectra), summary_line(decision) if decision is not None else "", ESD_KEY)
    written.append(_write(directory / "report.html", html))
    return written


def esd_layers(names: list[str], alphas: "pd.Series | None", offending: set[str]) -> list[str]:
    """Every layer with a spectrum, in the order ESD charts are drawn: offending layers (model
    order), then the lowest and the highest alpha alternately (the spectra furthest from typical,
    which a WeightWatcher user looks at first), then layers without a fit."""
    first = [name for name in names if name in offending]
    rest = [name for name in names if name not in offending]
    fitted = sorted((name for name in rest if alphas is not None and math.isfinite(alphas.get(name, math.nan))),
                    key=lambda name: alphas[name])
    extremes = [fitted[i // 2] if i % 2 == 0 else fitted[-1 - i // 2] for i in range(len(fitted))]
    fitted_names = set(fitted)
    unfitted = [name for name in rest if name not in fitted_names]
    return first + extremes + unfitted


def render_html(scan, decision, baseline_scan, charts: list[str], esd: list[str], offending: set[str],
                total_spectra: int, summary: str = "", esd_key: tuple[tuple[str, str], ...] = ()) -> str:
    columns = [c for c in _COLUMNS if c in scan.layers.columns]
    base = baseline_scan.layers.set_index("name") if baseline_scan is not None else None
    table = []
    for row in scan.layers[columns].to_dict(orient="records"):
        cells = [_fmt(row[c]) for c in columns]
        if base is not None:
            before = base["alpha"].get(row["name"], math.nan) if "alpha" in base.columns else math.nan
            cells += [_fmt(before), _fmt(row.get("alpha", math.nan) - before)]
        table.append({"cells": cells,
                      "bad": row["name"] in offending or row.get("status") in (LayerStatus.NONFINITE, LayerStatus.DEGENERATE)})
    scan_summary = ", ".join(f"{k}={_fmt(v)}" for k, v in scan.summary.items() if not isinstance(v, list))
    return _template().render(
        source=scan.source, decision=decision, summary=summary, charts=charts, esd=esd, columns=columns,
        rows=table, has_baseline=base is not None, total_spectra=total_spectra, scan_summary=scan_summary,
        esd_key=esd_key, fmt=_fmt, threshold=_threshold)


@lru_cache(maxsize=1)
def _template():
    """The report template, compiled once per process (compiling took as long as two charts)."""
    from jinja2 import Environment, PackageLoader

    return Environment(loader=PackageLoader("gate.report", "templates"), autoescape=True).get_template("report.html.j2")


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
