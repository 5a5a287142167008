"""Merge the parts' results into the scan result a single process would have produced.

Tasks number layers within their own file; the merge plans the whole model again from the tensor
descriptions the tasks returned (in the order a safetensors source lists them: natural name
order), moves each part's rows to the global layer ids, and hands the partial scans to
:func:`gate.scanning.pipeline.merge_partials`, which computes peer ratios, the summary and the fingerprint
over the whole model. The result therefore does not depend on how the model was split.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import torch

from gate.distributed.part import PartResult
from gate.distributed.plan import ScanPlan
from gate.errors import GateInputError
from gate.layers.plan import LayerPlan, PlanOptions
from gate.layers.planner import plan_layers
from gate.options import ScanOptions
from gate.scanning.pipeline import merge_partials
from gate.scanning.result import ScanResult
from gate.scanning.tensor_pass import PartialScan
from gate.sources.base import TensorInfo, natural_key


def merge_parts(plan: ScanPlan, results: list[PartResult], options: ScanOptions, device: torch.device,
                seconds: float) -> ScanResult:
    """The model's :class:`ScanResult` from the results of all parts of ``plan``."""
    infos = _model_infos(plan, results)
    by_tensor: dict[str, list[LayerPlan]] = defaultdict(list)
    for layer in plan_layers(infos, PlanOptions.of(options)):
        by_tensor[layer.tensor_name].append(layer)
    partials = [_renumbered(result, by_tensor) for result in results]
    return merge_partials(partials, plan.description, infos, options, device, seconds)


def _model_infos(plan: ScanPlan, results: list[PartResult]) -> list[TensorInfo]:
    """Every tensor exactly once, in source order; the index's tensors all present."""
    infos = [info for result in results for info in result.infos]
    counts: dict[str, int] = defaultdict(int)
    for info in infos:
        counts[info.name] += 1
    twice = sorted(name for name, count in counts.items() if count > 1)
    missing = sorted(plan.tensor_names - set(counts)) if plan.tensor_names is not None else []
    if twice or missing:
        raise GateInputError(f"{plan.description}: the parts of the scan do not cover the model: "
                             f"missing {missing[:10]}, read twice {twice[:10]}")
    # One part keeps its source's own order; several are safetensors shards, which a single-process
    # scan lists in natural name order (gate.sources.safetensors_files).
    return infos if len(results) == 1 else sorted(infos, key=lambda info: natural_key(info.name))


def _renumbered(result: PartResult, by_tensor: dict[str, list[LayerPlan]]) -> PartialScan:
    """The part's partial scan with its rows under the global layer ids."""
    local: dict[str, list[LayerPlan]] = defaultdict(list)
    for layer in result.plans:
        local[layer.tensor_name].append(layer)
    new_index: dict[int, int] = {}
    for tensor in (info.name for info in result.infos):
        layers, model_layers = local.get(tensor, []), by_tensor.get(tensor, [])
        if len(layers) != len(model_layers) or \
                [dataclasses.replace(layer, index=g.index) for layer, g in zip(layers, model_layers)] != model_layers:
            raise GateInputError(f"{result.description}: the layers of {tensor!r} depend on tensors stored in "
                                 "another shard; scan this model without --ray")
        new_index.update({layer.index: g.index for layer, g in zip(layers, model_layers)})
    rows: dict[int, dict[str, Any]] = {new_index[index]: {**row, "layer_id": new_index[index]}
                                       for index, row in result.partial.rows.items()}
    return dataclasses.replace(result.partial, rows=rows)
