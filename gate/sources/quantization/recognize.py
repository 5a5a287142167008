"""Find the quantized families among a source's tensor descriptions (names, dtypes, shapes only)."""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

from gate.sources.quantization.config import QuantizationConfig
from gate.sources.quantization.family import QuantizedTensor, skipped
from gate.sources.quantization.packed import dequantize_awq, dequantize_gptq
from gate.sources.quantization.scaled import SCALED_DTYPES, dequantize_scaled, scale_granularity

if TYPE_CHECKING:  # gate.sources imports this package: a runtime import would be circular
    from gate.sources.base import TensorInfo

_INTEGER_DTYPES = frozenset({"uint8", "int16", "int32", "int64"})  # int8 is compressed-tensors INT8 (scaled)


def find_quantized(infos: list[TensorInfo], config: QuantizationConfig) -> list[QuantizedTensor]:
    """Every quantized weight of the model, recognised or skipped with the reason."""
    by_name = {info.name: info for info in infos}
    found = []
    for info in infos:
        if len(info.shape) < 2:
            continue
        if info.dtype in SCALED_DTYPES and info.name.endswith(".weight"):
            found.append(_scaled(info, by_name, config))
        elif info.name.endswith(".qweight"):
            found.append(_packed(info, by_name, config))
        elif info.dtype in _INTEGER_DTYPES and info.name.endswith(".weight"):
            found.append(_unknown_integer(info, by_name))
        elif info.name.endswith(".weight_packed"):
            base = info.name.removesuffix(".weight_packed")
            parts = {role: f"{base}.{suffix}" for role, suffix in
                     (("weight", "weight_packed"), ("scale", "weight_scale"), ("zeros", "weight_zero_point"),
                      ("shape", "weight_shape"), ("g_idx", "weight_g_idx")) if f"{base}.{suffix}" in by_name}
            found.append(skipped(f"{base}.weight", info.shape, "compressed-tensors pack-quantized", info.name, parts,
                                 "compressed-tensors pack-quantized (int4 in int32) layout is not supported yet"))
    return found


def _scaled(info: TensorInfo, by_name: dict[str, TensorInfo], config: QuantizationConfig) -> QuantizedTensor:
    base = info.name.removesuffix(".weight")
    kind = SCALED_DTYPES[info.dtype]
    parts = {"weight": info.name}
    if len(info.shape) != 2:
        return skipped(info.name, info.shape, kind, info.name, parts,
                       f"{kind} weight of {len(info.shape)} dimensions: only 2-D quantized matrices are dequantized")
    out, inp = info.shape
    inverse = f"{base}.weight_scale_inv"
    scale_name = inverse if inverse in by_name else f"{base}.weight_scale"
    zero_name = f"{base}.weight_zero_point"
    if zero_name in by_name:
        parts["zeros"] = zero_name
    if scale_name not in by_name:
        return skipped(info.name, info.shape, kind, info.name, parts,
                       f"{info.name} ({info.dtype}) has no {base}.weight_scale or .weight_scale_inv: its float "
                       "values are unknown")
    parts["scale"] = scale_name
    scale_shape = by_name[scale_name].shape
    granularity = scale_granularity(scale_shape, out, inp, config, block_only=scale_name == inverse)
    if granularity is None:
        expected = (f"[{math.ceil(out / config.block[0])}, {math.ceil(inp / config.block[1])}] (blocks of "
                    f"{config.block[0]}x{config.block[1]}) or one value" if scale_name == inverse
                    else f"one value, [{out}] or [{out}, 1] (per channel), [{out}, in/group] or blocks")
        return skipped(info.name, info.shape, kind, info.name, parts,
                       f"{scale_name} has shape {list(scale_shape)}, which does not fit {info.name} ({info.dtype}) "
                       f"of shape {list(info.shape)}; expected {expected}")
    label, cover = granularity
    if "zeros" in parts and math.prod(by_name[zero_name].shape) != math.prod(scale_shape):
        return skipped(info.name, info.shape, kind, info.name, parts,
                       f"{zero_name} has shape {list(by_name[zero_name].shape)}, not the scale's {list(scale_shape)}")
    scheme = f"{kind}/{label}" + ("/asymmetric" if "zeros" in parts else "")
    return QuantizedTensor(info.name, info.shape, scheme, info.name, parts, partial(dequantize_scaled, cover=cover))


