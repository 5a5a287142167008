"""A dequantizing view over a source: each quantized family reads as one float32 weight.

The view lists the logical weight in place of the stored quantized tensor (same position, so
depth order is kept) and keeps every stored part in the list with ``consumed_by`` set, so nothing
disappears from the accounting. Loading a logical weight reads its parts, dequantizes, and drops
them: memory stays at one layer's tensors, as for unquantized sources.
"""

from __future__ import annotations

import dataclasses

import torch

from gate.sources.base import TensorInfo, WeightSource
from gate.sources.quantization import QuantizedTensor, find_quantized
from gate.sources.quantization.config import QuantizationConfig

NOT_QUANTIZED = "none"


class QuantizedSource(WeightSource):
    """``inner`` with its quantized families (:func:`gate.sources.quantization.find_quantized`) dequantized."""

    def __init__(self, inner: WeightSource, families: list[QuantizedTensor]) -> None:
        self.description = inner.description
        self.model_config = inner.model_config
        self._inner = inner
        # A family that cannot be dequantized keeps its stored name and data (one skipped row; the
        # fingerprint still hashes the stored bytes); the others read as float32 under the weight's name.
        self._families = {family.name: family for family in families if family.dequantize is not None}
        by_anchor = {family.anchor: family for family in families}
        consumer = {part: (family.name if family.dequantize else family.anchor)
                    for family in families for part in family.parts.values()}
        self._infos: list[TensorInfo] = []
        for info in inner.tensor_infos():
            family = by_anchor.get(info.name)
            if family is not None and family.dequantize is None:
                self._infos.append(dataclasses.replace(info, quantization=family.scheme, skip_reason=family.skip_reason))
            elif family is not None:
                self._infos.append(TensorInfo(family.name, family.shape, "float32", info.module_type,
                                              quantization=family.scheme))
                if family.name != info.name:
                    self._infos.append(dataclasses.replace(info, consumed_by=family.name))
            elif info.name in consumer and consumer[info.name] != info.name:
                self._infos.append(dataclasses.replace(info, consumed_by=consumer[info.name]))
            elif info.is_floating and len(info.shape) >= 2:
                self._infos.append(dataclasses.replace(info, quantization=NOT_QUANTIZED))
            else:
                self._infos.append(info)

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        family = self._families.get(name)
        if family is None:
            return self._inner.load(name)
        return family.dequantize({role: self._inner.load(part) for role, part in family.parts.items()})

    def close(self) -> None:
        self._inner.close()


def dequantizing(source: WeightSource, config: QuantizationConfig) -> WeightSource:
    """``source`` itself when it holds no quantized tensor, else its dequantizing view."""
    families = find_quantized(source.tensor_infos(), config)
    return QuantizedSource(source, families) if families else source
