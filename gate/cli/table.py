"""Readable terminal rendering of layer tables (scan and compare) followed by their summary."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

SCAN_COLUMNS = ("name", "layer_type", "shape", "quantization", "status", "alpha", "alpha_weighted", "log_spectral_norm",
                "stable_rank", "mlh")
COMPARE_COLUMNS = ("name", "shape", "status", "euclidean_distance", "relative_distance", "cosine_similarity",
                   "delta_alpha", "delta_log_spectral_norm", "delta_stable_rank", "delta_mlh")


def render_table(heading: list[str], layers: pd.DataFrame, columns: tuple[str, ...], summary: dict[str, Any]) -> str:
    """Left-aligned columns (those present), a ``note`` column from reason/warning, then the summary."""
    header = [c for c in columns if c in layers.columns] + ["note"]
    body = []
    for row in layers.to_dict(orient="records"):
        cells = [_shape(row[c]) if c == "shape" else _cell(row.get(c)) for c in header[:-1]]
        cells.append(row.get("reason") or row.get("warning") or "")
        body.append(cells)
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    lines = list(heading)
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in body)
    lines.append("")
    lines.extend(f"{key}: {_cell(value)}" for key, value in summary.items())
    return "\n".join(lines)


def _shape(value: list[int]) -> str:
    return "x".join(str(v) for v in value)


def _cell(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)
