"""What changed against the baseline, layer by layer, in the units people use: cosine with the
baseline's weights, distance as a share of the baseline's norm, the largest singular value as a
factor of the baseline's (``x100``: the square root of the lambda_max ratio, since lambda_max is the
largest eigenvalue of W^T W), and the changes of stable rank and alpha.

:func:`against_baseline` builds the table from the two scans' layer tables and the per-layer pairs
``gate.check`` computes (cosine, relative distance; :func:`gate.compare.layer_distances`); the
report's layer table shows it, and :func:`layer_changes` keeps the rows of the layers failed rules
name in the decision record (``Decision.changes``), from which ``gate.summary`` words its phrases.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from gate.jsonvalues import metric_value
from gate.report.rules import plain_number
from gate.vocabulary import LayerStatus

# Columns of the side-by-side table beyond ``name``: this version's value, the baseline's, and the change.
SIDE_BY_SIDE = ("status", "reason", "cosine_similarity", "relative_distance", "sigma_max_ratio", "lambda_max", "baseline_lambda_max",
                "stable_rank", "baseline_stable_rank", "stable_rank_change", "alpha", "baseline_alpha",
                "alpha_change", "value_levels", "baseline_value_levels")
_TEXT = ("name", "status", "reason")
# The change a failed rule on a metric is best read by (the summary's lead phrase).
LEAD = {"log_spectral_norm": "sigma_max_ratio", "lambda_max": "sigma_max_ratio", "spectral_norm": "sigma_max_ratio",
        "sv_max": "sigma_max_ratio", "spectral_norm_peer_ratio": "sigma_max_ratio",
        "cosine_similarity": "cosine_similarity",
        "relative_distance": "relative_distance", "stable_rank": "stable_rank_change",
        "stable_rank_peer_ratio": "stable_rank_change", "alpha": "alpha_change", "alpha_weighted": "alpha_change",
        "coarse_grid": "value_levels", "value_levels": "value_levels"}


def against_baseline(layers: pd.DataFrame, baseline_layers: pd.DataFrame, pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per layer of ``layers`` that the baseline has (matched by name), in model order,
    with the columns of :data:`SIDE_BY_SIDE` (NaN where a side has no value)."""
    base = baseline_layers.drop_duplicates("name").set_index("name")
    here = layers.drop_duplicates("name").set_index("name")
    names = [name for name in here.index if name in base.index]
    here, base = here.reindex(names), base.reindex(names)
    reasons = here["reason"] if "reason" in here.columns else pd.Series("", index=here.index)
    table = pd.DataFrame({"name": names, "status": here["status"].astype(str).to_numpy(),
                          "reason": reasons.fillna("").astype(str).to_numpy()})

    def column(frame: pd.DataFrame, name: str) -> np.ndarray:
        return frame[name].to_numpy(dtype=float) if name in frame.columns else np.full(len(names), math.nan)

    with np.errstate(divide="ignore", invalid="ignore"):
        for metric in ("lambda_max", "stable_rank", "alpha", "value_levels"):
            table[metric], table[f"baseline_{metric}"] = column(here, metric), column(base, metric)
        table["sigma_max_ratio"] = np.sqrt(table["lambda_max"] / table["baseline_lambda_max"])
        table["stable_rank_change"] = table["stable_rank"] / table["baseline_stable_rank"] - 1
        table["alpha_change"] = table["alpha"] - table["baseline_alpha"]
    table = table.replace([np.inf, -np.inf], np.nan)
    for metric in ("cosine_similarity", "relative_distance"):
        by_name = pairs.drop_duplicates("name").set_index("name")[metric] if pairs is not None and len(pairs) else None
        table[metric] = table["name"].map(by_name).astype(float) if by_name is not None else math.nan
    return table[["name", *SIDE_BY_SIDE]]


def layer_changes(table: pd.DataFrame, names: list[str]) -> list[dict[str, Any]]:
    """The rows of ``table`` for ``names`` (in model order), as JSON-ready records (NaN -> None)."""
    wanted = set(names)
    return [{key: (value if key in _TEXT else metric_value(value)) for key, value in row.items()}
            for row in table.to_dict(orient="records") if row["name"] in wanted]


def change_words(change: dict[str, Any], lead: str | None, base: str) -> str:
    """A layer's change in words, the ``lead`` unit first (e.g. ``largest singular value x100 of
    v1's, cosine 1``); only the units that have a value."""
    words = {key: text for key in SIDE_BY_SIDE if (text := _unit_words(key, change, base))}
    first = [words.pop(lead)] if lead in words else []
    return ", ".join(first + list(words.values()))


def lead_words(change: dict[str, Any], metric: str, base: str) -> str:
    """The one unit a failed rule on ``metric`` is best read by ("" when it has none: the rule's own
    value says it best, e.g. "became random-like")."""
    lead = LEAD.get(metric)
    return _unit_words(lead, change, base) if lead else ""


def _unit_words(key: str, change: dict[str, Any], base: str) -> str:
    value = change.get(key)
    if key == "status":  # a layer the scan could not analyse: its reason says what is wrong with it
        return "" if value in (None, LayerStatus.OK, LayerStatus.SKIPPED) else f"{value}: {change.get('reason', '')}"
    if key in _TEXT:
        return ""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    if key == "cosine_similarity":
        return f"cosine {value:.2g} with {base}"
    if key == "relative_distance":
        return f"moved {value:.0%} of {base}'s norm"
    if key == "sigma_max_ratio":
        return f"largest singular value x{plain_number(value)} of {base}'s"
    if key == "stable_rank_change":
        moved = f"{value:+.0%}" if round(value * 100) else "unchanged"
        return f"stable rank {change['baseline_stable_rank']:.3g} -> {change['stable_rank']:.3g} ({moved})"
    if key == "alpha_change":
        return f"alpha {change['baseline_alpha']:.2f} -> {change['alpha']:.2f}"
    if key == "value_levels" and change.get("baseline_value_levels") not in (None, value):
        return f"{value:.0f} distinct values (were {change['baseline_value_levels']:.0f})"
    return ""
