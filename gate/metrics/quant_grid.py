"""Which integer grid a layer's weights sit on, and at what scope: one grid for the whole tensor, one
per output channel (row), or one per group of input weights within a row, as int4/int8 quantisers
store them (per-tensor absmax, per-channel, GPTQ/AWQ-style groups of 32-128).

A set of values is on a uniform grid when every value is the smallest positive gap between them
times an integer, plus a common offset (asymmetric grids with integer zero points): for b-bit
storage, at most 2^b steps span the values. A trained float layer fails that test (its gaps are
arbitrary), and so do float16/bfloat16 copies at these scales (their smallest gap is a fine ulp, so
the values span thousands of steps). A plain FP8 cast passes it with a few hundred steps, but its
values are multiples of the step with at most 4 significant bits (e4m3: 3 mantissa bits, e5m2: 2):
that is a floating-point grid, not an integer one, and is not reported here (coarse-quantisation
and the value levels judge it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_GRID_BITS = 8
SAMPLED_ROWS = 8
GROUP_SIZES = (128, 64, 32)  # coarsest first: a per-channel grid is also on every group's grid
MAX_DIVISOR = 8
_TOLERANCE = 0.05  # of a step: dequantized values stored in 16 bits are off their grid by < 0.03 steps
_FLOAT8_SIGNIFICANT_BITS = 4
GRID_SCOPES = ("tensor", "channel", *(f"group{g}" for g in GROUP_SIZES))


def grid_columns(channels: torch.Tensor, sample: torch.Tensor) -> dict[str, object]:
    """``grid_bits`` (bits of the integer grid, NaN when the weights are on none of <= 8 bits) and
    ``grid_scope`` (``tensor``, ``channel``, ``group<g>``; None without a grid), from a layer's
    weights as [output channels, inputs] and an evenly spaced sample of the whole tensor."""
    bits = _bits(sample.reshape(1, -1))
    if bits is not None:
        return {"grid_bits": float(bits), "grid_scope": "tensor"}
    rows = channels[torch.as_tensor(_even_rows(channels.shape[0]))].detach().to("cpu", torch.float64).numpy()
    bits = _bits(rows)
    if bits is not None:
        return {"grid_bits": float(bits), "grid_scope": "channel"}
    for size in GROUP_SIZES:
        if rows.shape[1] >= 2 * size and rows.shape[1] % size == 0:
            bits = _bits(rows.reshape(-1, size))
            if bits is not None:
                return {"grid_bits": float(bits), "grid_scope": f"group{size}"}
    return {"grid_bits": math.nan, "grid_scope": None}


def _even_rows(count: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(count, SAMPLED_ROWS)).round().astype(int))


def _bits(units: torch.Tensor | np.ndarray) -> int | None:
    """The bits of the widest integer grid among the rows of ``units`` (each row a unit with its own
    grid), or None when a row is on no integer grid of <= MAX_GRID_BITS bits.

    A unit's step is its smallest gap divided by the smallest k (<= MAX_DIVISOR) that makes every
    gap a whole number of steps: a group of 32 int8 weights rarely holds two neighbouring levels."""
    values = units.detach().to("cpu", torch.float64).numpy() if isinstance(units, torch.Tensor) else units
    if values.shape[1] < 2 or not np.isfinite(values).all():
        return None
    ordered = np.sort(values, axis=1)
    gaps = np.diff(ordered, axis=1)
    smallest = np.where(gaps > 0, gaps, np.inf).min(axis=1)
    smallest = np.where(np.isfinite(smallest), smallest, 1.0)  # a unit of one value is on any grid
    step = np.full(len(ordered), np.nan)
    for k in range(1, MAX_DIVISOR + 1):
        candidate = smallest / k
        ratios = gaps / candidate[:, None]
        fits = np.isnan(step) & (np.abs(ratios - np.round(ratios)).max(axis=1) <= _TOLERANCE)
        step = np.where(fits, candidate, step)
    if np.isnan(step).any():
        return None
    spanned = np.round((ordered[:, -1] - ordered[:, 0]) / step) + 1
    if spanned.max() > 2 ** MAX_GRID_BITS:
        return None
    if spanned.max() > 16 and _float8_like(ordered, step):
        return None
    return int(math.ceil(math.log2(max(spanned.max(), 2))))


def _float8_like(ordered: np.ndarray, step: np.ndarray) -> bool:
    """Every value a multiple of the step with at most 4 significant bits: FP8's grid, not an integer one."""
    multiples = np.round(np.abs(ordered) / step[:, None]).astype(np.int64)
    if np.abs(np.abs(ordered) / step[:, None] - multiples).max() > _TOLERANCE:
        return False
    odd = multiples[multiples > 0]
    while odd.size and (odd % 2 == 0).any():
        odd = np.where(odd % 2 == 0, odd // 2, odd)
    return bool((odd < 2 ** _FLOAT8_SIGNIFICANT_BITS).all())
