"""The outcome of a scan: a layer table (one row per matrix) and a model summary, with exports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gate.jsonvalues import json_value

# Column order of the layer table; metrics a scan did not compute are simply absent.
LEADING_COLUMNS = ["layer_id", "name", "layer_type", "shape", "status", "reason", "N", "M", "rf", "num_evals"]


class LayerTableExport:
    """JSON and CSV exports shared by results that hold a ``layers`` table (scan, compare)."""

    layers: pd.DataFrame

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        table = self.layers.copy()
        table["shape"] = table["shape"].map(lambda s: "x".join(str(d) for d in s))
        return table.to_csv(index=False)

    def _plain_layers(self) -> list[dict[str, Any]]:
        return [{key: json_value(value) for key, value in row.items()}
                for row in self.layers.to_dict(orient="records")]


@dataclass
class ScanResult(LayerTableExport):
    """``layers`` is a DataFrame (one row per matrix, skipped ones included with a reason)."""

    source: str
    layers: pd.DataFrame
    summary: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)  # eigenvalues by layer, with keep_spectra
    weights_sha256: str | None = None  # gate.scanning.fingerprint's hash of every tensor, from the scan's one read

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and infinities become ``null``, numpy scalars plain numbers."""
        return {
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "summary": {key: json_value(value) for key, value in self.summary.items()},
            "options": {key: json_value(value) for key, value in self.options.items()},
            "layers": self._plain_layers(),
        }

