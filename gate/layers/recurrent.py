"""Recurrent weights (torch's LSTM/GRU/RNN and their cells, ONNX's LSTM/GRU/RNN operators): stacked
gate matrices cut into one matrix per gate (and per direction), named with torch's gate letters."""

from __future__ import annotations

import re

from gate.layers.plan import RECURRENT, LayerPlan
from gate.sources.base import ONNX_OP_PREFIX, TensorInfo

RECURRENT_WEIGHT = re.compile(r"(^|\.)weight_(ih|hh)(_l\d+(_reverse)?)?$")  # LSTM/GRU/RNN and their *Cell


_GATE_NAMES = {4: ("i", "f", "g", "o"), 3: ("r", "z", "n"), 1: ("h",)}


# torch's modules; Keras's LSTM/GRU (same class names) and SimpleRNN, whose kernels the Keras reader
# (gate/sources/keras/roles.py) hands over stacked in torch's layout and gate order.
_RECURRENT_GATES = {"LSTM": 4, "LSTMCell": 4, "GRU": 3, "GRUCell": 3, "RNN": 1, "RNNCell": 1,
                    "SimpleRNN": 1, "SimpleRNNCell": 1}


# ONNX recurrent operators (module types given by the ONNX source). Gate order is ONNX's (LSTM
# i,o,f,c; GRU z,r,h), named with torch's letters: ONNX's cell gate c is torch's g, GRU's h is torch's n.
_ONNX_GATES = {"LSTM": ("i", "o", "f", "g"), "GRU": ("z", "r", "n"), "RNN": ("h",)}


_ONNX_RECURRENT = {ONNX_OP_PREFIX + op for op in _ONNX_GATES}


_ONNX_EXPORT_NAME = re.compile(r"^onnx::(LSTM|GRU|RNN)_\d+$")  # torch.onnx.export's anonymous inputs


def recurrent_plans(info: TensorInfo, by_name: dict[str, TensorInfo], start: int):
    """Split stacked gate weights of torch's LSTM/GRU/RNN and their cells (LSTM: i,f,g,o; GRU: r,z,n)
    into one matrix per gate."""
    rows, cols = info.shape
    hh_name = RECURRENT_WEIGHT.sub(lambda m: m.group(0).replace("weight_ih", "weight_hh"), info.name)
    hidden = by_name[hh_name].shape[1] if hh_name in by_name and len(by_name[hh_name].shape) == 2 else None
    gates = _RECURRENT_GATES.get(info.module_type or "")
    if gates is None and hidden:
        gates = rows // hidden if rows % hidden == 0 else None
    base = info.name.removesuffix(".weight")
    if gates not in _GATE_NAMES or rows % gates:
        yield LayerPlan(start, base, info.name, RECURRENT, info.shape, max(info.shape), min(info.shape), 1,
                        skip_reason="recurrent weight whose gate layout cannot be inferred (expected LSTM/GRU/RNN)",
                        module_type=info.module_type)
        return
    size = rows // gates
    for k, gate in enumerate(_GATE_NAMES[gates]):
        rows_slice = slice(k * size, (k + 1) * size)
        yield LayerPlan(start + k, f"{base}.{gate}", info.name, RECURRENT, info.shape, max(size, cols),
                        min(size, cols), 1, slices=((rows_slice, slice(None)),), module_type=info.module_type)


def onnx_recurrent_op(info: TensorInfo) -> str | None:
    """``LSTM``/``GRU``/``RNN`` for an ONNX recurrent operator's input: named by the ONNX source, or
    by torch's exporter (``onnx::LSTM_12``) in a copy of the initializers."""
    if info.module_type in _ONNX_RECURRENT:
        return info.module_type.removeprefix(ONNX_OP_PREFIX)
    match = _ONNX_EXPORT_NAME.match(info.name) if info.module_type is None else None
    return match.group(1) if match else None


def onnx_recurrent_plans(info: TensorInfo, op: str, start: int):
    """ONNX W [dirs, gates*hidden, input] and R [dirs, gates*hidden, hidden]: one matrix per direction
    and gate, cut in ONNX's gate order and named with torch's letters so containers match."""
    directions, stacked, cols = info.shape
    gates = _ONNX_GATES[op]
    base = info.name.removesuffix(".weight")
    if stacked % len(gates):
        yield LayerPlan(start, base, info.name, RECURRENT, info.shape, max(info.shape), min(info.shape), 1,
                        skip_reason=f"ONNX {op} weight whose rows {stacked} do not split into {len(gates)} gates",
                        module_type=info.module_type)
        return
    size = stacked // len(gates)
    index = start
    for direction in range(directions):
        suffix = "_reverse" if direction else ""
        for k, gate in enumerate(gates):
            rows_slice = slice(k * size, (k + 1) * size)
            yield LayerPlan(index, f"{base}{suffix}.{gate}", info.name, RECURRENT, info.shape, max(size, cols),
                            min(size, cols), 1, slices=((direction, rows_slice, slice(None)),),
                            module_type=info.module_type)
            index += 1
