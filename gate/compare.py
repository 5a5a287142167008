"""Distance between the weights of two models (versions), layer by layer, both streamed.

Following Yang et al. (docs/metrics.md, references), the Euclidean distance between two weight states measures how
much was learned between them: zero means no training happened, a distance comparable to the
weights' own norm with no correlation means a layer was re-initialised. Spectral and Benford
metrics of both sides are compared too (deltas are A - B: B is the reference, e.g. the baseline).
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from gate.jsonvalues import json_value
from gate.layers.plan import LayerPlan, PlanOptions, layer_matrices
from gate.layers.planner import plan_layers
from gate.options import Interval, ScanOptions, check_value, resolve_device
from gate.progress import iterate
from gate.scanning.pipeline import merge_partials
from gate.scanning.result import LayerTableExport
from gate.scanning.tensor_pass import TensorPass
from gate.solver.spectrum import cpu_threads_for_blas
from gate.sources import WeightSource, open_source
from gate.vocabulary import LayerStatus

DELTA_METRICS = ("alpha", "log_spectral_norm", "stable_rank", "mlh")
REINIT_COSINE = 0.1  # |cosine| below this: the layer no longer resembles its reference
CHANGED_THRESHOLD = Interval(float, 0, low_open=True)  # what compare's changed_threshold allows


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
            "summary": {k: json_value(v) for k, v in self.summary.items()},
            "options": {k: json_value(v) for k, v in self.options.items()},
            "layers": self._plain_layers(),
        }


def compare(a: Any, b: Any, *, init: Any = None, changed_threshold: float = 0.5, device: str = "auto",
            allow_pickle: bool = False, tracking_uri: str | None = None) -> CompareResult:
    """Compare model ``a`` with reference ``b`` (and with ``init``, its initialisation, if given).

    ``changed_threshold``: a layer whose relative distance ||A-B|| / ||B|| exceeds it is listed in
    ``changed_layers``.
    """
    from gate.errors import GateInputError

    check_value("changed_threshold", changed_threshold, CHANGED_THRESHOLD)
    options = ScanOptions.of(device=device)
    torch_device = resolve_device(options.device)
    opened = dict(allow_pickle=allow_pickle, tracking_uri=tracking_uri)
    with ExitStack() as stack:
        source_a = stack.enter_context(open_source(a, **opened))
        source_b = stack.enter_context(open_source(b, **opened))
        source_init = stack.enter_context(open_source(init, **opened)) if init is not None else None
        scan_a, scan_b, rows, init_rows, unmatched = one_pass(source_a, source_b, source_init, options, torch_device)
        description_a, description_b = source_a.description, source_b.description
        init_description = source_init.description if source_init is not None else None
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


def one_pass(source_a: WeightSource, source_b: WeightSource, source_init: WeightSource | None,
              options: ScanOptions, device: torch.device):
    """Scan A and B and compute their distances (and A's distances to ``init``) reading every
    tensor of each model once: A's tensors in storage order, each with its B (and init) partner
    loaded alongside, then B's tensors that A has no partner for."""
    started = time.perf_counter()
    infos_a, infos_b = source_a.tensor_infos(), source_b.tensor_infos()
    plans_a = plan_layers(infos_a, PlanOptions.of(options), source_a.model_config)
    plans_b = plan_layers(infos_b, PlanOptions.of(options), source_b.model_config)
    # Distances cover every matrix, also those too small for a spectrum (min_evals=1).
    pairs_b = _matched(source_a, source_b)
    pairs_init = _matched(source_a, source_init) if source_init is not None else ({}, {})
    rows: list[dict[str, Any]] = []
    init_rows: dict[str, dict[str, Any]] = {}
    fed_b: set[str] = set()
    with cpu_threads_for_blas(device), TensorPass(plans_a, options, device) as pass_a, \
            TensorPass(plans_b, options, device) as pass_b:
        for info in iterate(infos_a, "reading", "tensor"):
            tensor_a = source_a.load(info.name)
            pass_a.feed(info.name, tensor_a)
            # A's tensor may pair with several of B's (an ONNX GRU's W holds both directions that
            # torch stores as weight_ih_l0 and weight_ih_l0_reverse): each is loaded in turn.
            for b_name, pairs in _by_partner(pairs_b[0].get(info.name, [])):
                tensor_b = source_b.load(b_name)
                if b_name not in fed_b:
                    pass_b.feed(b_name, tensor_b)
                    fed_b.add(b_name)
                rows.extend(_pair_row(plan, other, tensor_a.to(device), tensor_b.to(device)) for plan, other in pairs)
            for init_name, pairs in _by_partner(pairs_init[0].get(info.name, [])):
                tensor_init = source_init.load(init_name).to(device)
                for plan, other in pairs:
                    init_rows[plan.name] = _pair_row(plan, other, tensor_a.to(device), tensor_init)
        for info in infos_b:
            if info.name not in fed_b:
                pass_b.feed(info.name, source_b.load(info.name))
        partial_a, partial_b = pass_a.finish(source_a.load), pass_b.finish(source_b.load)
    seconds = time.perf_counter() - started
    scan_a = merge_partials([partial_a], source_a.description, infos_a, options, device, seconds)
    scan_b = merge_partials([partial_b], source_b.description, infos_b, options, device, seconds)
    return scan_a, scan_b, rows, init_rows, pairs_b[1]


DISTANCE_COLUMNS = ["name", "status", "euclidean_distance", "relative_distance", "cosine_similarity"]


def layer_distances(source_a: WeightSource, source_b: WeightSource, device: torch.device) -> pd.DataFrame:
    """Per layer of ``source_a`` matched in ``source_b``: status, Euclidean and relative distance,
    cosine similarity (the policy's baseline rules read these; `check` has scanned both already,
    so only the distances are computed, one tensor pair at a time)."""
    matched, _ = _matched(source_a, source_b)
    rows: list[dict[str, Any]] = []
    for info in source_a.tensor_infos():
        pairs = matched.get(info.name)
        if not pairs:
            continue
        tensor_a = source_a.load(info.name).to(device)
        for b_name, group in _by_partner(pairs):
            tensor_b = source_b.load(b_name).to(device)
            rows.extend(_pair_row(plan, other, tensor_a, tensor_b) for plan, other in group)
    return pd.DataFrame(rows).reindex(columns=DISTANCE_COLUMNS)


def _matched(source_a: WeightSource, source_b: WeightSource
             ) -> tuple[dict[str, list[tuple[LayerPlan, LayerPlan]]], dict[str, list[str]]]:
    """Layers of A matched with B by name and matrix shape (N, M, rf: matrices, not stored tensors,
    are compared, so an ONNX LSTM's stacked W matches torch's per-direction weights): by A's tensor
    name, the pairs (A plan, B plan); and the layers left unmatched. Tensors their source cannot
    read (a quantized weight without its scale) have no values to compare."""
    plans_a = [plan for plan in plan_layers(source_a.tensor_infos(), PlanOptions(min_evals=1), source_a.model_config)
               if not plan.unreadable]
    plans_b = {plan.name: plan for plan in plan_layers(source_b.tensor_infos(), PlanOptions(min_evals=1), source_b.model_config)
               if not plan.unreadable}
    names_a = {plan.name for plan in plans_a}
    unmatched: dict[str, list[str]] = {"only_in_a": [], "only_in_b": sorted(n for n in plans_b if n not in names_a),
                                       "shape_mismatch": []}
    matched: dict[str, list[tuple[LayerPlan, LayerPlan]]] = {}
    for plan in plans_a:
        other = plans_b.get(plan.name)
        if other is None:
            unmatched["only_in_a"].append(plan.name)
        elif (other.N, other.M, other.rf) != (plan.N, plan.M, plan.rf):
            unmatched["shape_mismatch"].append(plan.name)
        else:
            matched.setdefault(plan.tensor_name, []).append((plan, other))
    return matched, unmatched


def _by_partner(pairs: list[tuple[LayerPlan, LayerPlan]]) -> list[tuple[str, list[tuple[LayerPlan, LayerPlan]]]]:
    """Pairs grouped by the partner's stored tensor, in first-seen order."""
    grouped: dict[str, list[tuple[LayerPlan, LayerPlan]]] = {}
    for plan, other in pairs:
        grouped.setdefault(other.tensor_name, []).append((plan, other))
    return list(grouped.items())


def _pair_row(plan: LayerPlan, other: LayerPlan, tensor_a: torch.Tensor, tensor_b: torch.Tensor) -> dict[str, Any]:
    diff_sq = dot = norm_a_sq = norm_b_sq = 0.0
    for a, b in zip(layer_matrices(plan, tensor_a), layer_matrices(other, tensor_b)):
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
        "status": LayerStatus.OK if finite else LayerStatus.NONFINITE,
        "euclidean_distance": distance,
        "relative_distance": distance / math.sqrt(norm_b_sq) if finite and norm_b_sq > 0 else math.nan,
        "cosine_similarity": dot / math.sqrt(norm_a_sq * norm_b_sq) if finite and norm_a_sq * norm_b_sq > 0 else math.nan,
        "_diff_sq": diff_sq, "_dot": dot, "_norm_a_sq": norm_a_sq, "_norm_b_sq": norm_b_sq,
    }


def _summary(layers: pd.DataFrame, unmatched: dict[str, list[str]], changed_threshold: float,
             summary_a: dict[str, Any], summary_b: dict[str, Any]) -> dict[str, Any]:
    ok = layers[layers["status"] == LayerStatus.OK]
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
        "nonfinite_layers": layers[layers["status"] != LayerStatus.OK]["name"].tolist(),
        **unmatched,
    }
    if "init_distance" in layers.columns:
        summary["total_init_distance"] = math.sqrt(float((layers["init_distance"] ** 2).sum()))
    for metric in DELTA_METRICS:
        if metric in summary_a and metric in summary_b:
            summary[f"delta_{metric}"] = summary_a[metric] - summary_b[metric]
    return summary
