"""The pictures of the source papers, as SVG: log-log ESD with the power-law fit, alpha and MLH by
depth (004's correlation flow) with a baseline overlaid, and the first-digit histogram."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gate.benford import BENFORD
from gate.report.svg import Chart

_OK, _BAD, _BASE = "#2e86c1", "#c0392b", "#999999"


def esd_svg(name: str, evals: np.ndarray, row: dict) -> str:
    """Log-log histogram (density) of the eigenvalues, the fitted power law from xmin, xmin and
    the Marchenko-Pastur bulk edge (when fitted) marked."""
    positive = evals[evals > 1e-12]
    low, high = positive.min(), positive.max()
    if not high > low:
        high = low * 10
    counts, edges = np.histogram(positive, bins=np.logspace(math.log10(low), math.log10(high), 41))
    density = counts / (np.diff(edges) * positive.size)
    shown = density[density > 0]
    chart = Chart(f"ESD {name}", (low, high), (shown.min() / 2, shown.max() * 2), log_x=True, log_y=True,
                  x_label="eigenvalue λ", y_label="density")
    chart.bars(edges, density)
    alpha, xmin = row.get("alpha", math.nan), row.get("xmin", math.nan)
    if math.isfinite(alpha) and math.isfinite(xmin):
        tail_share = np.count_nonzero(positive >= xmin) / positive.size
        xs = np.logspace(math.log10(xmin), math.log10(high), 30)
        pdf = tail_share * (alpha - 1) / xmin * (xs / xmin) ** (-alpha)
        chart.line(xs, pdf, label=f"power law α = {alpha:.2f}")
        chart.vline(xmin, "#8e44ad", f"xmin = {xmin:.3g}")
    if math.isfinite(row.get("bulk_max", math.nan)):
        chart.vline(row["bulk_max"], "#16a085", "MP bulk edge")
    return chart.to_svg()


def by_depth_svg(layers: pd.DataFrame, metric: str, baseline: pd.DataFrame | None = None,
                 band: tuple[float, float] | None = None, offending: set[str] = frozenset()) -> str:
    """A metric of every analysed layer in depth order; the baseline version in grey; a band."""
    ok = layers[(layers["status"] == "ok") & layers[metric].notna()] if metric in layers.columns else layers.iloc[:0]
    depth = np.arange(len(ok))
    values = ok[metric].to_numpy(dtype=float) if len(ok) else np.array([0.0])
    base = None
    if baseline is not None and metric in baseline.columns:
        base = baseline.set_index("name")[metric].reindex(ok["name"]).to_numpy(dtype=float)
    every = np.concatenate([values, base[np.isfinite(base)] if base is not None else [], list(band or [])])
    every = every[np.isfinite(every)]
    low, high = (every.min(), every.max()) if every.size else (0.0, 1.0)
    pad = (high - low) * 0.08 or 0.5
    chart = Chart(f"{metric} by depth", (-0.5, max(len(ok) - 0.5, 0.5)), (low - pad, high + pad),
                  x_label="layer (depth order)", y_label=metric)
    if band:
        chart.hband(*band, label=f"[{band[0]:g}, {band[1]:g}]")
    if base is not None:
        chart.line(depth, base, color=_BASE, width=1.5, dash="5 3", label="baseline")
    chart.line(depth, values, color=_OK, width=1.5, label="this version")
    chart.points(depth, values, [_BAD if n in offending else _OK for n in ok["name"]])
    return chart.to_svg()


def digits_svg(counts: list[int]) -> str:
    """Frequencies of first digits 1..9 against Benford's law."""
    total = sum(counts) or 1
    frequencies = [c / total for c in counts]
    chart = Chart("first significant digits", (0.5, 9.5), (0, max(max(frequencies), BENFORD.max()) * 1.15),
                  x_label="digit", y_label="frequency")
    chart.bars([d - 0.5 for d in range(1, 11)], frequencies)
    chart.line(list(range(1, 10)), BENFORD.tolist(), label="Benford log10(1 + 1/d)")
    return chart.to_svg()
