"""FP8 (e4m3, e5m2) and INT8 weights stored with float scales: W = (q - zero_point) * scale.

Scale layouts (read from the scale's shape, the block size from ``quantization_config``):
- per tensor: one value (shape ``[]`` or ``[1]``);
- per channel: ``[out]`` or ``[out, 1]`` (compressed-tensors ``channel`` strategy);
- per group along the input: ``[out, in / g]`` (compressed-tensors ``group`` strategy);
- per block: ``[ceil(out / bo), ceil(in / bi)]`` (DeepSeek-V3's ``weight_scale_inv`` and
  transformers' FineGrainedFP8, 128 x 128 by default). DeepSeek's ``_inv`` is a misnomer kept for
  compatibility: the weight is fp8 x scale_inv, as its own dequantization kernel computes.
``weight_zero_point`` (asymmetric compressed-tensors INT8) has the scale's shape. Any other shape is
not guessed at: the family is skipped with the shapes named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from gate.sources.quantization.config import QuantizationConfig

SCALED_DTYPES = {"float8_e4m3fn": "fp8_e4m3", "float8_e4m3fnuz": "fp8_e4m3", "float8_e5m2": "fp8_e5m2",
                 "float8_e5m2fnuz": "fp8_e5m2", "int8": "int8"}


def scale_granularity(scale_shape: tuple[int, ...], out: int, inp: int, config: QuantizationConfig,
                      block_only: bool) -> tuple[str, tuple[int, int]] | None:
    """(granularity label, (rows, cols) each scale covers) for a scale of this shape, or None.

    ``block_only``: DeepSeek's ``weight_scale_inv`` is per block (or per tensor) by definition.
    """
    numel = math.prod(scale_shape)
    if numel == 1:
        return "per_tensor", (out, inp)
    bo, bi = config.block
    if len(scale_shape) == 2 and scale_shape == (math.ceil(out / bo), math.ceil(inp / bi)) and (block_only or scale_shape[0] != out):
        return f"block{bo}x{bi}", (bo, bi)
    if block_only:
        return None
    if scale_shape in ((out,), (out, 1)):
        return "per_channel", (1, inp)
    if len(scale_shape) == 2 and scale_shape[0] == out and inp % scale_shape[1] == 0:
        group = inp // scale_shape[1]
        return f"group{group}", (1, group)
    return None


def dequantize_scaled(parts: Mapping[str, torch.Tensor], cover: tuple[int, int]) -> torch.Tensor:
    """float32 W from the stored ``weight``, ``scale`` and optional ``zeros``, each scale applied to
    the ``cover`` rows x cols it belongs to; one row band at a time, so no full-size expanded scale
    is ever formed."""
    weight = parts["weight"].to(torch.float32)
    out, inp = weight.shape
    scale = parts["scale"].to(torch.float32).reshape(-1) if math.prod(parts["scale"].shape) == 1 else parts["scale"].to(torch.float32)
    zeros = parts.get("zeros")
    if scale.numel() == 1:
        if zeros is not None:
            weight -= zeros.to(torch.float32).reshape(())
        return weight.mul_(scale.reshape(()))
    rows, cols = cover
    scale = scale.reshape(math.ceil(out / rows), math.ceil(inp / cols))
    zero_grid = zeros.to(torch.float32).reshape(scale.shape) if zeros is not None else None
    if out % rows == 0 and inp % cols == 0:  # whole blocks: one broadcast over a blocked view
        blocks = weight.view(scale.shape[0], rows, scale.shape[1], cols)
        if zero_grid is not None:
            blocks -= zero_grid[:, None, :, None]
        blocks *= scale[:, None, :, None]
        return weight
    for band in range(scale.shape[0]):
        view = weight[band * rows:(band + 1) * rows]
        if zero_grid is not None:
            view -= zero_grid[band].repeat_interleave(cols)[:inp]
        view *= scale[band].repeat_interleave(cols)[:inp]
    return weight
