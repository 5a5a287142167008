"""What a 3-D tensor that no module type explains is: a Conv1d kernel [out, in, k] or a stack of
expert matrices [E, out, in], read from every signal a file carries besides the module.

In order: the name (``experts.`` / ``conv``); the model's config.json (``num_experts``,
``num_local_experts``, ... equal to the first dimension; a convolution kernel size equal to the last);
the neighbouring tensors (an expert stack comes with a router [E, hidden] beside it, or a sibling
stack [E, b, a] of its [E, a, b]; a convolution stack chains its channels, the out-channels of one
kernel being the in-channels of the next, as [C, 1, k] -> [C, C, k] -> [1, C, k] do); and, without any
of those, a last dimension small enough to be a kernel only (<= CONV1D_MAX_KERNEL). Where the signals
disagree or none speaks, the tensor stays unread, with a reason saying which signals were looked at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gate.layers.experts import FUSED_EXPERTS_NAME
from gate.sources.base import TensorInfo

# A file's 3-D tensor that no module, name, config or neighbour explains is a Conv1d kernel only when
# its last dimension is this small: speech and sequence models use kernels of 2-10 (Whisper 3,
# wav2vec2's feature encoder 2-10, Mamba 4); stacks such as ONNX recurrent weights or fused experts
# end in a model width instead.
CONV1D_MAX_KERNEL = 16
CONV, EXPERTS = "conv", "experts"

_CONV_NAME = re.compile(r"conv", re.IGNORECASE)
# config.json keys (at any depth: text_config, audio_config...) that give the number of experts
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_layer")
# config.json keys whose integers (or lists of them) are convolution kernel sizes
_KERNEL_KEY = re.compile(r"(^|_)kernels?(_sizes?)?$|^conv_kernel|^num_conv_pos_embeddings$")


@dataclass(frozen=True)
class ModelHints:
    """What config.json says about 3-D tensors: expert counts and kernel sizes (empty without one)."""

    model_type: str | None = None
    expert_counts: frozenset[int] = frozenset()
    kernel_sizes: frozenset[int] = frozenset()

    @classmethod
    def of(cls, config: Mapping[str, Any] | None) -> ModelHints:
        experts: set[int] = set()
        kernels: set[int] = set()
        model_type = None
        for key, value in _walk(config or {}):
            if key == "model_type" and model_type is None and isinstance(value, str):
                model_type = value
            elif key in _EXPERT_COUNT_KEYS and _is_count(value) and value > 1:
                experts.add(value)
            elif _KERNEL_KEY.search(key):
                kernels.update(v for v in (value if isinstance(value, list) else [value]) if _is_count(v))
        return cls(model_type, frozenset(experts), frozenset(kernels))


@dataclass(frozen=True)
class Reading:
    """``kind``: CONV, EXPERTS or None (not read); ``why``: the signal that decided, or why none did."""

    kind: str | None
    why: str


def read_three_d(info: TensorInfo, neighbours: list[TensorInfo], by_name: dict[str, TensorInfo],
                 hints: ModelHints) -> Reading:
    """How a 3-D floating tensor without a module type is read. ``neighbours``: the model's 3-D
    floating tensors in storage order (``info`` among them)."""
    if FUSED_EXPERTS_NAME.search(info.name):
        return Reading(EXPERTS, "named as fused experts")
    if _CONV_NAME.search(info.name):
        return Reading(CONV, "named as a convolution")
    config_says = _config_reading(info, hints)
    if config_says is not None:
        return config_says
    last = info.shape[-1]
    expert_signs = _expert_signs(info, neighbours, by_name)
    conv_signs = _conv_signs(info, neighbours)
    if expert_signs and conv_signs:
        return Reading(None, f"3-D tensor {info.name} {list(info.shape)} of unknown kind: its neighbours suggest both "
                             f"an expert stack ({expert_signs}) and a convolution ({conv_signs})")
    if expert_signs:
        return Reading(EXPERTS, expert_signs)
    if last <= CONV1D_MAX_KERNEL:
        return Reading(CONV, f"last dimension {last} <= {CONV1D_MAX_KERNEL}: a kernel")
    if conv_signs:
        return Reading(CONV, conv_signs)
    return Reading(None, f"3-D tensor {info.name} {list(info.shape)} of unknown kind: its last dimension {last} is too "
                         f"large for a bare Conv1d kernel (<= {CONV1D_MAX_KERNEL}), and no name, config.json, router or "
                         "chain of channels with its neighbours says whether it is a convolution or an expert stack")


def _config_reading(info: TensorInfo, hints: ModelHints) -> Reading | None:
    first, _, last = info.shape
    experts = first in hints.expert_counts
    kernel = last in hints.kernel_sizes
    where = f"config.json ({hints.model_type})" if hints.model_type else "config.json"
    if experts and not kernel:
        return Reading(EXPERTS, f"{where}: {first} experts")
    if kernel and not experts:
        return Reading(CONV, f"{where}: kernel size {last}")
    return None


def _expert_signs(info: TensorInfo, neighbours: list[TensorInfo], by_name: dict[str, TensorInfo]) -> str:
    """A router [E, hidden] inside the module that holds the stack, or a sibling stack [E, b, a] of
    this [E, a, b] in it (a convolution's weight has only its bias beside it)."""
    experts, rows, cols = info.shape
    parent = _parent(info.name)
    if experts < 2:
        return ""
    for other in by_name.values():
        if (len(other.shape) == 2 and other.is_floating and other.shape[0] == experts and other.shape[1] in (rows, cols)
                and other.name.startswith(parent + ".")):
            return f"router {other.name} {list(other.shape)} beside it"
    for other in neighbours:
        if other is not info and _parent(other.name) == parent and other.shape == (experts, cols, rows) and rows != cols:
            return f"sibling stack {other.name} {list(other.shape)}"
    return ""


def _conv_signs(info: TensorInfo, neighbours: list[TensorInfo]) -> str:
    """The channels chain with the 3-D tensor before or after it: out-channels of one are the
    in-channels of the next (a width of 1 is no evidence: scalars per position chain trivially)."""
    at = next(i for i, other in enumerate(neighbours) if other is info)
    out_channels, in_channels, _ = info.shape
    before = neighbours[at - 1] if at > 0 else None
    after = neighbours[at + 1] if at + 1 < len(neighbours) else None
    if before is not None and in_channels > 1 and before.shape[0] == in_channels:
        return f"its {in_channels} in-channels are the out-channels of {before.name} {list(before.shape)}"
    if after is not None and out_channels > 1 and after.shape[1] == out_channels:
        return f"its {out_channels} out-channels are the in-channels of {after.name} {list(after.shape)}"
    return ""


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _walk(config: Mapping[str, Any]):
    """Every (key, value) of a nested config (sub-configs of multimodal models included)."""
    for key, value in config.items():
        yield key, value
        if isinstance(value, Mapping):
            yield from _walk(value)
