"""Quantized checkpoint layouts: which stored tensors make up one float weight, and how to compute it.

Recognition looks at names, dtypes and shapes only (no data), like layer planning, so a whole
model's quantized families are known before any tensor is read; dequantization then runs one
family at a time. Schemes: FP8 and INT8 weights with a scale per tensor, channel, group or block
(:mod:`gate.sources.quantization.scaled`), GPTQ and AWQ packed integers (:mod:`gate.sources.quantization.packed`).
"""

from __future__ import annotations

from gate.sources.quantization.family import QuantizedTensor
from gate.sources.quantization.recognize import find_quantized

__all__ = ["QuantizedTensor", "find_quantized"]
