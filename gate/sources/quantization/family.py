"""One quantized family: the float weight it stands for and the stored tensors it is computed from."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

Dequantizer = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class QuantizedTensor:
    """A logical float32 ``[out, in]`` weight named ``name``.

    ``parts`` maps roles (``weight``, ``scale``, ``zeros``, ``g_idx``...) to stored tensor names;
    ``anchor`` is the stored tensor whose place the logical one takes in the tensor list.
    ``skip_reason`` is set when the family is recognised as quantized but cannot be dequantized
    without guessing (missing or mis-shaped scale, unsupported bit width); ``dequantize`` is then
    ``None``.
    """

    name: str
    shape: tuple[int, ...]
    scheme: str
    anchor: str
    parts: dict[str, str] = field(default_factory=dict)
    dequantize: Dequantizer | None = None
    skip_reason: str | None = None


def skipped(name: str, shape: tuple[int, ...], scheme: str, anchor: str, parts: dict[str, str],
            reason: str) -> QuantizedTensor:
    """A recognised family that cannot be dequantized: one skipped row, its parts still accounted for."""
    return QuantizedTensor(name, shape, scheme, anchor, parts, None, reason)
