"""Model-level summary of a layer table: WeightWatcher's get_summary means plus our own counts."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gate.layers.kinds import NON_MATRIX_KINDS, tensor_kind
from gate.metrics.value_grid import MASK_REASON
from gate.sources.base import TensorInfo
from gate.vocabulary import LayerStatus, WeightProblem

# The means WeightWatcher 0.7.7's get_summary() reports, over analysed layers.
WW_SUMMARY_METRICS = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm",
                      "stable_rank", "mp_softrank")


def summarize(layers: pd.DataFrame) -> dict[str, Any]:
    """Means over layers with status ``ok`` and counts of every status and warning."""
    analysed = layers[layers["status"] == LayerStatus.OK] if len(layers) else layers
    summary: dict[str, Any] = {}
    for metric in WW_SUMMARY_METRICS:
        if metric in analysed.columns:
            summary[metric] = float(analysed[metric].mean()) if len(analysed) else float("nan")
    summary["num_layers"] = int(len(layers))
    for status in LayerStatus:
        key = "num_analysed" if status == LayerStatus.OK else f"num_{status}"
        summary[key] = int((layers["status"] == status).sum()) if len(layers) else 0
    if "warning" in analysed.columns:
        summary["num_over_trained"] = int((analysed["warning"] == "over-trained").sum())
        summary["num_under_trained"] = int((analysed["warning"] == "under-trained").sum())
    if "alpha" in analysed.columns and len(analysed):
        in_band = analysed["alpha"].between(2.0, 4.0)
        summary["fraction_alpha_in_2_4"] = float(in_band.mean())
    problems = layers["weight_problem"] if "weight_problem" in layers.columns else pd.Series(dtype=object)
    summary["num_all_zero"] = int((problems == WeightProblem.ALL_ZERO).sum())
    judged, _, share = judged_evidence(layers, "random_like")
    summary["random_like_judged"], summary["random_like_judged_share"] = judged, share
    return summary


def judged_evidence(layers: pd.DataFrame, column: str) -> tuple[int, int, float]:
    """How much of a model a per-layer verdict covers: (layers judged, weight layers in the model,
    share of the model's weights in the judged layers). Judged: analysed rows (status ``ok``) whose
    ``column`` has a value. Weight layers: every row but mask buffers (gate.metrics.value_grid), so
    skipped, non-finite and unreadable layers count as not judged. The share is NaN for a model
    without weight layers."""
    weights = layers[layers["reason"] != MASK_REASON] if len(layers) else layers
    if not len(weights):
        return 0, 0, float("nan")
    judged = (weights["status"] == LayerStatus.OK)
    judged &= weights[column].notna() if column in weights.columns else False
    sizes = weights["num_weights"].astype(float) if "num_weights" in weights.columns else pd.Series(1.0, index=weights.index)
    total = float(sizes.sum())
    return int(judged.sum()), int(len(weights)), float(sizes[judged].sum() / total) if total > 0 else float("nan")


def tensor_counts(infos: list[TensorInfo]) -> dict[str, int]:
    """How every tensor of the source is accounted for: ``num_tensors`` in all, ``num_matrix_tensors``
    with one or more rows in the layer table, and the rest by kind (``num_vector``, ``num_scalar``,
    ``num_integer_buffer``, ``num_quantization_part``, ``num_optimizer_state``; see
    :data:`gate.layers.kinds.NON_MATRIX_KINDS`).
    The counts add up to ``num_tensors``: no tensor is left out without being counted."""
    by_name = {info.name: info for info in infos}
    kinds = [tensor_kind(info, by_name) for info in infos]
    counts = {"num_tensors": len(infos), "num_matrix_tensors": sum(kind is None for kind in kinds)}
    counts.update({f"num_{kind}": kinds.count(kind) for kind in NON_MATRIX_KINDS})
    return counts
