"""The report's pictures, drawn with matplotlib (SVG output, no pyplot and no display backend): the log-log ESD with the power
law fitted from xmin and the Marchenko-Pastur bulk edge, a metric by depth with the baseline
overlaid and offending layers marked, and first significant digits against Benford's law.

matplotlib is imported here only, and this module only when a report is written. Every artist is
clipped to its axes (matplotlib's default, asserted by the tests); artists carry ids (``gid``) so the
SVG can be checked. Tick labels are plain text (no mathtext: parsing it cost 3/4 of each figure).
"""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # a bare Figure renders through the SVG backend; pyplot is never used
from matplotlib.ticker import FuncFormatter, NullLocator

from gate.benford import BENFORD

_OK, _BAD, _BASE, _FIT, _XMIN, _MP = "#2e86c1", "#c0392b", "#444444", "#d35400", "#8e44ad", "#16a085"
_SIZE = (5.2, 3.3)
_RC = {"svg.fonttype": "none", "svg.hashsalt": "weightgate", "font.size": 8, "axes.titlesize": 9,
       "legend.fontsize": 7}
_PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def esd_svg(name: str, evals: np.ndarray, row: dict) -> str:
    """Log-log histogram (density) of the eigenvalues, the fitted power law from xmin, xmin and the
    Marchenko-Pastur bulk edge (when fitted)."""
    positive = evals[evals > 1e-12]
    low, high = positive.min(), positive.max()
    if not high > low:
        high = low * 10
    counts, edges = np.histogram(positive, bins=np.logspace(math.log10(low), math.log10(high), 41))
    density = counts / (np.diff(edges) * positive.size)
    shown = density[density > 0]
    figure, axes = _figure()
    axes.stairs(density, edges, fill=True, color="#aac7e8", gid="esd", label="ESD")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(shown.min() / 2, shown.max() * 2)
    alpha, xmin = row.get("alpha", math.nan), row.get("xmin", math.nan)
    if math.isfinite(alpha) and math.isfinite(xmin):
        tail_share = np.count_nonzero(positive >= xmin) / positive.size
        xs = np.logspace(math.log10(xmin), math.log10(high), 40)
        pdf = tail_share * (alpha - 1) / xmin * (xs / xmin) ** (-alpha)
        axes.plot(xs, pdf, color=_FIT, linewidth=1.8, gid="powerlaw-fit", label=f"power law α = {alpha:.2f}")
        axes.axvline(xmin, color=_XMIN, linestyle="--", linewidth=1.2, gid="xmin", label=f"xmin = {xmin:.3g}")
    bulk_max = row.get("bulk_max", math.nan)
    if isinstance(bulk_max, float) and math.isfinite(bulk_max):
        axes.axvline(bulk_max, color=_MP, linestyle=":", linewidth=1.5, gid="mp-bulk-edge", label="MP bulk edge")
    _plain_ticks(axes, both_log=True)
    axes.set(title=f"ESD {name}", xlabel="eigenvalue λ", ylabel="density")
    axes.legend(loc="lower left")
    return _svg(figure)


def by_depth_svg(layers: pd.DataFrame, metric: str, baseline: pd.DataFrame | None = None,
                 band: tuple[float, float] | None = None, offending: set[str] = frozenset()) -> str:
    """A metric of every analysed layer in depth order. The baseline is drawn above this version
    (dashed, hollow squares) so neither hides the other; offending layers get red crosses and
    their names."""
    ok = layers[(layers["status"] == "ok") & layers[metric].notna()] if metric in layers.columns else layers.iloc[:0]
    depth = np.arange(len(ok))
    values = ok[metric].to_numpy(dtype=float) if len(ok) else np.array([])  # no analysed layer: empty axes
    figure, axes = _figure()
    if band:
        axes.axhspan(*band, color="#d5f5e3", zorder=0, gid="band", label=f"[{band[0]:g}, {band[1]:g}]")
    axes.plot(depth, values, color=_OK, marker="o", markersize=3.5, linewidth=1.4, zorder=2, gid="current",
              label="this version")
    if baseline is not None and metric in baseline.columns:
        base = baseline.set_index("name")[metric].reindex(ok["name"]).to_numpy(dtype=float)
        axes.plot(depth, base, color=_BASE, linestyle="--", marker="s", markersize=4.5, markerfacecolor="none",
                  linewidth=1.1, zorder=3, gid="baseline", label="baseline")
    bad = ok["name"].isin(offending).to_numpy()
    if bad.any():
        axes.scatter(depth[bad], values[bad], marker="x", s=60, linewidths=2, color=_BAD, zorder=4, gid="offending",
                     label="offending")
        for x, y, name in zip(depth[bad][:6], values[bad][:6], ok["name"][bad][:6]):
            axes.annotate(name, (x, y), xytext=(4, 6), textcoords="offset points", fontsize=6, color=_BAD,
                          annotation_clip=True)
    axes.set_xlim(-0.5, max(len(ok) - 0.5, 0.5))
    axes.set(title=f"{metric} by depth", xlabel="layer (depth order)", ylabel=metric)
    axes.legend(loc="best" if len(ok) < 200 else "upper right")
    return _svg(figure)


def digits_svg(counts: list[int]) -> str:
    """Frequencies of first digits 1..9 against Benford's law."""
    total = sum(counts) or 1
    digits = np.arange(1, 10)
    figure, axes = _figure()
    axes.bar(digits, [c / total for c in counts], color="#aac7e8", gid="digits", label="weights")
    axes.plot(digits, BENFORD, color=_FIT, marker="o", markersize=3.5, gid="benford", label="Benford log10(1 + 1/d)")
    axes.set_xticks(digits)
    axes.set(title="first significant digits", xlabel="digit", ylabel="frequency")
    axes.legend(loc="upper right")
    return _svg(figure)


def _figure():
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=_SIZE)
        figure.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.15)
        return figure, figure.add_subplot()


def _plain_ticks(axes, both_log: bool = False) -> None:
    for axis in (axes.xaxis, axes.yaxis) if both_log else (axes.xaxis,):
        axis.set_major_formatter(_PLAIN)
        axis.set_minor_locator(NullLocator())  # minor ticks on log axes were a third of each chart's time


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context(_RC):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline in HTML: no XML declaration or DOCTYPE
