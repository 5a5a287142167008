"""The ``quantization_config`` of a checkpoint's config.json, reduced to what dequantization needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.errors import GateInputError

DEFAULT_BLOCK = (128, 128)  # DeepSeek-V3 and transformers' FineGrainedFP8 default weight_block_size


@dataclass(frozen=True)
class QuantizationConfig:
    """``method``: ``gptq``, ``awq``, ``fp8``, ``compressed-tensors``... or ``None`` (no config:
    layouts are recognised from tensor names and shapes). ``v1_zeros``: GPTQ's original checkpoint
    format stores zero points minus one (``checkpoint_format`` ``gptq``; ``gptq_v2`` does not)."""

    method: str | None = None
    bits: int | None = None
    group_size: int | None = None
    block: tuple[int, int] = DEFAULT_BLOCK
    v1_zeros: bool = True

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> "QuantizationConfig":
        block = raw.get("weight_block_size") or DEFAULT_BLOCK
        if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise GateInputError(f"{where}: quantization_config.weight_block_size must be two positive integers, not {block!r}")
        bits = raw.get("bits", raw.get("w_bit"))
        group = raw.get("group_size", raw.get("q_group_size"))
        return cls(
            method=str(raw.get("quant_method", "")).lower() or None,
            bits=int(bits) if bits is not None else None,
            group_size=int(group) if group is not None else None,
            block=(int(block[0]), int(block[1])),
            v1_zeros=str(raw.get("checkpoint_format", "gptq")).lower() != "gptq_v2",
        )


def read_quantization_config(directory: Path) -> QuantizationConfig:
    """The config next to the weights (``config.json``; AutoGPTQ also writes ``quantize_config.json``)."""
    for name, nested in (("config.json", True), ("quantize_config.json", False), ("quant_config.json", False)):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise GateInputError(f"{path}: unreadable JSON ({err}); fix or remove the file") from err
        raw = data.get("quantization_config") if nested and isinstance(data, dict) else data
        if isinstance(raw, dict):
            return QuantizationConfig.from_dict(raw, str(path))
    return QuantizationConfig()


def read_model_config(directory: Path) -> dict[str, Any]:
    """config.json beside the weights, as data (an empty mapping without one; read_quantization_config
    has already refused an unreadable one)."""
    path = directory / "config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GateInputError(f"{path}: unreadable JSON ({err}); fix or remove the file") from err
    return data if isinstance(data, dict) else {}