def _packed(info: TensorInfo, by_name: dict[str, TensorInfo], config: QuantizationConfig) -> QuantizedTensor:
    """GPTQ or AWQ, from ``quant_method`` when config.json has it, else from the shapes (GPTQ's
    qweight keeps the output width, AWQ's packs it)."""
    base = info.name.removesuffix(".qweight")
    name = f"{base}.weight"
    parts = {"qweight": info.name}
    for role in ("qzeros", "scales", "g_idx"):
        if f"{base}.{role}" in by_name:
            parts[role] = f"{base}.{role}"
    missing = [role for role in ("qzeros", "scales") if role not in parts]
    if missing or info.dtype != "int32":
        reason = (f"packed weight without {', '.join(f'{base}.{m}' for m in missing)}" if missing
                  else f"packed weight of dtype {info.dtype}, expected int32")
        return skipped(name, info.shape, "packed int", info.name, parts, reason + ": cannot dequantize")
    scales = by_name[parts["scales"]].shape
    method = config.method if config.method in ("gptq", "awq") else ("gptq" if "g_idx" in parts or info.shape[1] == scales[-1] else "awq")
    bits = config.bits or 4
    if 32 % bits or (method == "awq" and bits != 4):
        return skipped(name, info.shape, f"{method}_int{bits}", info.name, parts,
                       f"{method} with {bits}-bit weights is not supported (packing of {bits} bits into int32)")
    per_word = 32 // bits
    qweight, qzeros = info.shape, by_name[parts["qzeros"]].shape
    if len(scales) != 2 or len(qzeros) != 2:
        return skipped(name, info.shape, method, info.name, parts, f"scales {list(scales)} / qzeros {list(qzeros)} are not 2-D")
    groups, out = scales
    inp = qweight[0] * per_word if method == "gptq" else qweight[0]
    expected_qweight = (inp // per_word, out) if method == "gptq" else (inp, out // per_word)
    problems = []
    if tuple(qweight) != expected_qweight or out % per_word:
        problems.append(f"qweight {list(qweight)} does not fit scales {list(scales)}")
    if tuple(qzeros) != (groups, out // per_word):
        problems.append(f"qzeros {list(qzeros)}, expected {[groups, out // per_word]}")
    group_size = config.group_size if config.group_size and config.group_size > 0 else (inp // groups if groups else 0)
    if "g_idx" in parts:
        if by_name[parts["g_idx"]].shape != (inp,):
            problems.append(f"g_idx {list(by_name[parts['g_idx']].shape)}, expected [{inp}]")
    elif not groups or math.ceil(inp / max(group_size, 1)) != groups:
        problems.append(f"{groups} scale groups do not cover {inp} inputs in groups of {group_size}")
    scheme = f"{method}_int{bits}/g{group_size}"
    if problems:
        return skipped(name, (out, inp), scheme, info.name, parts, "; ".join(problems))
    if method == "gptq":
        dequantize = partial(dequantize_gptq, bits=bits, group_size=group_size, v1_zeros=config.v1_zeros)
    else:
        dequantize = partial(dequantize_awq, bits=bits, group_size=group_size)
    return QuantizedTensor(name, (out, inp), scheme, info.name, parts, dequantize)


def _unknown_integer(info: TensorInfo, by_name: dict[str, TensorInfo]) -> QuantizedTensor:
    """An integer matrix stored as a layer's weight (e.g. bitsandbytes nf4/fp4 in uint8 with
    ``weight.absmax`` and ``weight.quant_state.*``): a quantized layout weightgate does not read.
    Its companions (``<weight>.*``, ``<base>.weight_*``) are accounted for with it."""
    base = info.name.removesuffix(".weight")
    parts = {"weight": info.name}
    parts.update({f"part{i}": name for i, name in enumerate(
        n for n in by_name if n != info.name and (n.startswith(f"{info.name}.") or n.startswith(f"{base}.weight_")))})
    return skipped(info.name, info.shape, f"unknown {info.dtype}", info.name, parts,
                   f"{info.dtype} weight in a quantized layout weightgate does not read "
                   "(supported: FP8/INT8 with scales, GPTQ, AWQ, GGUF)")
