"""First significant digits of weights, and their closeness to Benford's law (MLH).

Digit extraction is exact for float16, bfloat16, float32 and float64, subnormals included. A value's
first digit is the largest d with d * 10^e <= |x| for its decade e; comparing a float against the
smallest float >= d * 10^e (computed with exact rational arithmetic) decides that exactly, where
log10-based formulas misjudge values next to powers of ten. Because positive floats order like their
bit patterns, a lookup table indexed by the top 20 bits (exponent and leading mantissa bits) gives
the digit at once for all but the ~0.1% of values whose table cell straddles a threshold; those are
settled by binary search over the exact thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import torch

BENFORD = np.log10(1 + 1 / np.arange(1, 10))  # P(first digit = d), d = 1..9
_KEY_BITS = 20
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class _FloatLayout:
    dtype: torch.dtype
    int_dtype: torch.dtype
    numpy_dtype: type
    bits: int


_LAYOUTS = {
    torch.float32: _FloatLayout(torch.float32, torch.int32, np.float32, 32),
    torch.float64: _FloatLayout(torch.float64, torch.int64, np.float64, 64),
}


@dataclass
class DigitCounts:
    """Counts of first digits 1..9, plus the values left out (zeros and NaN/Inf)."""

    counts: np.ndarray  # shape (9,), int64
    zeros: int = 0
    nonfinite: int = 0

    @classmethod
    def empty(cls) -> "DigitCounts":
        return cls(np.zeros(9, dtype=np.int64))

    def __add__(self, other: "DigitCounts") -> "DigitCounts":
        return DigitCounts(self.counts + other.counts, self.zeros + other.zeros, self.nonfinite + other.nonfinite)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def mlh(self) -> float:
        """Pearson correlation of the digit frequencies with Benford's law (NaN without digits)."""
        if self.total == 0 or np.all(self.counts == self.counts[0]):
            return math.nan
        return float(np.corrcoef(self.counts / self.total, BENFORD)[0, 1])


def eic(mlh: float, train_accuracy: float) -> dict[str, float]:
    """Enthalpy Information Criteria of Sahu et al. (docs/metrics.md), equations 8-10 (lower is better):
    EIC = -A - MLH; scaled: -A - (MLH - 0.9462) / 0.0537; symbolic regression: -log(MLH) / A."""
    return {
        "eic": -train_accuracy - mlh,
        "eic_scaled": -train_accuracy - (mlh - 0.9462) / 0.0537,
        "eic_sr": -math.log(mlh) / train_accuracy if mlh > 0 and train_accuracy > 0 else math.nan,
    }


class ModelDigits:
    """Model-level first-digit counts over weight tensors with 2+ dimensions that are not constant.

    As in the MLH paper, biases and norm parameters (vectors) and constant-initialised tensors are
    left out of the model's MLH; they still get per-layer values where they are layers. 0/1 mask
    buffers (gate.metrics.value_grid) are left out by the scanner before they are counted.
    """

    def __init__(self) -> None:
        self.counts = DigitCounts.empty()
        self.left_out_tensors: list[str] = []

    def add(self, name: str, tensor: torch.Tensor) -> DigitCounts:
        """Count ``tensor``'s digits; they join the model's counts unless it is constant."""
        counts = digit_counts(tensor)
        finite = tensor[torch.isfinite(tensor)] if counts.nonfinite else tensor
        low, high = torch.aminmax(finite.reshape(-1)) if finite.numel() else (0, 0)
        if finite.numel() == 0 or float(low) == float(high):
            self.left_out_tensors.append(name)
        else:
            self.counts = self.counts + counts
        return counts

    def leave_out(self, name: str) -> None:
        """A tensor that is not a learned weight (a 0/1 mask): not counted, but counted as left out."""
        self.left_out_tensors.append(name)

    @classmethod
    def merged(cls, parts: "list[ModelDigits]") -> "ModelDigits":
        """The counts of several disjoint sets of tensors (partial scans) as one model's."""
        total = cls()
        for part in parts:
            total.counts = total.counts + part.counts
            total.left_out_tensors.extend(part.left_out_tensors)
        return total

    def summary(self, vectors_left_out: int, train_accuracy: float | None) -> dict[str, object]:
        mlh = self.counts.mlh()
        result: dict[str, object] = {
            "mlh": mlh,
            "benford_digit_counts": [int(c) for c in self.counts.counts],
            "benford_zeros": self.counts.zeros,
            "benford_nonfinite": self.counts.nonfinite,
            "benford_tensors_left_out": vectors_left_out + len(self.left_out_tensors),
        }
        if train_accuracy is not None:
            result.update(eic(mlh, train_accuracy))
        return result


