"""What every weight source provides: a list of tensor descriptions, and tensors loaded one at a time.

Sources know shapes up front (file headers, module parameters) so that layer planning can look at
the whole model, while tensor data is read only when a layer is analysed. This keeps memory at one
layer regardless of model size.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch


@dataclass(frozen=True)
class TensorInfo:
    """One named tensor of a model, without its data.

    ``module_type`` is the class name of the owning module when the source knows it (an
    ``nn.Module`` or an ONNX graph); file formats that only store names leave it ``None`` and the
    layer planner infers the kind from name and shape.

    Sources that compute a tensor from stored ones (dequantization, LoRA updates, GGUF blocks) say
    so: ``quantization`` names the stored scheme of a dequantized tensor (``None``: stored as is);
    ``consumed_by`` marks a stored tensor (scale, zero point, g_idx, packed weight) that only feeds
    the named computed tensor, so it is counted, not analysed; ``skip_reason`` marks a tensor the
    source recognised but cannot turn into float weights; ``columns`` are extra layer-table
    columns the source knows for the tensor (e.g. a LoRA update's rank).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    module_type: str | None = None
    quantization: str | None = None
    consumed_by: str | None = None
    skip_reason: str | None = None
    columns: tuple[tuple[str, object], ...] = ()

    @property
    def is_floating(self) -> bool:
        return self.dtype in FLOAT_DTYPES


# Module type of tensors read by an ONNX operator whose layout has no torch module (LSTM, GRU, RNN:
# [directions, gates*hidden, .]); the ONNX source writes it and the layer planner reads it.
ONNX_OP_PREFIX = "onnx."
# Module type of the other inputs of those operators (initial hidden and cell states): not weights.
ONNX_RECURRENT_STATE = "onnx.recurrent_state"

# Module type of an optimizer's variables stored beside the weights (a .keras archive's optimizer group, a
# legacy Keras .h5's optimizer_weights: moments, step counters): training state, not weights; counted, not analysed.
OPTIMIZER_STATE = "optimizer_state"

# What weightgate reads, as every "not a format weightgate reads" message lists it.
SUPPORTED_FORMATS = (".safetensors, model.safetensors.index.json, .pt/.pth/.bin/.ckpt, .pt2, .onnx, .gguf, "
                     ".keras/.h5/.weights.h5 (Keras), .pkl/.joblib (scikit-learn MLPs, pickled torch modules), "
                     ".skops (scikit-learn MLPs), or a model directory")

FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: the spelling of :class:`TensorInfo` dtypes and of the layer
    table's ``solve_precision`` column."""
    return str(dtype).removeprefix("torch.")


def natural_key(name: str) -> tuple:
    """Sort key that orders ``layer.10`` after ``layer.9``: safetensors headers store names
    alphabetically, and depth order is what plots and metric series need."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


class WeightSource(abc.ABC):
    """A model's weights, readable tensor by tensor. Use as a context manager to release files."""

    #: Human-readable origin (path or URI) shown in reports and errors.
    description: str
    #: The model's config.json (read as data) where the weights came with one, else empty: the layer
    #: planner reads expert counts and kernel sizes from it (gate.layers.three_d).
    model_config: Mapping[str, Any] = MappingProxyType({})

    @abc.abstractmethod
    def tensor_infos(self) -> list[TensorInfo]:
        """All tensors of the model, in storage order."""

    @abc.abstractmethod
    def load(self, name: str) -> torch.Tensor:
        """The data of one tensor, on the CPU, in its stored dtype."""

    def close(self) -> None:
        """Release open files; the default source holds none."""

    def __enter__(self) -> "WeightSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
