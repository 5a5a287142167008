"""A minimal SVG chart: axes on linear or log10 scales, bars, lines, bands, markers and labels.

Why our own: the report must add little to a scan (at most 25% of MiniLM's scan time) and render
in MLflow's sandboxed artifact viewer with no external fetch; a plotting library costs ~0.1 s per
figure and a large import. Charts are plain SVG strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

_WIDTH, _HEIGHT = 480, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 16, 30, 44


class Chart:
    def __init__(self, title: str, x_range: tuple[float, float], y_range: tuple[float, float], *,
                 log_x: bool = False, log_y: bool = False, x_label: str = "", y_label: str = "",
                 width: int = _WIDTH, height: int = _HEIGHT) -> None:
        self.width, self.height = width, height
        self.log_x, self.log_y = log_x, log_y
        self.x0, self.x1 = self._scaled_range(x_range, log_x)
        self.y0, self.y1 = self._scaled_range(y_range, log_y)
        self.parts: list[str] = []
        self.title, self.x_label, self.y_label = title, x_label, y_label

    @staticmethod
    def _scaled_range(limits: tuple[float, float], log: bool) -> tuple[float, float]:
        low, high = (math.log10(v) for v in limits) if log else limits
        if not high > low:
            high = low + 1.0
        return low, high

    def px(self, x: float) -> float:
        value = math.log10(x) if self.log_x else x
        return _LEFT + (value - self.x0) / (self.x1 - self.x0) * (self.width - _LEFT - _RIGHT)

    def py(self, y: float) -> float:
        value = math.log10(y) if self.log_y else y
        return self.height - _BOTTOM - (value - self.y0) / (self.y1 - self.y0) * (self.height - _TOP - _BOTTOM)

    def bars(self, edges: Sequence[float], heights: Sequence[float], color: str = "#7aa6d8") -> None:
        base = self.height - _BOTTOM
        for left, right, h in zip(edges[:-1], edges[1:], heights):
            if h <= 0 and self.log_y:
                continue
            top = self.py(h)
            self.parts.append(f'<rect x="{self.px(left):.1f}" y="{top:.1f}" width="{max(self.px(right) - self.px(left), 0.5):.1f}" '
                              f'height="{max(base - top, 0):.1f}" fill="{color}"/>')

    def line(self, xs: Sequence[float], ys: Sequence[float], color: str = "#c0392b", width: float = 2,
             dash: str | None = None, label: str | None = None) -> None:
        points = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in zip(xs, ys)
                          if math.isfinite(x) and math.isfinite(y) and (not self.log_y or y > 0))
        if points:
            dashing = f' stroke-dasharray="{dash}"' if dash else ""
            self.parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="{width}"{dashing}/>')
        if label:
            self._legend(label, color)

    def points(self, xs: Sequence[float], ys: Sequence[float], colors: Sequence[str]) -> None:
        for x, y, color in zip(xs, ys, colors):
            if math.isfinite(y):
                self.parts.append(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="3" fill="{color}"/>')

    def vline(self, x: float, color: str, label: str) -> None:
        if not math.isfinite(x) or (self.log_x and x <= 0):
            return
        X = self.px(x)
        self.parts.append(f'<line x1="{X:.1f}" y1="{_TOP}" x2="{X:.1f}" y2="{self.height - _BOTTOM}" '
                          f'stroke="{color}" stroke-width="1.5" stroke-dasharray="4 3"/>')
        self._legend(label, color)

    def hband(self, low: float, high: float, color: str = "#d5f5e3", label: str | None = None) -> None:
        top, bottom = self.py(min(high, 10 ** self.y1 if self.log_y else self.y1)), self.py(max(low, 10 ** self.y0 if self.log_y else self.y0))
        self.parts.append(f'<rect x="{_LEFT}" y="{top:.1f}" width="{self.width - _LEFT - _RIGHT}" height="{max(bottom - top, 0):.1f}" fill="{color}"/>')
        if label:
            self._legend(label, "#27ae60")

    def _legend(self, label: str, color: str) -> None:
        index = sum(1 for p in self.parts if p.startswith("<!--legend-->"))
        y = _TOP + 12 + 14 * index
        self.parts.append(f'<!--legend--><text x="{self.width - _RIGHT - 4}" y="{y}" text-anchor="end" '
                          f'font-size="11" fill="{color}">{escape(label)}</text>')

    def to_svg(self) -> str:
        plot_bottom, plot_right = self.height - _BOTTOM, self.width - _RIGHT
        ticks = []
        for value in _ticks(self.x0, self.x1):
            X = _LEFT + (value - self.x0) / (self.x1 - self.x0) * (plot_right - _LEFT)
            ticks.append(f'<text x="{X:.1f}" y="{plot_bottom + 14}" text-anchor="middle" font-size="10">{_tick_label(value, self.log_x)}</text>')
        for value in _ticks(self.y0, self.y1):
            Y = plot_bottom - (value - self.y0) / (self.y1 - self.y0) * (plot_bottom - _TOP)
            ticks.append(f'<text x="{_LEFT - 4}" y="{Y + 3:.1f}" text-anchor="end" font-size="10">{_tick_label(value, self.log_y)}</text>')
        frame = (f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_right - _LEFT}" height="{plot_bottom - _TOP}" '
                 f'fill="none" stroke="#555"/>')
        labels = (f'<text x="{self.width / 2:.0f}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{escape(self.title)}</text>'
                  f'<text x="{(_LEFT + plot_right) / 2:.0f}" y="{self.height - 8}" text-anchor="middle" font-size="11">{escape(self.x_label)}</text>'
                  f'<text transform="translate(14 {(plot_bottom + _TOP) / 2:.0f}) rotate(-90)" text-anchor="middle" font-size="11">{escape(self.y_label)}</text>')
        body = "".join(p.removeprefix("<!--legend-->") for p in self.parts)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif">'
                f'<rect width="100%" height="100%" fill="white"/>{body}{frame}{"".join(ticks)}{labels}</svg>')


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10((high - low) / count))
    for multiple in (1, 2, 5, 10):
        if (high - low) / (step * multiple) <= count:
            step *= multiple
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _tick_label(value: float, log: bool) -> str:
    if log:
        return f"1e{value:g}" if abs(value - round(value)) < 1e-9 else f"{10 ** value:.2g}"
    return f"{value:g}"