def digit_counts(values: torch.Tensor) -> DigitCounts:
    """First-digit counts of all elements of ``values`` (any float dtype, any device).

    Values are histogrammed by their top 20 bits (sign cleared) and the histogram is folded through
    the lookup table; only values in ambiguous cells (zeros, NaN and Inf have such cells too) are
    looked at one by one. CPU tensors go through numpy (zero-copy), whose gathers and histograms
    are ~2.4x faster than torch's on this kind of machine; GPU tensors stay on the GPU. Counted in
    chunks, so the temporaries (keys, masks, a float32 copy of float16 weights) stay ~100 MB even for
    a 32000 x 4096 embedding (measured: a CPU scan of Llama-7B-shaped weights peaked at 3.2 GB
    of host memory with the whole tensor at once).
    """
    flat = values.reshape(-1)
    total = DigitCounts.empty()
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        chunk = flat[start:start + _CHUNK_ELEMENTS]
        if chunk.dtype not in _LAYOUTS:
            chunk = chunk.to(torch.float32)  # float16 and bfloat16 convert exactly
        if chunk.device.type == "cpu":
            total = total + _count(chunk.numpy(), _Tables.for_numpy(chunk.dtype))
        else:
            total = total + _count(chunk, _Tables.for_torch(chunk.dtype, chunk.device))
    return total


@dataclass(frozen=True)
class _Tables:
    """The lookup tables of one float type, as arrays of one backend (numpy, or torch on a device)."""

    lut: Any
    lut_index: Any  # lut as int64, the index type both backends' bincount takes
    ambiguous: Any
    thresholds: Any
    threshold_digits: Any
    int_dtype: Any
    shift: int
    sign_mask: int
    searchsorted: Callable[[Any, Any], Any]

    @staticmethod
    @lru_cache(maxsize=None)
    def for_numpy(dtype: torch.dtype) -> "_Tables":
        layout = _LAYOUTS[dtype]
        lut = _lookup_table(dtype).numpy()
        thresholds, digits = (t.numpy() for t in _thresholds(dtype))
        return _Tables(lut, lut.astype(np.int64), lut == 0, thresholds, digits, np.dtype(f"int{layout.bits}"),
                       layout.bits - _KEY_BITS, int(np.iinfo(f"int{layout.bits}").max),
                       lambda table, v: np.searchsorted(table, v, side="right"))

    @staticmethod
    @lru_cache(maxsize=None)
    def for_torch(dtype: torch.dtype, device: torch.device) -> "_Tables":
        layout = _LAYOUTS[dtype]
        lut = _lookup_table(dtype).to(device)
        thresholds, digits = (t.to(device) for t in _thresholds(dtype))
        return _Tables(lut, lut.long(), lut == 0, thresholds, digits, layout.int_dtype, layout.bits - _KEY_BITS,
                       torch.iinfo(layout.int_dtype).max,
                       lambda table, v: torch.searchsorted(table, v, right=True))

    def exact_digits(self, magnitudes: Any) -> Any:
        """Digits of positive finite values by binary search over the exact thresholds."""
        return self.threshold_digits[self.searchsorted(self.thresholds, magnitudes) - 1]


