"""The report's pictures, drawn with matplotlib (SVG output, no pyplot and no display backend): the log-log ESD with the power
law fitted from xmin and the Marchenko-Pastur bulk edge, a metric by depth with the baseline
overlaid and offending layers marked, and first significant digits against Benford's law.

matplotlib is imported here only, and this module only when a report is written. Every artist is
clipped to its axes (matplotlib's default, asserted by the tests); artists carry ids (``gid``) so the
SVG can be checked. Tick labels are plain text (no mathtext: parsing it cost 3/4 of each figure).

Why the charts are objects kept for the process (:func:`report_charts`): building a matplotlib
figure (axes, and the tick objects its first save creates) cost about two thirds of each chart.
Each kind of chart is built once per process and only its data, limits and titles change per
chart, so a worker pays for building once, not for every registration. Legend boxes are avoided
where a line of text says the same: their layout was another third of a chart (matplotlib measures
every text again on each save). Draw only inside ``with charts.lock, chart_style():``.
"""

from __future__ import annotations

import io
import math
import threading
from functools import lru_cache

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # a bare Figure renders through the SVG backend; pyplot is never used
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from gate.metrics.benford import BENFORD
from gate.vocabulary import LayerStatus

_OK, _BAD, _BASE, _FIT, _XMIN, _MP = "#2e86c1", "#c0392b", "#444444", "#d35400", "#8e44ad", "#16a085"
_SIZE = (5.2, 3.3)
# axes.titley fixed: placing titles above tick labels automatically cost a tenth of each chart.
_RC = {"svg.fonttype": "none", "svg.hashsalt": "weightgate", "font.size": 8, "axes.titlesize": 9,
       "legend.fontsize": 7, "axes.titley": 1.01}
_PLAIN = FuncFormatter(lambda value, _: f"{value:g}")
# The ESD chart's key; the report's HTML repeats it above the charts, in the lines' colours.
ESD_KEY = ((_FIT, "solid: power law fitted from xmin"), (_XMIN, "dashed: xmin"), (_MP, "dotted: Marchenko-Pastur bulk edge"))
ESD_KEY_TEXT = " · ".join(text for _, text in ESD_KEY)


class EsdChart:
    """Log-log histogram (density) of a layer's eigenvalues, the power law fitted from xmin, xmin and
    the Marchenko-Pastur bulk edge (when fitted). The key is one line of text at the bottom right;
    alpha and xmin are in the title."""

    def __init__(self) -> None:
        self._figure, self._axes = _figure()
        axes = self._axes
        edges = np.logspace(0, 1, 41)
        self._esd = axes.stairs(np.ones(40), edges, fill=True, color="#aac7e8", gid="esd")
        (self._fit,) = axes.plot([1, 10], [1, 1], color=_FIT, linewidth=1.8, gid="powerlaw-fit")
        self._xmin = axes.axvline(1, color=_XMIN, linestyle="--", linewidth=1.2, gid="xmin")
        self._bulk_edge = axes.axvline(1, color=_MP, linestyle=":", linewidth=1.5, gid="mp-bulk-edge")
        axes.set_xscale("log")
        axes.set_yscale("log")
        _plain_ticks(axes, both_log=True, max_ticks=5)
        self._figure.subplots_adjust(top=0.86, bottom=0.2)  # a two-line title; the key below the axis label
        axes.set(xlabel="eigenvalue λ", ylabel="density", title=" ")
        self._figure.text(0.97, 0.015, ESD_KEY_TEXT, color="#555555", fontsize=7, ha="right", va="bottom", gid="key")

    def svg(self, name: str, evals: np.ndarray, row: dict) -> str:
        """The chart of one layer: ``evals`` its eigenvalues, ``row`` its scan row (alpha, xmin, bulk_max)."""
        positive = evals[evals > 1e-12]
        low, high = positive.min(), positive.max()
        if not high > low:
            high = low * 10
        counts, edges = np.histogram(positive, bins=np.logspace(math.log10(low), math.log10(high), 41))
        density = counts / (np.diff(edges) * positive.size)
        shown = density[density > 0]
        self._esd.set_data(density, edges)
        self._axes.set_xlim(low, high)
        self._axes.set_ylim(shown.min() / 2, shown.max() * 2)
        alpha, xmin = row.get("alpha", math.nan), row.get("xmin", math.nan)
        fitted = math.isfinite(alpha) and math.isfinite(xmin)
        if fitted:
            tail_share = np.count_nonzero(positive >= xmin) / positive.size
            xs = np.logspace(math.log10(xmin), math.log10(high), 40)
            self._fit.set_data(xs, tail_share * (alpha - 1) / xmin * (xs / xmin) ** (-alpha))
            self._xmin.set_xdata([xmin, xmin])
        self._fit.set_visible(fitted)
        self._xmin.set_visible(fitted)
        bulk_max = row.get("bulk_max", math.nan)
        has_edge = isinstance(bulk_max, float) and math.isfinite(bulk_max)
        if has_edge:
            self._bulk_edge.set_xdata([bulk_max, bulk_max])
        self._bulk_edge.set_visible(has_edge)
        fit_text = f"α = {alpha:.2f} from xmin = {xmin:.3g}" if fitted else "no power-law fit"
        self._axes.title.set_text(f"ESD {name}\n{fit_text}")  # keeps the font set under _RC
        return _svg(self._figure)


