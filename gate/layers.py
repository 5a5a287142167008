"""Which tensors are layer weight matrices, and how each becomes the matrices whose spectra we analyse.

Planning looks only at names, shapes and dtypes (no tensor data), so it sees the whole model before
anything is loaded. Conventions follow WeightWatcher 0.7.7 (see DESIGN.md): Conv2d kernels are split
into kh*kw slices whose eigenvalues are pooled after scaling by sqrt(1/2); layers whose number of
eigenvalues M*rf is below ``min_evals`` are skipped with a stated reason. Layouts WeightWatcher does
not read follow the same ideas: Conv3d and ConvTranspose kernels pool their slices like Conv2d,
fused MoE expert stacks [E, ., .] give one dense row per expert, ONNX LSTM/GRU/RNN weights split
per direction and gate like torch's. Every tensor either gets rows or has a kind in
:data:`NON_MATRIX_KINDS` that the summary counts: nothing is left out silently.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field

import torch

from gate.sources.base import ONNX_OP_PREFIX, ONNX_RECURRENT_STATE, TensorInfo

# Layer types reported in the layer table.
DENSE, EMBEDDING, CONV1D, CONV2D, CONV3D, RECURRENT = "dense", "embedding", "conv1d", "conv2d", "conv3d", "recurrent"
_CONV_TYPES = {1: CONV1D, 2: CONV2D, 3: CONV3D}  # by number of kernel dimensions

# Kinds of tensors that are not matrices and get no row (counted in the summary as num_<kind>s):
# 0-D floats; 1-D floats (biases, norms) and stacks of them (expert biases, ONNX recurrent biases and
# initial states); integer and boolean buffers
# (position ids, step counters, masks); stored parts a dequantizing view reads with their weight
# (scales, zero points, g_idx, set through TensorInfo.consumed_by or recognised beside a quantized weight).
SCALAR, VECTOR, INTEGER_BUFFER, QUANTIZATION_PART = "scalar", "vector", "integer_buffer", "quantization_part"
NON_MATRIX_KINDS = (SCALAR, VECTOR, INTEGER_BUFFER, QUANTIZATION_PART)

CONV2D_SCALE = math.sqrt(0.5)  # WeightWatcher's conv2d_norm: pooled slice eigenvalues x 0.5
# A file's 3-D tensor that no module, name or config explains is a Conv1d kernel only when its last
# dimension is this small: speech and sequence models use kernels of 2-10 (Whisper 3, wav2vec2's
# feature encoder 2-10, Mamba 4); stacks such as ONNX recurrent weights or fused experts end in a
# model width instead. Larger kernels need a module type or "conv" in the name.
CONV1D_MAX_KERNEL = 16
_CONV_NAME = re.compile(r"conv", re.IGNORECASE)
_RECURRENT = re.compile(r"(^|\.)weight_(ih|hh)(_l\d+(_reverse)?)?$")  # LSTM/GRU/RNN and their *Cell
_GATE_NAMES = {4: ("i", "f", "g", "o"), 3: ("r", "z", "n"), 1: ("h",)}
_RECURRENT_GATES = {"LSTM": 4, "LSTMCell": 4, "GRU": 3, "GRUCell": 3, "RNN": 1, "RNNCell": 1}
# ONNX recurrent operators (module types given by the ONNX source). Gate order is ONNX's (LSTM
# i,o,f,c; GRU z,r,h), named with torch's letters: ONNX's cell gate c is torch's g, GRU's h is torch's n.
_ONNX_GATES = {"LSTM": ("i", "o", "f", "g"), "GRU": ("z", "r", "n"), "RNN": ("h",)}
_ONNX_RECURRENT = {ONNX_OP_PREFIX + op for op in _ONNX_GATES}
_ONNX_EXPORT_NAME = re.compile(r"^onnx::(LSTM|GRU|RNN)_\d+$")  # torch.onnx.export's anonymous inputs
_EMBEDDING_NAME = re.compile(r"(embed|(^|\.)(wte|wpe|tok_embeddings)(\.|$))", re.IGNORECASE)
_CONV_MODULES = {"Conv", "ConvTranspose", "Conv1d", "Conv2d", "Conv3d",
                 "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
# Fused experts: transformers' *Experts modules hold [E, ., .] parameters named experts.<proj>.
_FUSED_EXPERTS = re.compile(r"(^|\.)experts\.([A-Za-z_][A-Za-z0-9_]*?)(\.weight)?$")
_EXPERT_INDEX = re.compile(r"(?:^|\.)experts\.(\d+)\.")
_QUANTIZED_INTEGERS = frozenset({"int8", "uint8", "int32"})
_QUANTIZED_WEIGHT_NAME = re.compile(r"(^|\.)(weight|qweight|weight_packed)$|_blocks$")
_QUANTIZATION_PART_NAME = re.compile(
    r"\.(weight_scale|weight_scale_inv|input_scale|weight_zero_point|scales|qzeros|g_idx|weight_shape)$")


@dataclass(frozen=True)
class LayerPlan:
    """One row of the layer table: where its matrices come from and how to cut them.

    ``slices`` lists index tuples into the stored tensor (``()`` for a plain matrix); the spectra
    of all slices are pooled into one ESD, as WeightWatcher does for convolutions.
    """

    index: int
    name: str
    tensor_name: str
    layer_type: str
    shape: tuple[int, ...]
    N: int
    M: int
    rf: int
    slices: tuple[tuple, ...] = ((),)
    scale: float = 1.0
    skip_reason: str | None = None
    module_type: str | None = field(default=None, compare=False)
    quantization: str | None = field(default=None, compare=False)  # stored scheme of dequantized weights
    columns: tuple[tuple[str, object], ...] = field(default=(), compare=False)  # from TensorInfo.columns
    unreadable: bool = field(default=False, compare=False)  # the source cannot produce the tensor (skip_reason says why)

    @property
    def num_evals(self) -> int:
        return self.M * self.rf


@dataclass(frozen=True)
class PlanOptions:
    """Knobs of layer selection (WeightWatcher's names and defaults where it has them)."""

    min_evals: int = 8
    max_evals: int | None = None
    max_N: int | None = None
    conv2d_method: str = "pooled"  # or "per_slice" (one row per kernel position, 004's method 1)
    conv2d_norm: bool = True


def plan_layers(infos: list[TensorInfo], options: PlanOptions = PlanOptions()) -> list[LayerPlan]:
    """All analysable matrices of a model, in storage order, including skipped ones with reasons."""
    if options.conv2d_method not in ("pooled", "per_slice"):
        raise ValueError(f"conv2d_method must be 'pooled' or 'per_slice', not {options.conv2d_method!r}")
    by_name = {info.name: info for info in infos}
    plans: list[LayerPlan] = []
    for info in infos:
        if info.consumed_by is not None:
            continue  # scales, zero points, packed integers: read as part of the tensor they dequantize to
        if info.skip_reason is not None:
            plans.append(_source_skip(info, len(plans)))
            continue
        if tensor_kind(info, by_name) is not None:
            continue  # biases, norms, integer buffers, scales: counted in the summary, not matrices
        for plan in _plans_for_tensor(info, by_name, options, len(plans)):
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


def _plans_for_tensor(info: TensorInfo, by_name: dict[str, TensorInfo], options: PlanOptions, start: int):
    base = info.name.removesuffix(".weight")
    shape = info.shape
    ndim = len(shape)
    if not info.is_floating:
        yield _unreadable_quantized(info, start)
    elif ndim == 2 and _RECURRENT.search(info.name):
        yield from _recurrent_plans(info, by_name, start)
    elif ndim == 2:
        layer_type = EMBEDDING if _is_embedding(info) else DENSE
        yield LayerPlan(start, base, info.name, layer_type, shape, max(shape), min(shape), 1,
                        module_type=info.module_type, columns=_expert_column(info.name))
    elif ndim == 3 and _onnx_recurrent_op(info) is not None:
        yield from _onnx_recurrent_plans(info, _onnx_recurrent_op(info), start)
    elif ndim == 3 and _is_fused_experts(info):
        yield from _fused_expert_plans(info, by_name, start)
    elif ndim in (3, 4, 5) and _is_convolution(info):
        yield from _conv_plans(info, base, options, start)
    else:
        yield LayerPlan(start, base, info.name, "other", shape, max(shape), min(shape), 1,
                        skip_reason=_unknown_kind_reason(info), module_type=info.module_type)


def _unknown_kind_reason(info: TensorInfo) -> str:
    kind = info.module_type or "unknown module"
    if len(info.shape) == 3 and info.module_type is None:
        return (f"3-D tensor {info.name} of unknown kind: its last dimension {info.shape[-1]} is too large for a "
                f"Conv1d kernel (<= {CONV1D_MAX_KERNEL}) and no module, name or config says what it is")
    return f"{len(info.shape)}-D parameter of {kind}: not a dense, convolution, embedding, expert or recurrent weight"


def _unreadable_quantized(info: TensorInfo, start: int) -> LayerPlan:
    """A quantized weight that no dequantizing view turned into floats: one skipped row naming it."""
    shape = info.shape
    return LayerPlan(start, info.name.removesuffix(".weight"), info.name, "other", shape, max(shape), min(shape), 1,
                     skip_reason=f"quantized weight {info.name} ({info.dtype}) without a recognised scale layout: "
                                 "cannot dequantize it", module_type=info.module_type, unreadable=True)


def _is_convolution(info: TensorInfo) -> bool:
    """Modules and ONNX operators that say so; a file's bare 3-D tensor only by name or a small kernel."""
    if info.module_type is not None:
        return info.module_type in _CONV_MODULES
    if len(info.shape) != 3:
        return True  # 4-D and 5-D tensors of files: convolution kernels (WeightWatcher's reading too)
    return bool(_CONV_NAME.search(info.name)) or info.shape[-1] <= CONV1D_MAX_KERNEL


def _conv_plans(info: TensorInfo, base: str, options: PlanOptions, start: int):
    """Kernel slices W[:, :, k...]: [out, in/groups] for Conv, [in, out/groups] for ConvTranspose;
    either way N x M after orientation, so one convention serves both."""
    rows, cols, *kernel = info.shape
    N, M = max(rows, cols), min(rows, cols)
    layer_type = _CONV_TYPES[len(kernel)]
    positions = list(itertools.product(*(range(k) for k in kernel)))
    if layer_type == CONV1D:  # WeightWatcher pools conv1d slices without the sqrt(1/2) factor
        slices = tuple((slice(None), slice(None), *pos) for pos in positions)
        yield LayerPlan(start, base, info.name, CONV1D, info.shape, N, M, len(positions), slices=slices,
                        module_type=info.module_type)
        return
    if options.conv2d_method == "pooled":
        scale = CONV2D_SCALE if options.conv2d_norm else 1.0  # WeightWatcher 0.7.7 halves 1x1 kernels too
        slices = tuple((slice(None), slice(None), *pos) for pos in positions)
        yield LayerPlan(start, base, info.name, layer_type, info.shape, N, M, len(positions), slices=slices,
                        scale=scale, module_type=info.module_type)
        return
    for offset, pos in enumerate(positions):
        label = ",".join(map(str, pos))
        yield LayerPlan(start + offset, f"{base}[{label}]", info.name, layer_type, info.shape, N, M, 1,
                        slices=((slice(None), slice(None), *pos),), module_type=info.module_type)


def _recurrent_plans(info: TensorInfo, by_name: dict[str, TensorInfo], start: int):
    """Split stacked gate weights of torch's LSTM/GRU/RNN and their cells (LSTM: i,f,g,o; GRU: r,z,n)
    into one matrix per gate."""
    rows, cols = info.shape
    hh_name = _RECURRENT.sub(lambda m: m.group(0).replace("weight_ih", "weight_hh"), info.name)
    hidden = by_name[hh_name].shape[1] if hh_name in by_name and len(by_name[hh_name].shape) == 2 else None
    gates = _RECURRENT_GATES.get(info.module_type or "")
    if gates is None and hidden:
        gates = rows // hidden if rows % hidden == 0 else None
    base = info.name.removesuffix(".weight")
    if gates not in _GATE_NAMES or rows % gates:
        yield LayerPlan(start, base, info.name, RECURRENT, info.shape, max(info.shape), min(info.shape), 1,
                        skip_reason="recurrent weight whose gate layout cannot be inferred (expected LSTM/GRU/RNN)",
                        module_type=info.module_type)
        return
    size = rows // gates
    for k, gate in enumerate(_GATE_NAMES[gates]):
        rows_slice = slice(k * size, (k + 1) * size)
        yield LayerPlan(start + k, f"{base}.{gate}", info.name, RECURRENT, info.shape, max(size, cols),
                        min(size, cols), 1, slices=((rows_slice, slice(None)),), module_type=info.module_type)


def _onnx_recurrent_op(info: TensorInfo) -> str | None:
    """``LSTM``/``GRU``/``RNN`` for an ONNX recurrent operator's input: named by the ONNX source, or
    by torch's exporter (``onnx::LSTM_12``) in a copy of the initializers."""
    if info.module_type in _ONNX_RECURRENT:
        return info.module_type.removeprefix(ONNX_OP_PREFIX)
    match = _ONNX_EXPORT_NAME.match(info.name) if info.module_type is None else None
    return match.group(1) if match else None


def _onnx_recurrent_plans(info: TensorInfo, op: str, start: int):
    """ONNX W [dirs, gates*hidden, input] and R [dirs, gates*hidden, hidden]: one matrix per direction
    and gate, cut in ONNX's gate order and named with torch's letters so containers match."""
    directions, stacked, cols = info.shape
    gates = _ONNX_GATES[op]
    base = info.name.removesuffix(".weight")
    if stacked % len(gates):
        yield LayerPlan(start, base, info.name, RECURRENT, info.shape, max(info.shape), min(info.shape), 1,
                        skip_reason=f"ONNX {op} weight whose rows {stacked} do not split into {len(gates)} gates",
                        module_type=info.module_type)
        return
    size = stacked // len(gates)
    index = start
    for direction in range(directions):
        suffix = "_reverse" if direction else ""
        for k, gate in enumerate(gates):
            rows_slice = slice(k * size, (k + 1) * size)
            yield LayerPlan(index, f"{base}{suffix}.{gate}", info.name, RECURRENT, info.shape, max(size, cols),
                            min(size, cols), 1, slices=((direction, rows_slice, slice(None)),),
                            module_type=info.module_type)
            index += 1


def _is_fused_experts(info: TensorInfo) -> bool:
    if info.module_type is not None:
        return info.module_type.endswith("Experts")
    return bool(_FUSED_EXPERTS.search(info.name))


def _fused_expert_plans(info: TensorInfo, by_name: dict[str, TensorInfo], start: int):
    """[E, a, b] expert stacks: one dense row per expert (and per half of a fused gate_up_proj),
    named like the per-expert layout (``experts.3.gate_proj``) so both layouts compare."""
    match = _FUSED_EXPERTS.search(info.name)
    prefix, leaf = (info.name[:match.start(2) - 1], match.group(2)) if match else info.name.rsplit(".", 1)
    experts, rows, cols = info.shape
    parts: list[tuple[str, tuple]] = [(leaf, (slice(None), slice(None)))]
    if leaf == "gate_up_proj":
        split = _gate_up_split(info, by_name, prefix)
        if isinstance(split, str):
            yield LayerPlan(start, info.name, info.name, DENSE, info.shape, max(rows, cols), min(rows, cols), 1,
                            skip_reason=split, module_type=info.module_type)
            return
        parts = split
    index = start
    for expert in range(experts):
        for part_name, (row_slice, col_slice) in parts:
            part_rows = _slice_length(row_slice, rows)
            part_cols = _slice_length(col_slice, cols)
            yield LayerPlan(index, f"{prefix}.{expert}.{part_name}", info.name, DENSE, info.shape,
                            max(part_rows, part_cols), min(part_rows, part_cols), 1,
                            slices=((expert, row_slice, col_slice),), module_type=info.module_type,
                            columns=(("expert", expert),))
            index += 1


def _gate_up_split(info: TensorInfo, by_name: dict[str, TensorInfo], prefix: str) -> list[tuple[str, tuple]] | str:
    """Where gate and up sit in a fused [E, ., .] gate_up_proj, read off the down_proj beside it.

    [E, 2I, H] with down_proj [E, H, I] (Qwen3-MoE, Mixtral, DeepSeek in transformers 5): gate is
    the first half of the rows. [E, H, 2I] with down_proj [E, I, H] (GPT-OSS, Llama 4): the columns
    hold them, interleaved (gate = even columns) for GPT-OSS, whose experts carry a gate_up_proj_bias,
    else in halves. Returns the skip reason where the layout cannot be told.
    """
    down = by_name.get(f"{prefix}.down_proj") or by_name.get(f"{prefix}.down_proj.weight")
    _, rows, cols = info.shape
    whole = slice(None)
    if down is not None and len(down.shape) == 3:
        _, down_rows, down_cols = down.shape
        if rows == 2 * down_cols and cols == down_rows:
            half = rows // 2
            return [("gate_proj", (slice(0, half), whole)), ("up_proj", (slice(half, rows), whole))]
        if cols == 2 * down_rows and rows == down_cols:
            interleaved = (info.module_type or "").startswith("GptOss") or f"{prefix}.gate_up_proj_bias" in by_name
            if interleaved:
                return [("gate_proj", (whole, slice(0, cols, 2))), ("up_proj", (whole, slice(1, cols, 2)))]
            half = cols // 2
            return [("gate_proj", (whole, slice(0, half))), ("up_proj", (whole, slice(half, cols)))]
    return (f"fused {info.name} {list(info.shape)}: which axis holds gate and up cannot be told "
            "(no down_proj of matching shape beside it)")


def _slice_length(part: slice, length: int) -> int:
    return len(range(*part.indices(length)))


def _expert_column(name: str) -> tuple[tuple[str, object], ...]:
    """Per-expert layouts (``experts.3.w1``, ``experts.3.gate_proj``) fill the same column as fused ones."""
    match = _EXPERT_INDEX.search(name)
    return (("expert", int(match.group(1))),) if match else ()


def tensor_kind(info: TensorInfo, by_name: dict[str, TensorInfo]) -> str | None:
    """The kind of a tensor that gets no row (one of :data:`NON_MATRIX_KINDS`), or ``None`` when the
    planner gives it one or more rows. The summary counts tensors by this kind."""
    if info.consumed_by is not None or _is_quantization_part(info, by_name):
        return QUANTIZATION_PART
    if info.skip_reason is not None:
        return None
    if info.is_floating:
        if len(info.shape) == 0:
            return SCALAR
        if len(info.shape) == 1 or info.module_type == ONNX_RECURRENT_STATE:
            return VECTOR  # biases and norms; an ONNX LSTM's initial state [directions, batch, hidden]
        if len(info.shape) == 2 and _is_stacked_bias(info):
            return VECTOR  # biases stacked per expert or per ONNX recurrent direction
        return None
    return None if _is_quantized_weight(info) else INTEGER_BUFFER


def _is_stacked_bias(info: TensorInfo) -> bool:
    """[E, out] expert biases (``gate_up_proj_bias``) and ONNX recurrent B [directions, 2*gates*hidden]."""
    leaf = info.name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias") or _onnx_recurrent_op(info) is not None


def _is_quantized_weight(info: TensorInfo) -> bool:
    """Stored low-precision weights: float8 of any shape >= 2-D, int8/uint8/packed int32 named as weights."""
    if len(info.shape) < 2:
        return False
    if info.dtype.startswith("float8"):
        return True
    return info.dtype in _QUANTIZED_INTEGERS and bool(_QUANTIZED_WEIGHT_NAME.search(info.name))


def _is_quantization_part(info: TensorInfo, by_name: dict[str, TensorInfo]) -> bool:
    """A scale or zero point stored beside a quantized weight (read only when it is dequantized)."""
    match = _QUANTIZATION_PART_NAME.search(info.name)
    if match is None:
        return False
    owner = info.name[:match.start()]
    return any(name in by_name and _is_quantized_weight(by_name[name])
               for name in (f"{owner}.weight", f"{owner}.qweight", f"{owner}.weight_packed"))


def _is_embedding(info: TensorInfo) -> bool:
    if info.module_type is not None:
        return info.module_type in ("Embedding", "EmbeddingBag")
    return bool(_EMBEDDING_NAME.search(info.name))


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


def layer_matrices(plan: LayerPlan, tensor: torch.Tensor) -> list[torch.Tensor]:
    """The 2-D matrices of one layer, each oriented N x M (N >= M).

    ``plan.scale`` is not applied here: it multiplies the eigenvalues by ``scale**2`` after the
    solve, which avoids rounding a scaled copy in the tensor's low-precision dtype.
    """
    matrices = []
    for index in plan.slices:
        matrix = tensor[index] if index else tensor
        matrices.append(matrix.T if matrix.ndim == 2 and matrix.shape[0] < matrix.shape[1] else matrix)
    return matrices
