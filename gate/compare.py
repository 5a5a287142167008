"""Distance between the weights of two models (versions), layer by layer, both streamed.

Following 002_624a397218750fd1.txt, the Euclidean distance between two weight states measures how
much was learned between them: zero means no training happened, a distance comparable to the
weights' own norm with no correlation means a layer was re-initialised. Spectral and Benford
metrics of both sides are compared too (deltas are A - B: B is the reference, e.g. the baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import pandas as pd
import torch

from gate.layers import LayerPlan, PlanOptions, layer_matrices, plan_layers
from gate.result import LayerTableExport, plain_json_value
from gate.scanner import scan
from gate.sources import WeightSource, open_source
from gate.spectrum import resolve_device

DELTA_METRICS = ("alpha", "log_spectral_norm", "stable_rank", "mlh")
REINIT_COSINE = 0.1  # |cosine| below this: the layer no longer resembles its reference


@dataclass
class CompareResult(LayerTableExport):
    """``layers``: one row per layer present in both (matched by name and shape)."""

    a: str
    b: str
    layers: pd.DataFrame
    summary: dict[str, Any]
    init: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "init": self.init,
            "summary": {k: plain_json_value(v) for k, v in self.summary.items()},
            "options": {k: plain_json_value(v) for k, v in self.options.items()},
            "layers": self._plain_layers(),
        }


def compare(a: Any, b: Any, *, init: Any = None, changed_threshold: float = 0.5, device: str = "auto",
            allow_pickle: bool = False, tracking_uri: str | None = None) -> CompareResult:
    """Compare model ``a`` with reference ``b`` (and with ``init``, its initialisation, if given).

    ``changed_threshold``: a layer whose relative distance ||A-B|| / ||B|| exceeds it is listed in
    ``changed_layers``.
    """
    from gate.errors import GateInputError

    if not changed_threshold > 0:
        raise GateInputError(f"changed_threshold must be > 0, not {changed_threshold}")
    torch_device = resolve_device(device)
    opened = dict(allow_pickle=allow_pickle, tracking_uri=tracking_uri)
    with open_source(a, **opened) as source_a, open_source(b, **opened) as source_b:
        scan_a = scan(source_a, device=device)
        scan_b = scan(source_b, device=device)
        rows, unmatched = _distances(source_a, source_b, torch_device)
        init_rows: dict[str, dict[str, float]] = {}
        init_description = None
        if init is not None:
            with open_source(init, **opened) as source_init:
                init_description = source_init.description
                init_rows = {row["name"]: row for row in _distances(source_a, source_init, torch_device)[0]}
        description_a, description_b = source_a.description, source_b.description
    layers = pd.DataFrame(rows)
    if layers.empty:
        raise GateInputError(f"{description_a} and {description_b} have no layer in common (matched by name and shape)")
    metrics_a = scan_a.layers.set_index("name")
    metrics_b = scan_b.layers.set_index("name")
    for metric in DELTA_METRICS:
        if metric in metrics_a.columns and metric in metrics_b.columns:
            layers[f"delta_{metric}"] = [metrics_a.at[n, metric] - metrics_b.at[n, metric] for n in layers["name"]]
    if init_rows:
        layers["init_distance"] = [init_rows.get(n, {}).get("euclidean_distance", math.nan) for n in layers["name"]]
        layers["init_relative_distance"] = [init_rows.get(n, {}).get("relative_distance", math.nan) for n in layers["name"]]
    summary = _summary(layers, unmatched, changed_threshold, scan_a.summary, scan_b.summary)
    return CompareResult(description_a, description_b, layers, summary, init_description,
                         {"changed_threshold": changed_threshold, "device": torch_device.type})


def layer_distances(source_a: WeightSource, source_b: WeightSource, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Per layer of ``source_a`` matched in ``source_b``: status, Euclidean and relative distance,
    cosine similarity (the policy's baseline rules read these)."""
    rows, _ = _distances(source_a, source_b, resolve_device(device) if isinstance(device, str) else device)
    table = pd.DataFrame(rows, columns=["name", "shape", "status", "euclidean_distance", "relative_distance",
                                        "cosine_similarity", "_diff_sq", "_dot", "_norm_a_sq", "_norm_b_sq"])
    return table.drop(columns=["_diff_sq", "_dot", "_norm_a_sq", "_norm_b_sq"])


