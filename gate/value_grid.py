"""How many distinct values a layer's weights take: the signature of a coarse quantisation grid.

A trained float layer's weights are practically all distinct. In all-MiniLM-L6-v2, a 4096-weight
sample keeps at least 3226 distinct values in float16, 1347 in bfloat16 and 33 after a plain FP8
cast, but at most 16 after a per-tensor 4-bit round trip (and 2-3 in a binary or ternary layer),
whatever the layer's Benford digits happen to say: a 4-bit grid can land on Benford-like leading
digits (an LSTM in bench/ZOO.md kept MLH 0.98). The count is taken over an evenly spaced sample,
so it costs the same for a 70B model's layers as for a small one's.
"""

from __future__ import annotations

import math

import torch

SAMPLE_SIZE = 4096
# Below this many weights a small layer cannot be told from a grid (a 4x8 matrix has at most 32
# distinct values): the layer gets no verdict (NaN) and rules on it leave the layer out.
MIN_WEIGHTS = 256
# A 4-bit grid has 16 values; a layer sampled at 16 or fewer is on a grid that coarse (or is a
# constant, mask or binary/ternary layer, which its baseline then shares).
COARSE_GRID_LEVELS = 16


def value_grid_columns(matrices: list[torch.Tensor]) -> dict[str, float]:
    """``value_levels``: distinct values among about ``SAMPLE_SIZE`` evenly spaced weights of a
    layer (a few more for a layer pooled from several matrices: each is sampled with the stride); ``coarse_grid``: 1.0 when that is at most ``COARSE_GRID_LEVELS``, else 0.0. Both NaN
    for a layer with fewer than ``MIN_WEIGHTS`` weights."""
    total = sum(matrix.numel() for matrix in matrices)
    if total < MIN_WEIGHTS:
        return {"value_levels": math.nan, "coarse_grid": math.nan}
    stride = max(1, total // SAMPLE_SIZE)
    sample = torch.cat([matrix.reshape(-1)[::stride] for matrix in matrices])
    levels = torch.unique(sample).numel()
    return {"value_levels": float(levels), "coarse_grid": float(levels <= COARSE_GRID_LEVELS)}