def _keys(flat: Any, tables: _Tables) -> Any:
    return (flat.view(tables.int_dtype) & tables.sign_mask) >> tables.shift


def _count(flat: Any, tables: _Tables) -> DigitCounts:
    """The counting pipeline, written once for numpy arrays and torch tensors alike."""
    array_module = np if isinstance(flat, np.ndarray) else torch
    keys = _keys(flat, tables)
    per_key = array_module.bincount(keys)  # as long as the largest key used, not the whole table
    used = per_key > 0
    folded = array_module.bincount(tables.lut_index[: len(per_key)][used], weights=per_key[used] * 1.0, minlength=10)
    counts = np.rint(_host(folded)[1:10]).astype(np.int64)
    special = flat[tables.ambiguous[keys]] if float(folded[0]) else flat[:0]
    finite = abs(special[array_module.isfinite(special)])
    nonzero = finite[finite != 0]
    if len(nonzero):
        exact = tables.exact_digits(nonzero)
        counts += _host(array_module.bincount(exact.astype(np.int64) if array_module is np else exact.long(),
                                              minlength=10))[1:10].astype(np.int64)
    return DigitCounts(counts, int(len(finite) - len(nonzero)), int(len(special) - len(finite)))


def _host(array: Any) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.cpu().numpy()


@lru_cache(maxsize=None)
def _thresholds(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """For every d * 10^e in the type's range, the smallest float >= it, ascending, with d."""
    layout = _LAYOUTS[dtype]
    info = np.finfo(layout.numpy_dtype)
    smallest = float(info.smallest_subnormal)
    lowest_decade = math.floor(math.log10(smallest))
    highest_decade = math.floor(math.log10(float(info.max)))
    values, digits = [], []
    for exponent in range(lowest_decade, highest_decade + 1):
        for digit in range(1, 10):
            exact = Fraction(digit) * Fraction(10) ** exponent
            if exact > Fraction(float(info.max)):
                break
            values.append(_smallest_float_at_least(exact, layout.numpy_dtype))
            digits.append(digit)
    return (torch.tensor(np.array(values, dtype=layout.numpy_dtype)), torch.tensor(digits, dtype=torch.int8))


def _smallest_float_at_least(exact: Fraction, numpy_dtype: type) -> float:
    candidate = numpy_dtype(float(exact))  # nearest, possibly after double rounding: fix up below
    up, down = numpy_dtype(np.inf), numpy_dtype(-np.inf)
    while Fraction(float(candidate)) < exact:
        candidate = np.nextafter(candidate, up)
    while candidate > 0 and Fraction(float(np.nextafter(candidate, down))) >= exact:
        candidate = np.nextafter(candidate, down)
    return candidate


@lru_cache(maxsize=None)
def _lookup_table(dtype: torch.dtype) -> torch.Tensor:
    """Digit for each value of the top 20 bits of a positive float, 0 where the cell is ambiguous."""
    layout = _LAYOUTS[dtype]
    shift = layout.bits - _KEY_BITS
    keys = torch.arange(2 ** (_KEY_BITS - 1), dtype=torch.int64)  # sign bit 0: positive values only
    low = (keys << shift).to(layout.int_dtype).view(dtype)
    high = (((keys + 1) << shift) - 1).to(layout.int_dtype).view(dtype)
    usable = torch.isfinite(high) & (low > 0)
    thresholds, threshold_digits = _thresholds(dtype)
    low_digit = threshold_digits[(torch.searchsorted(thresholds, low.clamp_min(thresholds[0]), right=True) - 1)]
    high_digit = threshold_digits[(torch.searchsorted(thresholds, torch.where(usable, high, thresholds[0]),
                                                      right=True) - 1)]
    table = torch.where(usable & (low_digit == high_digit), low_digit, torch.zeros_like(low_digit))
    return torch.cat([table, torch.zeros(2 ** (_KEY_BITS - 1), dtype=torch.int8)])  # negative keys unused
