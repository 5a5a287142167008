"""The self-contained HTML report: decision and reasons first, then the evidence.

Rendered from a Jinja2 template with autoescaping (every model, layer and rule string is escaped;
only our own SVG charts are inserted as markup). No scripts, no external fetches, inline CSS and
inline SVG, so it renders inside MLflow's sandboxed artifact viewer and in any browser offline.
The words come from gate.report.verdict (the counts), gate.report.rules (each rule's threshold,
result and offending layers) and gate.report.changes (the offending layers against the baseline).
ESD charts of at most ``ESD_CAP`` layers (offending layers first, then the most extreme alphas;
:func:`esd_layers`) are drawn: inline, and as SVG files beside the report, so a large model gives a
handful of charts, not thousands, and the report costs a fraction of the scan (bench_report.py).
An offending layer's ESD chart shows the baseline's spectrum of the same layer over it.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from gate.vocabulary import LayerStatus, RuleStatus

if TYPE_CHECKING:
    import pandas as pd

ESD_CAP = 2  # the default (bench_report.py: ~3% of the scan per chart); `weightgate report --esd-charts N`
_COLUMNS = ("name", "layer_type", "shape", "status", "alpha", "alpha_weighted", "log_spectral_norm", "stable_rank",
            "mlh", "num_pl_spikes", "reason")
# The layer table's columns against the baseline: (heading, column of gate.report.changes.against_baseline, format).
_BASELINE_COLUMNS = (("baseline alpha", "baseline_alpha", "{:.3g}"), ("Δ alpha", "alpha_change", "{:+.3g}"),
                     ("cosine with baseline", "cosine_similarity", "{:.3g}"),
                     ("distance / baseline norm", "relative_distance", "{:.3g}"),
                     ("σmax / baseline's", "sigma_max_ratio", "x{:.3g}"),
                     ("baseline stable rank", "baseline_stable_rank", "{:.3g}"),
                     ("Δ stable rank", "stable_rank_change", "{:+.1%}"))


def write_report(out_dir: str | Path, scan, decision=None, baseline_scan=None, esd_charts: int = ESD_CAP,
                 pairs: "pd.DataFrame | None" = None) -> list[Path]:
    """report.html, the depth and digit charts, and at most ``esd_charts`` per-layer ESD SVGs
    (:func:`esd_layers` picks them); returns the files. ``pairs``: per-layer cosine and relative
    distance against the baseline (``CheckResult.pairs``), shown in the layer table."""
    from gate.report.changes import against_baseline
    from gate.report.plots import chart_style, report_charts
    from gate.report.verdict import summary_line

    directory = Path(out_dir)
    (directory / "esd").mkdir(parents=True, exist_ok=True)
    offending = _offending_layers(decision)
    baseline_layers = baseline_scan.layers if baseline_scan is not None else None
    changes = against_baseline(scan.layers, baseline_layers, pairs) if baseline_layers is not None else None
    rows = scan.layers.set_index("name")
    chosen = esd_layers(list(scan.spectra), rows["alpha"] if "alpha" in rows.columns else None, offending)[:esd_charts]
    base_spectra = baseline_scan.spectra if baseline_scan is not None else {}
    drawn = report_charts()
    unlabelled: set[str] = set()
    with drawn.lock, chart_style():
        charts = {"alpha_by_depth.svg": drawn.depth.svg(scan.layers, "alpha", baseline_layers, band=(2.0, 4.0),
                                                        offending=offending)}
        unlabelled.update(drawn.depth.unlabelled)
        charts["mlh_by_depth.svg"] = drawn.depth.svg(scan.layers, "mlh", baseline_layers, offending=offending)
        unlabelled.update(drawn.depth.unlabelled)
        # alpha and MLH do not see a layer rescaled x100 (both are scale-free); log10(lambda_max) moves by 4
        charts["log_spectral_norm_by_depth.svg"] = drawn.depth.svg(scan.layers, "log_spectral_norm", baseline_layers,
                                                                    offending=offending)
        unlabelled.update(drawn.depth.unlabelled)
        if "benford_digit_counts" in scan.summary:
            charts["benford_digits.svg"] = drawn.digits.svg(scan.summary["benford_digit_counts"])
        esd = {name: drawn.esd.svg(name, scan.spectra[name], rows.loc[name].to_dict(),
                                   base_spectra.get(name) if name in offending else None) for name in chosen}
    written = [_write(directory / filename, svg) for filename, svg in charts.items()]
    written += [_write(directory / "esd" / f"{_safe(name)}.svg", svg) for name, svg in esd.items()]
    html = render_html(scan, decision, changes, list(charts.values()), list(esd.values()),
                       [name for name in scan.layers["name"] if name in unlabelled], len(scan.spectra),
                       summary_line(decision) if decision is not None else "")
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


def render_html(scan, decision, changes: "pd.DataFrame | None", charts: list[str], esd: list[str],
                unlabelled: list[str], total_spectra: int, summary: str = "") -> str:
    """The page; ``changes``: the side-by-side table against the baseline (None without one);
    ``unlabelled``: offending layers the depth charts mark without naming them."""
    from gate.report.changes import change_words
    from gate.report.rules import baseline_label, rule_row
    from gate.report.verdict import count_sentence

    columns = [c for c in _COLUMNS if c in scan.layers.columns]
    offending = _offending_layers(decision)
    against = changes.set_index("name") if changes is not None else None
    table = []
    for row in scan.layers[columns].to_dict(orient="records"):
        cells = [_fmt(row[c]) for c in columns]
        if against is not None:
            cells += [_fmt(against.at[row["name"], column], form) if row["name"] in against.index else "–"
                      for _, column, form in _BASELINE_COLUMNS]
        table.append({"cells": cells,
                      "bad": row["name"] in offending or row.get("status") in (LayerStatus.NONFINITE, LayerStatus.DEGENERATE)})
    scan_summary = ", ".join(f"{k}={_fmt(v)}" for k, v in scan.summary.items() if not isinstance(v, list))
    rules, changed, counts = [], [], ""
    if decision is not None:
        total = decision.summary.get("num_layers", len(scan.layers))
        rules = [rule_row(rule, total, decision.baseline) for rule in decision.rules]
        base = baseline_label(decision.baseline)
        failed_by_layer = {}
        for rule in decision.failed_rules:
            for layer in rule.offending_layers:
                failed_by_layer.setdefault(layer["name"], []).append(rule.rule_id)
        changed = [{"name": c["name"], "rules": ", ".join(failed_by_layer.get(c["name"], [])),
                    "words": change_words(c, None, base)} for c in decision.changes]
        counts = count_sentence(decision)
    return _template().render(
        source=scan.source, decision=decision, summary=summary, counts=counts, rules=rules, changed=changed,
        charts=charts, esd=esd, unlabelled=unlabelled, columns=columns,
        baseline_columns=[heading for heading, _, _ in _BASELINE_COLUMNS] if against is not None else [],
        rows=table, total_spectra=total_spectra, scan_summary=scan_summary, RuleStatus=RuleStatus)


@lru_cache(maxsize=1)
def _template():
    """The report template, compiled once per process (compiling took as long as two charts)."""
    from jinja2 import Environment, PackageLoader

    return Environment(loader=PackageLoader("gate.report", "templates"), autoescape=True).get_template("report.html.j2")


def _offending_layers(decision) -> set[str]:
    if decision is None:
        return set()
    return {o["name"] for rule in decision.rules if not rule.passed for o in rule.offending_layers}


def _fmt(value, form: str = "{:.4g}") -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else form.format(value)
    return "" if value is None else str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120] or "layer"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
