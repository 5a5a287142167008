"""Readable terminal rendering of a scan: the layer table, then the summary."""

from __future__ import annotations

import math

from gate.result import ScanResult

_COLUMNS = ("name", "layer_type", "shape", "status", "alpha", "alpha_weighted", "log_spectral_norm",
            "stable_rank", "num_pl_spikes")


def render_scan_table(result: ScanResult) -> str:
    layers = result.layers
    header = [c for c in _COLUMNS if c in layers.columns] + ["note"]
    body = []
    for row in layers.to_dict(orient="records"):
        cells = [_cell(row.get(c)) for c in header[:-1]]
        cells.append(row.get("reason") or row.get("warning") or "")
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = [f"source: {result.source}", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body)
    lines.append("")
    lines.extend(f"{key}: {_cell(value)}" for key, value in result.summary.items())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)
