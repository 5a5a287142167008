"""Tensors that are not weight matrices and get no row (biases, norms, integer buffers, the parts of
quantized weights), and the few name conventions that tell a matrix's kind without a module type."""

from __future__ import annotations

import re

from gate.layers.recurrent import onnx_recurrent_op
from gate.sources.base import ONNX_RECURRENT_STATE, OPTIMIZER_STATE, TensorInfo

# Kinds of tensors that are not matrices and get no row (counted in the summary as num_<kind>s):
# 0-D floats; 1-D floats (biases, norms) and stacks of them (expert biases, ONNX recurrent biases and
# initial states); integer and boolean buffers
# (position ids, step counters, masks); stored parts a dequantizing view reads with their weight
# (scales, zero points, g_idx, set through TensorInfo.consumed_by or recognised beside a quantized weight);
# an optimizer's variables saved with the model (module type OPTIMIZER_STATE, set by the Keras reader).
SCALAR, VECTOR, INTEGER_BUFFER, QUANTIZATION_PART = "scalar", "vector", "integer_buffer", "quantization_part"
OPTIMIZER_STATE_KIND = "optimizer_state"


NON_MATRIX_KINDS = (SCALAR, VECTOR, INTEGER_BUFFER, QUANTIZATION_PART, OPTIMIZER_STATE_KIND)


_EMBEDDING_NAME = re.compile(r"(embed|(^|\.)(wte|wpe|tok_embeddings)(\.|$))", re.IGNORECASE)


_QUANTIZED_INTEGERS = frozenset({"int8", "uint8", "int32"})


_QUANTIZED_WEIGHT_NAME = re.compile(r"(^|\.)(weight|qweight|weight_packed)$|_blocks$")


_QUANTIZATION_PART_NAME = re.compile(
    r"\.(weight_scale|weight_scale_inv|input_scale|weight_zero_point|scales|qzeros|g_idx|weight_shape)$")


def tensor_kind(info: TensorInfo, by_name: dict[str, TensorInfo]) -> str | None:
    """The kind of a tensor that gets no row (one of :data:`NON_MATRIX_KINDS`), or ``None`` when the
    planner gives it one or more rows. The summary counts tensors by this kind."""
    if info.module_type == OPTIMIZER_STATE:
        return OPTIMIZER_STATE_KIND
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
    return leaf == "bias" or leaf.endswith("_bias") or onnx_recurrent_op(info) is not None


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


def is_embedding(info: TensorInfo) -> bool:
    if info.module_type is not None:
        return info.module_type in ("Embedding", "EmbeddingBag")
    return bool(_EMBEDDING_NAME.search(info.name))