def _distances(source_a: WeightSource, source_b: WeightSource, device: torch.device
               ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Per matched layer: Euclidean and relative distance, cosine similarity, and the squared norms
    needed for model totals. Tensors are loaded one pair at a time."""
    plans_a = plan_layers(source_a.tensor_infos(), PlanOptions(min_evals=1))
    plans_b = {plan.name: plan for plan in plan_layers(source_b.tensor_infos(), PlanOptions(min_evals=1))}
    unmatched: dict[str, list[str]] = {"only_in_a": [], "only_in_b": [], "shape_mismatch": []}
    names_a = {plan.name for plan in plans_a}
    unmatched["only_in_b"] = sorted(name for name in plans_b if name not in names_a)
    rows = []
    for tensor_name, group in groupby(plans_a, key=lambda p: p.tensor_name):
        group = list(group)
        matched = [(plan, plans_b.get(plan.name)) for plan in group]
        pairs = []
        for plan, other in matched:
            if other is None:
                unmatched["only_in_a"].append(plan.name)
            elif other.shape != plan.shape:
                unmatched["shape_mismatch"].append(plan.name)
            else:
                pairs.append((plan, other))
        if not pairs:
            continue
        tensor_a = source_a.load(tensor_name).to(device)
        tensor_b = source_b.load(pairs[0][1].tensor_name).to(device)
        rows.extend(_pair_row(plan, tensor_a, tensor_b) for plan, _ in pairs)
    return rows, unmatched


def _pair_row(plan: LayerPlan, tensor_a: torch.Tensor, tensor_b: torch.Tensor) -> dict[str, Any]:
    diff_sq = dot = norm_a_sq = norm_b_sq = 0.0
    for a, b in zip(layer_matrices(plan, tensor_a), layer_matrices(plan, tensor_b)):
        # float32 element-wise (a - b is exactly zero only where a == b), sums accumulated in float64
        a32, b32 = a.to(torch.float32), b.to(torch.float32)
        diff = a32 - b32
        diff_sq += float(torch.sum(diff * diff, dtype=torch.float64))
        dot += float(torch.sum(a32 * b32, dtype=torch.float64))
        norm_a_sq += float(torch.sum(a32 * a32, dtype=torch.float64))
        norm_b_sq += float(torch.sum(b32 * b32, dtype=torch.float64))
    finite = all(map(math.isfinite, (diff_sq, dot, norm_a_sq, norm_b_sq)))
    distance = math.sqrt(diff_sq) if finite else math.nan
    return {
        "name": plan.name,
        "shape": list(plan.shape),
        "status": "ok" if finite else "nonfinite",
        "euclidean_distance": distance,
        "relative_distance": distance / math.sqrt(norm_b_sq) if finite and norm_b_sq > 0 else math.nan,
        "cosine_similarity": dot / math.sqrt(norm_a_sq * norm_b_sq) if finite and norm_a_sq * norm_b_sq > 0 else math.nan,
        "_diff_sq": diff_sq, "_dot": dot, "_norm_a_sq": norm_a_sq, "_norm_b_sq": norm_b_sq,
    }


def _summary(layers: pd.DataFrame, unmatched: dict[str, list[str]], changed_threshold: float,
             summary_a: dict[str, Any], summary_b: dict[str, Any]) -> dict[str, Any]:
    ok = layers[layers["status"] == "ok"]
    diff_sq, dot = ok["_diff_sq"].sum(), ok["_dot"].sum()
    norm_a_sq, norm_b_sq = ok["_norm_a_sq"].sum(), ok["_norm_b_sq"].sum()
    layers.drop(columns=["_diff_sq", "_dot", "_norm_a_sq", "_norm_b_sq"], inplace=True)
    total = math.sqrt(diff_sq)
    changed = ok[ok["relative_distance"] > changed_threshold]["name"].tolist()
    reinitialized = ok[(ok["cosine_similarity"].abs() < REINIT_COSINE) & (ok["relative_distance"] > changed_threshold)]
    no_unmatched = not any(unmatched.values())
    summary: dict[str, Any] = {
        "num_matched": int(len(layers)),
        "total_euclidean_distance": total,
        "total_relative_distance": total / math.sqrt(norm_b_sq) if norm_b_sq > 0 else math.nan,
        "total_cosine_similarity": dot / math.sqrt(norm_a_sq * norm_b_sq) if norm_a_sq * norm_b_sq > 0 else math.nan,
        "identical": bool(no_unmatched and len(ok) == len(layers) and diff_sq == 0.0),
        "changed_layers": changed,
        "reinitialized_layers": reinitialized["name"].tolist(),
        "nonfinite_layers": layers[layers["status"] != "ok"]["name"].tolist(),
        **unmatched,
    }
    if "init_distance" in layers.columns:
        summary["total_init_distance"] = math.sqrt(float((layers["init_distance"] ** 2).sum()))
    for metric in DELTA_METRICS:
        if metric in summary_a and metric in summary_b:
            summary[f"delta_{metric}"] = summary_a[metric] - summary_b[metric]
    return summary
