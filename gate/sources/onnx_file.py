"""ONNX models: the graph's initializers are the weights; the consuming operator gives the layer kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource

# ONNX operator -> the torch module class name the layer planner understands.
_OP_TO_MODULE = {"Gemm": "Linear", "MatMul": "Linear", "Conv": "Conv", "Gather": "Embedding"}


class OnnxSource(WeightSource):
    """Initializers of an ONNX file; external-data files are read tensor by tensor."""

    def __init__(self, path: Path) -> None:
        self.description = str(path)
        self._base_dir = str(path.parent)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, OSError, ValueError) as err:
            raise GateInputError(f"{path}: not a readable ONNX model (truncated or corrupt?): {err}") from err
        if not model.graph.initializer:
            raise GateInputError(f"{path}: the ONNX graph has no initializers, so there are no weights to analyse")
        consumer = {}
        for node in model.graph.node:
            for input_name in node.input:
                consumer.setdefault(input_name, _OP_TO_MODULE.get(node.op_type, node.op_type))
        self._initializers = {init.name: init for init in model.graph.initializer}
        self._infos = [
            TensorInfo(
                init.name,
                tuple(int(d) for d in init.dims),
                _onnx_dtype_name(init.data_type),
                consumer.get(init.name),
            )
            for init in model.graph.initializer
        ]

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        try:
            array = numpy_helper.to_array(self._initializers[name], base_dir=self._base_dir)
        except (OSError, ValueError) as err:
            raise GateInputError(f"{self.description}: cannot read initializer {name!r}: {err}") from err
        return torch.from_numpy(np.array(array))  # a writable copy: protobuf-backed arrays are read-only

    def close(self) -> None:
        self._initializers.clear()


def _onnx_dtype_name(data_type: int) -> str:
    if data_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    return str(onnx.helper.tensor_dtype_to_np_dtype(data_type))
