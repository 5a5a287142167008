"""llama.cpp GGUF files, read with the ``gguf`` package (PyPI) and dequantized by its own routines.

GGUF lists a tensor's dimensions innermost first (``ne[0]`` is the row length), so the float
matrix of ``blk.0.attn_q.weight`` with dims ``[in, out]`` is ``[out, in]``, the orientation of the
PyTorch weight it came from. The reader memory-maps the file; one tensor at a time is copied out
and dequantized. Block-quantized types the installed ``gguf`` cannot dequantize give skipped rows
that name the type.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource, natural_key

# llama.cpp tensor names -> the module kind the layer planner uses (2-D ones; the rest plan by shape).
_EMBEDDING_NAMES = re.compile(r"(^|\.)(token_embd|position_embd|token_types|tok_embd)\.weight$")
_LINEAR_NAMES = re.compile(
    r"(^|\.)(attn_q|attn_k|attn_v|attn_qkv|attn_output|attn_q_a|attn_q_b|attn_kv_a_mqa|attn_kv_b|ffn_up|ffn_gate|"
    r"ffn_down|ffn_up_exps|ffn_gate_exps|ffn_down_exps|ffn_up_shexp|ffn_gate_shexp|ffn_down_shexp|ffn_gate_inp|output)"
    r"\.weight$"
)
_FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_INTEGER_TYPES = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}
NOT_QUANTIZED = "none"


class GgufSource(WeightSource):
    """The tensors of one ``.gguf`` file."""

    def __init__(self, path: Path) -> None:
        import gguf

        self.description = str(path)
        self._gguf = gguf
        try:
            self._reader = gguf.GGUFReader(path)
        except (ValueError, IndexError, OSError, KeyError) as err:
            raise GateInputError(
                f"{path}: not a readable GGUF file (truncated or corrupt?): {err}; re-export or re-download it"
            ) from err
        self._tensors = {tensor.name: tensor for tensor in self._reader.tensors}
        self.model_config = self._model_config()
        self._infos = sorted((self._info(t) for t in self._reader.tensors), key=lambda info: natural_key(info.name))
        self._unreadable = {info.name for info in self._infos if info.skip_reason is not None}

    def _model_config(self) -> dict[str, object]:
        """What the metadata says about 3-D tensors, as config.json would: the architecture and its
        expert count (``<arch>.expert_count``), which tells expert stacks (``ffn_*_exps``) apart."""
        fields = self._reader.fields
        if "general.architecture" not in fields:
            return {}
        architecture = str(fields["general.architecture"].contents())
        count = fields.get(f"{architecture}.expert_count")
        return {"model_type": architecture, **({"num_experts": int(count.contents())} if count is not None else {})}

    def _info(self, tensor) -> TensorInfo:
        type_name = tensor.tensor_type.name
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF: innermost first
        module_type = ("Embedding" if _EMBEDDING_NAMES.search(tensor.name)
                       else "Linear" if _LINEAR_NAMES.search(tensor.name) and len(shape) == 2 else None)
        if type_name in _INTEGER_TYPES:
            return TensorInfo(tensor.name, shape, _INTEGER_TYPES[type_name], module_type)
        if type_name in _FLOAT_TYPES:
            return TensorInfo(tensor.name, shape, _FLOAT_TYPES[type_name], module_type, quantization=NOT_QUANTIZED)
        scheme = f"gguf_{type_name.lower()}"
        reason = None if self._can_dequantize(tensor.tensor_type) else (
            f"GGUF type {type_name} cannot be dequantized by the installed gguf package "
            f"{_gguf_version()}: no values to analyse")
        return TensorInfo(tensor.name, shape, "float32" if reason is None else type_name.lower(), module_type,
                          quantization=scheme, skip_reason=reason)

    def _can_dequantize(self, qtype) -> bool:
        """Asked of gguf itself, on one all-zero block (its public API has no capability list)."""
        _, type_size = self._gguf.GGML_QUANT_SIZES[qtype]
        try:
            self._gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
        except NotImplementedError:
            return False
        return True

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        tensor = self._tensors[name]
        type_name = tensor.tensor_type.name
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        if type_name in _INTEGER_TYPES or type_name in ("F32", "F16", "F64"):
            return torch.from_numpy(np.array(tensor.data)).reshape(shape)
        if name in self._unreadable:
            return torch.from_numpy(np.array(tensor.data))  # the stored blocks, for hashing only
        values = torch.from_numpy(np.ascontiguousarray(self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)))
        values = values.reshape(shape)
        return values.to(torch.bfloat16) if type_name == "BF16" else values  # exact: bf16 widened to f32

    def close(self) -> None:
        self._tensors.clear()  # the reader's memory map closes when its last view is gone
        self._reader = None


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")
