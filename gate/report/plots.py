"""The report's pictures, drawn with matplotlib (SVG output, no pyplot and no display backend): the log-log ESD with the power
law fitted from xmin, the Marchenko-Pastur edge and the baseline's spectrum, a metric by depth with
the baseline overlaid and offending layers marked and named, and first significant digits against
Benford's law. Text is at least 8 pt (10.7 px at the report's size), names stay inside the frame
and do not overlap, and log axes get at least 3 labelled ticks.

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
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullLocator

from gate.metrics.benford import BENFORD
from gate.vocabulary import LayerStatus

_OK, _BAD, _BASE, _FIT, _XMIN, _MP = "#2e86c1", "#c0392b", "#444444", "#d35400", "#8e44ad", "#16a085"
_BARS = "#aac7e8"
_SIZE = (5.2, 3.6)  # inches: 374 pt wide, which the report shows 500 px wide (1 pt = 1.34 px there)
# The smallest text is 8 pt, 10.7 px at the report's size (tests/test_browser_charts.py measures it in Chromium).
# axes.titley fixed: placing titles above tick labels automatically cost a tenth of each chart.
_RC = {"svg.fonttype": "none", "svg.hashsalt": "weightgate", "font.size": 8, "axes.titlesize": 9,
       "legend.fontsize": 8, "axes.titley": 1.01}
_FONT_PT = 8
_CHAR_EM = 0.62  # DejaVu Sans' widest lower-case average, in em: how wide a label is before it is drawn
_PLAIN = FuncFormatter(lambda value, _: f"{value:g}")
_MORE_TICKS = ((1.0,), (1.0, 2.0, 5.0), tuple(float(d) for d in range(1, 10)))
NAMED_OFFENDERS = 4  # offending layers named on a depth chart; the report lists the rest under the charts
_NAME_TOP, _NAME_ROW = 0.97, 0.085  # the names' rows, in axes fractions: 13 pt apart for 8 pt text


class EsdChart:
    """Log-log histogram (density) of a layer's eigenvalues, the power law fitted from xmin, xmin, the
    Marchenko-Pastur edge of i.i.d. weights with the layer's variance (``mp_edge``, or the fitted
    ``bulk_max`` of ``mp_fit``) and, for an offending layer, the baseline's spectrum as an outline.
    The key under the axes names exactly the lines the chart draws, in their colours; alpha and
    xmin are in the title."""

    def __init__(self) -> None:
        self._figure, self._axes = _figure()
        axes = self._axes
        edges = np.logspace(0, 1, 41)
        self._esd = axes.stairs(np.ones(40), edges, fill=True, color=_BARS, gid="esd")
        self._base_esd = axes.stairs(np.ones(40), edges, fill=False, color=_BASE, linewidth=1.2, gid="baseline-esd")
        (self._fit,) = axes.plot([1, 10], [1, 1], color=_FIT, linewidth=1.8, gid="powerlaw-fit")
        self._xmin = axes.axvline(1, color=_XMIN, linestyle="--", linewidth=1.2, gid="xmin")
        self._bulk_edge = axes.axvline(1, color=_MP, linestyle=":", linewidth=1.5, gid="mp-bulk-edge")
        axes.set_xscale("log")
        axes.set_yscale("log")
        _plain_ticks(axes, both_log=True)
        self._figure.subplots_adjust(top=0.87, bottom=0.28)  # a two-line title; the key below the axis label
        axes.set(xlabel="eigenvalue λ", ylabel="density", title=" ")
        # The key: two rows of two, filled in this order with what a chart draws (gid key-0 ... key-3).
        self._key = [self._figure.text(0.02 + 0.5 * (k % 2), 0.075 - 0.055 * (k // 2), "", fontsize=_FONT_PT,
                                       ha="left", va="bottom", gid=f"key-{k}") for k in range(4)]

    def svg(self, name: str, evals: np.ndarray, row: dict, baseline_evals: np.ndarray | None = None) -> str:
        """The chart of one layer: ``evals`` its eigenvalues, ``row`` its scan row (alpha, xmin,
        mp_edge); ``baseline_evals``: the baseline's eigenvalues of the same layer, drawn as an outline."""
        positive = evals[evals > 1e-12]
        base = baseline_evals[baseline_evals > 1e-12] if baseline_evals is not None else np.array([])
        both = np.concatenate([positive, base])
        low, high = both.min(), both.max()
        if not high > low:
            high = low * 10
        bins = np.logspace(math.log10(low), math.log10(high), 41)
        density = _density(positive, bins)
        self._esd.set_data(density, bins)
        shown = [density[density > 0]]
        key = []
        if base.size:
            base_density = _density(base, bins)
            self._base_esd.set_data(base_density, bins)
            shown.append(base_density[base_density > 0])
            key.append((_BASE, "outline: the baseline's density"))
        self._base_esd.set_visible(bool(base.size))
        shown_values = np.concatenate(shown)
        self._axes.set_xlim(low, high)
        self._axes.set_ylim(shown_values.min() / 2, shown_values.max() * 2)
        _log_ticks(self._axes.xaxis, low, high)
        _log_ticks(self._axes.yaxis, shown_values.min() / 2, shown_values.max() * 2)
        alpha, xmin = row.get("alpha", math.nan), row.get("xmin", math.nan)
        fitted = _finite(alpha) and _finite(xmin)
        if fitted:
            tail_share = np.count_nonzero(positive >= xmin) / positive.size
            xs = np.logspace(math.log10(xmin), math.log10(positive.max()), 40)
            self._fit.set_data(xs, tail_share * (alpha - 1) / xmin * (xs / xmin) ** (-alpha))
            self._xmin.set_xdata([xmin, xmin])
            key += [(_FIT, "solid: power law from xmin"), (_XMIN, "dashed: xmin")]
        self._fit.set_visible(fitted)
        self._xmin.set_visible(fitted)
        edge = row.get("mp_edge", math.nan) if _finite(row.get("mp_edge")) else row.get("bulk_max", math.nan)
        has_edge = _finite(edge)
        if has_edge:
            self._bulk_edge.set_xdata([edge, edge])
            key.append((_MP, "dotted: Marchenko-Pastur edge"))
        self._bulk_edge.set_visible(has_edge)
        for text, (colour, words) in zip(self._key, key):
            text.set_text(words)
            text.set_color(colour)
        for k, text in enumerate(self._key):
            text.set_visible(k < len(key))
        fit_text = f"α = {alpha:.2f} from xmin = {xmin:.3g}" if fitted else "no power-law fit"
        title = _fit_width(f"ESD {name}", self._figure.get_figwidth() * 72, 9)
        self._axes.title.set_text(f"{title}\n{fit_text}")  # keeps the font set under _RC
        return _svg(self._figure)


