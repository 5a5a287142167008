"""All analysable matrices of a model, planned from names, shapes and dtypes (no tensor data).

Planning sees the whole model before anything is loaded. Conventions follow WeightWatcher 0.7.7
(docs/metrics.md): Conv2d kernels are split into kh*kw slices whose eigenvalues are pooled after
scaling by sqrt(1/2); layers whose number of eigenvalues M*rf is below ``min_evals`` are skipped
with a stated reason. Layouts WeightWatcher does not read follow the same ideas (convolutions of
any rank, fused MoE expert stacks, ONNX recurrent operators: :mod:`gate.layers.conv`,
:mod:`gate.layers.experts`, :mod:`gate.layers.recurrent`). Every tensor either gets rows or has a
kind in :data:`gate.layers.kinds.NON_MATRIX_KINDS` that the summary counts: nothing is left out
silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gate.layers.conv import conv_plans, is_convolution
from gate.layers.experts import expert_column, fused_expert_plans, is_fused_experts
from gate.layers.kinds import is_embedding, tensor_kind
from gate.layers.plan import DENSE, EMBEDDING, LayerPlan, PlanOptions
from gate.layers.recurrent import RECURRENT_WEIGHT, onnx_recurrent_op, onnx_recurrent_plans, recurrent_plans
from gate.layers.three_d import CONV, EXPERTS, ModelHints, read_three_d
from gate.options import CONV2D_METHODS
from gate.sources.base import TensorInfo


def plan_layers(infos: list[TensorInfo], options: PlanOptions = PlanOptions(),
                config: Mapping[str, Any] | None = None) -> list[LayerPlan]:
    """All analysable matrices of a model, in storage order, including skipped ones with reasons.
    ``config``: the model's config.json where the source has one (``WeightSource.model_config``):
    expert counts and kernel sizes tell a file's 3-D tensors apart (gate.layers.three_d)."""
    if options.conv2d_method not in CONV2D_METHODS:
        raise ValueError(f"conv2d_method must be one of {CONV2D_METHODS}, not {options.conv2d_method!r}")
    by_name = {info.name: info for info in infos}
    context = _Context(by_name, [info for info in infos if _bare_three_d(info)], ModelHints.of(config))
    plans: list[LayerPlan] = []
    for info in infos:
        if info.consumed_by is not None:
            continue  # scales, zero points, packed integers: read as part of the tensor they dequantize to
        if info.skip_reason is not None:
            plans.append(_source_skip(info, len(plans)))
            continue
        if tensor_kind(info, by_name) is not None:
            continue  # biases, norms, integer buffers, scales: counted in the summary, not matrices
        for plan in _plans_for_tensor(info, context, options, len(plans)):
            plans.append(dataclasses.replace(_with_size_check(plan, options), quantization=info.quantization,
                                             columns=plan.columns + info.columns))
    return plans


def _source_skip(info: TensorInfo, index: int) -> LayerPlan:
    """A tensor its source recognised but could not turn into float weights (e.g. a quantized
    weight whose scale is missing): one skipped row with the source's reason."""
    shape = info.shape or (0,)
    return LayerPlan(index, info.name.removesuffix(".weight"), info.name, "other", info.shape, max(shape), min(shape),
                     1, skip_reason=info.skip_reason, module_type=info.module_type,
                     quantization=info.quantization, columns=info.columns, unreadable=True)


@dataclass(frozen=True)
class _Context:
    """What planning one tensor may look at besides it: every tensor by name, the 3-D tensors
    without a module type in storage order, and what config.json says."""

    by_name: dict[str, TensorInfo]
    three_d: list[TensorInfo]
    hints: ModelHints


def _bare_three_d(info: TensorInfo) -> bool:
    return (len(info.shape) == 3 and info.is_floating and info.module_type is None and info.consumed_by is None
            and info.skip_reason is None and onnx_recurrent_op(info) is None)


def _plans_for_tensor(info: TensorInfo, context: _Context, options: PlanOptions, start: int):
    by_name = context.by_name
    base = info.name.removesuffix(".weight")
    shape = info.shape
    ndim = len(shape)
    if not info.is_floating:
        yield _unreadable_quantized(info, start)
    elif ndim == 2 and RECURRENT_WEIGHT.search(info.name):
        yield from recurrent_plans(info, by_name, start)
    elif ndim == 2:
        layer_type = EMBEDDING if is_embedding(info) else DENSE
        yield LayerPlan(start, base, info.name, layer_type, shape, max(shape), min(shape), 1,
                        module_type=info.module_type, columns=expert_column(info.name))
    elif ndim == 3 and onnx_recurrent_op(info) is not None:
        yield from onnx_recurrent_plans(info, onnx_recurrent_op(info), start)
    elif _bare_three_d(info):
        reading = read_three_d(info, context.three_d, by_name, context.hints)
        if reading.kind == EXPERTS:
            yield from fused_expert_plans(info, by_name, start)
        elif reading.kind == CONV:
            yield from conv_plans(info, base, options, start)
        else:
            yield LayerPlan(start, base, info.name, "other", shape, max(shape), min(shape), 1,
                            skip_reason=reading.why)
    elif ndim == 3 and is_fused_experts(info):
        yield from fused_expert_plans(info, by_name, start)
    elif ndim in (3, 4, 5) and is_convolution(info):
        yield from conv_plans(info, base, options, start)
    else:
        yield LayerPlan(start, base, info.name, "other", shape, max(shape), min(shape), 1,
                        skip_reason=_unknown_kind_reason(info), module_type=info.module_type)


def _unknown_kind_reason(info: TensorInfo) -> str:
    kind = info.module_type or "unknown module"
    return f"{len(info.shape)}-D parameter of {kind}: not a dense, convolution, embedding, expert or recurrent weight"


def _unreadable_quantized(info: TensorInfo, start: int) -> LayerPlan:
    """A quantized weight that no dequantizing view turned into floats: one skipped row naming it."""
    shape = info.shape
    return LayerPlan(start, info.name.removesuffix(".weight"), info.name, "other", shape, max(shape), min(shape), 1,
                     skip_reason=f"quantized weight {info.name} ({info.dtype}) without a recognised scale layout: "
                                 "cannot dequantize it", module_type=info.module_type, unreadable=True)


def _with_size_check(plan: LayerPlan, options: PlanOptions) -> LayerPlan:
    if plan.skip_reason:
        return plan
    reason = None
    if 0 in plan.shape:
        reason = f"empty tensor of shape {list(plan.shape)}"
    elif plan.num_evals < options.min_evals:
        reason = f"too small: M*rf = {plan.num_evals} eigenvalues < min_evals = {options.min_evals}"
    elif options.max_evals is not None and plan.num_evals > options.max_evals:
        reason = f"too large: M*rf = {plan.num_evals} eigenvalues > max_evals = {options.max_evals}"
    elif options.max_N is not None and plan.N > options.max_N:
        reason = f"too large: N = {plan.N} > max_N = {options.max_N}"
    if reason is None:
        return plan
    return LayerPlan(**{**plan.__dict__, "skip_reason": reason})
