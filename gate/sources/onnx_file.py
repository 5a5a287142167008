"""ONNX models: initializers and ``Constant`` node tensors are the weights; the consuming operator gives
the layer kind.

Exporters differ in where weights live: torch's exporter and most others write initializers,
Paddle2ONNX and some tf2onnx graphs hold them in ``Constant`` nodes, and large models keep the data
in external files (``onnx.save(..., save_as_external_data=True)``), read here tensor by tensor.
torch.onnx.export names the weights it rewrote (transposed MatMul weights, LSTM/GRU weights with
their gates reordered, folded constants) ``onnx::<Op>_<n>``, and older exporters number them
(``135``); such tensors are listed under the torch parameter name read off the consuming node's
scope (``/lstm/LSTM`` -> ``lstm.weight_ih_l0``), so that the rows of an ONNX export match the rows
of the model's own state dict or safetensors file, and a node without a scope names its weight
(``/MatMul_1`` -> ``MatMul_1.weight``; an unnamed node: ``MatMul_<position>.weight``). A MatMul
weight so renamed (stored [in, out]) reads transposed, as torch's Linear weight [out, in]; recurrent
weights keep ONNX's [directions, gates*hidden, .] layout, which the layer planner splits.

Tensors are listed in forward order: by the position of their first consuming node in the graph,
which ONNX requires to be topologically sorted (initializers are stored in whatever order the
exporter chose: ddddocr's output Gemm comes first); tensors no node reads come last.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from gate.errors import GateInputError
from gate.sources.base import ONNX_OP_PREFIX, ONNX_RECURRENT_STATE, TensorInfo, WeightSource

# ONNX operator -> the torch module class name (or ONNX layout) the layer planner understands.
_OP_TO_MODULE = {
    "Gemm": "Linear", "MatMul": "Linear", "Conv": "Conv", "ConvTranspose": "ConvTranspose", "Gather": "Embedding",
    "LSTM": ONNX_OP_PREFIX + "LSTM", "GRU": ONNX_OP_PREFIX + "GRU", "RNN": ONNX_OP_PREFIX + "RNN",
}
_RECURRENT_OPS = ("LSTM", "GRU", "RNN")
# torch parameter names of the inputs of recurrent operators (W, R, B), with the layer index appended.
_RECURRENT_INPUTS = {1: "weight_ih", 2: "weight_hh", 3: "bias"}
_ANONYMOUS = "onnx::"
_INPUT_NAMES = {1: "weight", 2: "bias"}  # Gemm, MatMul, Conv: the input slot a weight (bias) takes


class OnnxSource(WeightSource):
    """Weight tensors of an ONNX file; external-data files are read tensor by tensor."""

    def __init__(self, path: Path) -> None:
        self.description = str(path)
        self._base_dir = str(path.parent)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, OSError, ValueError) as err:
            raise GateInputError(f"{path}: not a readable ONNX model (truncated or corrupt?): {err}") from err
        stored = {init.name: init for init in model.graph.initializer}
        stored.update(_constant_tensors(model.graph))
        if not stored:
            raise GateInputError(
                f"{path}: the ONNX graph has neither initializers nor Constant tensors, so there are no weights to analyse"
            )
        consumers = _consumers(model.graph)
        unread = len(model.graph.node)
        stored = dict(sorted(stored.items(), key=lambda item: consumers[item[0]][3] if item[0] in consumers else unread))
        readable_names = _torch_names(stored, consumers)
        self._tensors = {readable_names.get(name, name): tensor for name, tensor in stored.items()}
        self._transposed = {readable_names[name] for name in readable_names
                            if consumers[name][0].op_type == "MatMul" and len(stored[name].dims) == 2}
        self._infos = []
        for name, tensor in stored.items():
            shape = tuple(int(d) for d in tensor.dims)
            listed = readable_names.get(name, name)
            self._infos.append(TensorInfo(listed, shape[::-1] if listed in self._transposed else shape,
                                          _onnx_dtype_name(tensor.data_type), _module_type(consumers.get(name))))

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        try:
            array = numpy_helper.to_array(self._tensors[name], base_dir=self._base_dir)
        except (OSError, ValueError) as err:
            raise GateInputError(f"{self.description}: cannot read weight tensor {name!r}: {err}") from err
        tensor = torch.from_numpy(np.array(array))  # a writable copy: protobuf-backed arrays are read-only
        return tensor.T.contiguous() if name in self._transposed else tensor

    def close(self) -> None:
        self._tensors.clear()


def _constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Tensors held by ``Constant`` nodes (attribute ``value``), under the name of their output."""
    tensors = {}
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for attribute in node.attribute:
            if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
                tensors[node.output[0]] = attribute.t
    return tensors


def _consumers(graph: onnx.GraphProto) -> dict[str, tuple[onnx.NodeProto, int, int, int]]:
    """For each value, its first consumer: the node, the input slot, for recurrent operators the
    layer number among the recurrent nodes of the same scope (torch's ``_l<k>``), and the node's
    position in the (topologically sorted) graph."""
    consumers: dict[str, tuple[onnx.NodeProto, int, int, int]] = {}
    recurrent_seen: dict[str, int] = defaultdict(int)
    for position, node in enumerate(graph.node):
        layer = 0
        if node.op_type in _RECURRENT_OPS:
            layer = recurrent_seen[_scope(node)]
            recurrent_seen[_scope(node)] += 1
        for slot, input_name in enumerate(node.input):
            consumers.setdefault(input_name, (node, slot, layer, position))
    return consumers


def _scope(node: onnx.NodeProto) -> str:
    """torch's exporter names nodes ``/module/path/Op``: the module path, dotted (``module.path``)."""
    parts = [part for part in node.name.split("/") if part]
    return ".".join(parts[:-1]) if node.name.startswith("/") and len(parts) > 1 else ""


def _torch_names(stored: dict[str, onnx.TensorProto], consumers: dict) -> dict[str, str]:
    """Anonymous tensors (``onnx::Op_n``, ``135``) -> the torch parameter name their consumer's scope
    gives, or a name after the consuming node itself."""
    renamed: dict[str, str] = {}
    taken = set(stored)
    for name in stored:
        if not (name.startswith(_ANONYMOUS) or name.isdigit()) or name not in consumers:
            continue
        node, slot, layer, position = consumers[name]
        scope = _scope(node) or _node_label(node, position)
        if node.op_type in _RECURRENT_OPS:
            if slot not in _RECURRENT_INPUTS:
                continue
            candidate = f"{scope}.{_RECURRENT_INPUTS[slot]}_l{layer}"
        else:
            candidate = f"{scope}.{_INPUT_NAMES.get(slot, f'input_{slot}')}"
        if candidate not in taken:
            renamed[name] = candidate
            taken.add(candidate)
    return renamed


def _node_label(node: onnx.NodeProto, position: int) -> str:
    """A node without a module scope, as a name: ``/MatMul_1`` -> ``MatMul_1``; unnamed: ``<Op>_<position>``."""
    label = ".".join(part for part in node.name.split("/") if part)
    return label or f"{node.op_type}_{position}"


def _module_type(consumer: tuple[onnx.NodeProto, int, int, int] | None) -> str | None:
    if consumer is None:
        return None
    node, slot, _, _ = consumer
    if node.op_type in _RECURRENT_OPS and slot not in _RECURRENT_INPUTS:
        return ONNX_RECURRENT_STATE  # sequence_lens, initial_h, initial_c
    return _OP_TO_MODULE.get(node.op_type, node.op_type)


def _onnx_dtype_name(data_type: int) -> str:
    if data_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    return str(onnx.helper.tensor_dtype_to_np_dtype(data_type))