class DepthChart:
    """A metric of every analysed layer in depth order. The baseline is drawn above this version
    (dashed, hollow squares) so neither hides the other; offending layers get red crosses, and the
    first :data:`NAMED_OFFENDERS` of them their names, each on a row of its own at the top of the axes
    with a line to its cross, placed so that no name overlaps another or leaves the frame; the
    others are in ``unlabelled`` after each chart, for the report to list. The legend is a row
    under the axes."""

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
        self._figure.subplots_adjust(bottom=0.25)
        self._per_chart: list = []  # the band and the name labels of the chart drawn last
        self.unlabelled: list[str] = []

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
        axes.relim(visible_only=True)
        axes.autoscale(True)  # the last chart's limits were set by hand
        axes.autoscale_view()
        if not len(ok) and not band:
            axes.set_ylim(0, 1)
        axes.set_xlim(-0.5, max(len(ok) - 0.5, 0.5))
        named = min(int(bad.sum()), NAMED_OFFENDERS)
        if named:  # room above the data for the names' rows: the data keeps the axes below the last row
            low, high = axes.get_ylim()
            data_share = _NAME_TOP - _NAME_ROW * named - 0.03
            axes.set_ylim(low, low + (high - low) / data_share)
        names = ok["name"].to_numpy()[bad]
        self._per_chart += self._name_offenders(depth[bad][:NAMED_OFFENDERS], values[bad][:NAMED_OFFENDERS],
                                                names[:NAMED_OFFENDERS])
        self.unlabelled = [str(name) for name in names[NAMED_OFFENDERS:]]
        if self.unlabelled:
            self._per_chart.append(self._figure.text(0.97, 0.015, f"+{len(self.unlabelled)} more offending, "
                                                     "not named here (listed in the report)", color=_BAD,
                                                     fontsize=_FONT_PT, ha="right", va="bottom", gid="more-offending"))
        axes.set_ylabel(metric)
        axes.title.set_text(f"{metric} by depth")
        axes.legend(handles=shown, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=len(shown), frameon=False,
                    borderaxespad=0, handlelength=1.6, columnspacing=1.2)
        return _svg(self._figure)

    def _name_offenders(self, xs: np.ndarray, ys: np.ndarray, names: np.ndarray) -> list:
        """One name per row from the top of the axes down, shifted left or right to stay inside
        the axes, with a line to its cross."""
        axes = self._axes
        width_pt = self._figure.get_figwidth() * 72 * (self._figure.subplotpars.right - self._figure.subplotpars.left)
        x_low, x_high = axes.get_xlim()
        labels = []
        for row, (x, y, name) in enumerate(zip(xs, ys, names)):
            text = _fit_width(str(name), width_pt * 0.98, _FONT_PT)
            share = _text_width(text, _FONT_PT) / width_pt
            at = (x - x_low) / (x_high - x_low)
            left = min(max(at - share / 2, 0.01), 0.99 - share)
            labels.append(axes.annotate(text, (x, y), xytext=(left, _NAME_TOP - _NAME_ROW * row), textcoords="axes fraction",
                                        ha="left", va="top", fontsize=_FONT_PT, color=_BAD, gid=f"offender-{row}",
                                        annotation_clip=False, zorder=5,
                                        # drawn in row order on white: a lower name covers the lines above it
                                        bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none"},
                                        arrowprops={"arrowstyle": "-", "color": _BAD, "linewidth": 0.6,
                                                    "shrinkA": 1, "shrinkB": 4}))
        return labels


