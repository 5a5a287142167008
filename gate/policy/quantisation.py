"""A descendant stored on integer grids its baseline is not on: which grid, and how far it moved the
weights (``4-bit per-channel quantisation of v1, weights moved 14%``).

The grids come from the scans (gate.metrics.quant_grid: ``grid_bits``, ``grid_scope`` per layer), the
distances from the layer pairs (gate.compare.layer_distances). The layers counted are the ones on a
grid in the model and on none in the baseline: a baseline that was already quantised the same way
is no change. Their ``quantisation_error`` (relative distance ||A - B|| / ||B||) is what a policy
judges; this module names the whole.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import pandas as pd

from gate.scanning.result import ScanResult
from gate.vocabulary import LayerStatus

_SCOPE_WORDS = {"tensor": "per-tensor", "channel": "per-channel"}


def newly_quantised(scan: ScanResult, baseline: ScanResult) -> pd.Series:
    """Names of the model's layers on an integer grid whose baseline layer is on none (a boolean Series
    indexed by name)."""
    if "grid_bits" not in scan.layers.columns:
        return pd.Series(dtype=bool)
    mine = scan.layers.set_index("name")["grid_bits"]
    theirs = baseline.layers.set_index("name")["grid_bits"] if "grid_bits" in baseline.layers.columns \
        else pd.Series(math.nan, index=baseline.layers["name"])
    shared = mine.index.intersection(theirs.index)
    return mine[shared].notna() & theirs[shared].isna()


def quantisation_finding(scan: ScanResult, baseline: ScanResult | None, pairs: pd.DataFrame | None) -> str | None:
    """``4-bit per-channel quantisation of <baseline>, weights moved 14% (38 of 39 layers)``, or None
    when no layer moved onto an integer grid (or without a baseline and its layer pairs)."""
    if baseline is None or pairs is None or pairs.empty:
        return None
    flags = newly_quantised(scan, baseline)
    names = set(flags[flags].index)
    if not names:
        return None
    layers = scan.layers.set_index("name").loc[sorted(names)]
    bits = Counter(int(b) for b in layers["grid_bits"]).most_common(1)[0][0]
    scope = Counter(layers["grid_scope"]).most_common(1)[0][0]
    scheme = _SCOPE_WORDS.get(scope) or f"group-wise ({scope.removeprefix('group')} weights)"
    moved = _moved(pairs[pairs["name"].isin(names) & (pairs["status"] == LayerStatus.OK)])
    matched = int((pairs["status"] == LayerStatus.OK).sum())
    moved_text = f", weights moved {moved:.1%}" if math.isfinite(moved) else ""
    return f"{bits}-bit {scheme} quantisation of {version_label(baseline.source)}{moved_text} ({len(names)} of {matched} layers)"


def _moved(pairs: pd.DataFrame) -> float:
    """||A - B|| / ||B|| over the layers together (each layer's ||B|| is its distance / relative distance)."""
    usable = pairs[(pairs["relative_distance"] > 0) & pairs["euclidean_distance"].notna()]
    if usable.empty:
        return 0.0 if len(pairs) else math.nan
    distance_sq = float((usable["euclidean_distance"] ** 2).sum())
    norm_sq = float(((usable["euclidean_distance"] / usable["relative_distance"]) ** 2).sum())
    return math.sqrt(distance_sq / norm_sq)


def version_label(source: str) -> str:
    """How a reader names a baseline: ``models:/name/3`` -> ``v3``; a path -> its file name."""
    match = re.fullmatch(r"models:/[^@]+/(\d+)", source)
    return f"v{match.group(1)}" if match else source.rstrip("/").rsplit("/", 1)[-1]
