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

import numpy as np
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
    layer (a few more for a layer pooled from several matrices: each is sampled with the stride);
    ``coarse_grid``: 1.0 when that is at most ``COARSE_GRID_LEVELS``, else 0.0. Both NaN for a
    layer with fewer than ``MIN_WEIGHTS`` weights."""
    if sum(matrix.numel() for matrix in matrices) < MIN_WEIGHTS:
        return {"value_levels": math.nan, "coarse_grid": math.nan}
    levels = _distinct_values(even_sample(matrices))
    return {"value_levels": float(levels), "coarse_grid": float(levels <= COARSE_GRID_LEVELS)}


MASK_REASON = ("a mask buffer, not a learned weight (named like one, e.g. GPT-2's causal attn.bias or a "
               "pruning weight_mask, and every value is 0 or 1); left out of the spectra and of the Benford digits")


def is_zero_one_mask(name: str, tensor: torch.Tensor) -> bool:
    """True for a floating tensor named like a mask whose values are all 0 or 1, with a 1 among
    them. Older GPT-2 checkpoints store a 1024 x 1024 causal mask per block as ``attn.bias``
    [1, 1, n, n]; torch's pruning stores ``weight_mask``. Counted as conv layers, they would flood
    the Benford digits with ones. The name decides first (a ``*mask`` tensor, or a ``bias`` of two
    or more dimensions), so an identity-initialised weight stays a (degenerate) layer; then the
    evenly spaced sample, and only a tensor whose sample is all 0/1 is checked whole."""
    leaf = name.rsplit(".", 1)[-1]
    if not (leaf.endswith("mask") or (leaf == "bias" and tensor.ndim >= 2)):
        return False
    sample = even_sample([tensor])
    if not bool(((sample == 0) | (sample == 1)).all()):
        return False
    return bool(((tensor == 0) | (tensor == 1)).all()) and bool((tensor == 1).any())


def _distinct_values(sample: torch.Tensor) -> int:
    """How many distinct values ``sample`` holds, by numpy's sort-based unique (about 20x faster
    than torch.unique on a 4096-element CPU tensor, which a scan runs once per layer). Each NaN
    counts as a value of its own, as torch.unique counts them. numpy has no bfloat16 or float8:
    those widen to float32, which keeps every value."""
    values = sample.detach().to("cpu")
    if values.dtype.is_floating_point and values.dtype not in (torch.float16, torch.float32, torch.float64):
        values = values.to(torch.float32)
    return int(np.unique(values.numpy(), equal_nan=False).size)


def even_sample(tensors: list[torch.Tensor]) -> torch.Tensor:
    """About ``SAMPLE_SIZE`` elements spread evenly over the tensors (one stride for all)."""
    stride = max(1, sum(tensor.numel() for tensor in tensors) // SAMPLE_SIZE)
    return torch.cat([tensor.reshape(-1)[::stride] for tensor in tensors])