class DigitsChart:
    """Frequencies of first digits 1..9 (bars) against Benford's law (line), said in the title."""

    def __init__(self) -> None:
        self._figure, axes = _figure()
        digits = np.arange(1, 10)
        self._bars = axes.bar(digits, np.zeros(9), color="#aac7e8", gid="digits")
        axes.plot(digits, BENFORD, color=_FIT, marker="o", markersize=3.5, gid="benford")
        axes.set_xticks(digits)
        axes.yaxis.set_major_locator(MaxNLocator(5))
        axes.set(title="first significant digits of the weights (bars)\nagainst Benford's law log10(1 + 1/d) (line)",
                 xlabel="digit", ylabel="frequency")
        self._figure.subplots_adjust(top=0.86)
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


def _plain_ticks(axes, both_log: bool = False) -> None:
    for axis in (axes.xaxis, axes.yaxis) if both_log else (axes.xaxis,):
        axis.set_major_formatter(_PLAIN)
        axis.set_minor_locator(NullLocator())  # minor ticks on log axes were a third of each chart's time


def _log_ticks(axis, low: float, high: float, most: int = 6) -> None:
    """At least 3 labelled ticks on a log axis over [low, high], at most ``most``: decades when the
    range spans enough of them, else 1-2-5 steps, else every digit, else evenly spaced round values
    (a range within one digit step)."""
    for subs in _MORE_TICKS:
        ticks = LogLocator(base=10, subs=subs, numticks=most + 1).tick_values(low, high)
        inside = ticks[(ticks >= low) & (ticks <= high)]
        if 3 <= len(inside) <= most:
            axis.set_major_locator(FixedLocator(inside))
            return
    ticks = MaxNLocator(4).tick_values(low, high)
    axis.set_major_locator(FixedLocator(ticks[(ticks >= low) & (ticks <= high)]))


def _density(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    counts, edges = np.histogram(values, bins=bins)
    return counts / (np.diff(edges) * max(values.size, 1))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _text_width(text: str, size_pt: float) -> float:
    return len(text) * _CHAR_EM * size_pt


def _fit_width(text: str, width_pt: float, size_pt: float) -> str:
    """``text``, or its middle replaced by an ellipsis where it would be wider than ``width_pt``
    (the full name is in the report's tables and the chart's file name)."""
    fits = int(width_pt / (_CHAR_EM * size_pt))
    if len(text) <= fits:
        return text
    keep = fits - 1
    return text[:keep // 2] + "…" + text[len(text) - (keep - keep // 2):]


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline in HTML: no XML declaration or DOCTYPE