class DepthChart:
    """A metric of every analysed layer in depth order. The baseline is drawn above this version
    (dashed, hollow squares) so neither hides the other; offending layers get red crosses and
    their names."""

    def __init__(self) -> None:
        self._figure, self._axes = _figure()
        axes = self._axes
        (self._current,) = axes.plot([], [], color=_OK, marker="o", markersize=3.5, linewidth=1.4, zorder=2,
                                     gid="current", label="this version")
        (self._baseline,) = axes.plot([], [], color=_BASE, linestyle="--", marker="s", markersize=4.5,
                                      markerfacecolor="none", linewidth=1.1, zorder=3, gid="baseline", label="baseline")
        self._offending = axes.scatter([], [], marker="x", s=60, linewidths=2, color=_BAD, zorder=4, gid="offending",
                                       label="offending")
        axes.xaxis.set_major_locator(MaxNLocator(6, integer=True))  # few tick labels: text is most of a chart
        axes.yaxis.set_major_locator(MaxNLocator(5))
        axes.set(xlabel="layer (depth order)", title=" ")
        self._per_chart: list = []  # the band and the name labels of the chart drawn last

    def svg(self, layers: pd.DataFrame, metric: str, baseline: pd.DataFrame | None = None,
            band: tuple[float, float] | None = None, offending: set[str] = frozenset()) -> str:
        """The chart of ``metric``; ``band`` shades a range, ``offending`` names layers to mark."""
        axes = self._axes
        for artist in self._per_chart:
            artist.remove()
        self._per_chart = []
        ok = layers[(layers["status"] == LayerStatus.OK) & layers[metric].notna()] if metric in layers.columns else layers.iloc[:0]
        depth = np.arange(len(ok))
        values = ok[metric].to_numpy(dtype=float) if len(ok) else np.array([])  # no analysed layer: empty axes
        self._current.set_data(depth, values)
        shown = [self._current]
        has_baseline = baseline is not None and metric in baseline.columns
        if has_baseline:
            self._baseline.set_data(depth, baseline.set_index("name")[metric].reindex(ok["name"]).to_numpy(dtype=float))
            shown.append(self._baseline)
        self._baseline.set_visible(has_baseline)
        bad = ok["name"].isin(offending).to_numpy()
        self._offending.set_offsets(np.column_stack([depth[bad], values[bad]]))
        self._offending.set_visible(bool(bad.any()))
        if band:
            patch = axes.axhspan(*band, color="#d5f5e3", zorder=0, gid="band", label=f"[{band[0]:g}, {band[1]:g}]")
            self._per_chart.append(patch)
            shown.insert(0, patch)
        if bad.any():
            shown.append(self._offending)
            for x, y, name in zip(depth[bad][:6], values[bad][:6], ok["name"][bad][:6]):
                self._per_chart.append(axes.annotate(name, (x, y), xytext=(4, 6), textcoords="offset points",
                                                     fontsize=6, color=_BAD, annotation_clip=True))
        axes.relim(visible_only=True)
        axes.autoscale_view()
        if not len(ok) and not band:
            axes.set_ylim(0, 1)
        axes.set_xlim(-0.5, max(len(ok) - 0.5, 0.5))
        axes.set_ylabel(metric)
        axes.title.set_text(f"{metric} by depth")
        axes.legend(handles=shown, loc="best" if len(ok) < 200 else "upper right")
        return _svg(self._figure)


class DigitsChart:
    """Frequencies of first digits 1..9 (bars) against Benford's law (line), said in the title."""

    def __init__(self) -> None:
        self._figure, axes = _figure()
        digits = np.arange(1, 10)
        self._bars = axes.bar(digits, np.zeros(9), color="#aac7e8", gid="digits")
        axes.plot(digits, BENFORD, color=_FIT, marker="o", markersize=3.5, gid="benford")
        axes.set_xticks(digits)
        axes.yaxis.set_major_locator(MaxNLocator(5))
        axes.set(title="first significant digits: weights (bars), Benford log10(1 + 1/d) (line)", xlabel="digit",
                 ylabel="frequency")
        self._axes = axes

    def svg(self, counts: list[int]) -> str:
        total = sum(counts) or 1
        frequencies = [c / total for c in counts]
        for bar, frequency in zip(self._bars, frequencies):
            bar.set_height(frequency)
        # Benford's largest frequency is 0.30: the axis stays at 0.5 unless a digit is off the law above it
        self._axes.set_ylim(0, max(0.5, max(frequencies) * 1.05))
        return _svg(self._figure)


class ReportCharts:
    """One chart of each kind, redrawn for every report of the process (module docstring); ``lock``
    keeps two threads from drawing on the same figures at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        with chart_style():
            self.depth = DepthChart()
            self.digits = DigitsChart()
            self.esd = EsdChart()


@lru_cache(maxsize=1)
def report_charts() -> ReportCharts:
    """The process's charts, built on first use."""
    return ReportCharts()


def chart_style():
    """The report's matplotlib settings; every chart is built and drawn inside it (one context per
    report: entering one copies all of matplotlib's settings, a few ms each time)."""
    return matplotlib.rc_context(_RC)


def _figure():
    figure = Figure(figsize=_SIZE)
    figure.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.15)
    return figure, figure.add_subplot()


def _plain_ticks(axes, both_log: bool = False, max_ticks: int | None = None) -> None:
    for axis in (axes.xaxis, axes.yaxis) if both_log else (axes.xaxis,):
        axis.set_major_formatter(_PLAIN)
        axis.set_minor_locator(NullLocator())  # minor ticks on log axes were a third of each chart's time
        if max_ticks:  # each tick label is text to lay out: the largest remaining cost of a chart
            axis.set_major_locator(LogLocator(numticks=max_ticks))


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline in HTML: no XML declaration or DOCTYPE
