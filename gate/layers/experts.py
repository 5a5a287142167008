"""Mixture-of-experts weights: fused [E, ., .] expert stacks become one dense row per expert (and per
half of a fused gate_up_proj), named like the per-expert layout so that both layouts compare."""

from __future__ import annotations

import re

from gate.layers.plan import DENSE, LayerPlan
from gate.sources.base import TensorInfo

# Fused experts: transformers' *Experts modules hold [E, ., .] parameters named experts.<proj>.
FUSED_EXPERTS_NAME = re.compile(r"(^|\.)experts\.([A-Za-z_][A-Za-z0-9_]*?)(\.weight)?$")


_EXPERT_INDEX = re.compile(r"(?:^|\.)experts\.(\d+)\.")


def is_fused_experts(info: TensorInfo) -> bool:
    """By module type (transformers' *Experts modules); files' tensors are read in gate.layers.three_d."""
    return info.module_type is not None and info.module_type.endswith("Experts")


def fused_expert_plans(info: TensorInfo, by_name: dict[str, TensorInfo], start: int):
    """[E, a, b] expert stacks: one dense row per expert (and per half of a fused gate_up_proj),
    named like the per-expert layout (``experts.3.gate_proj``) so both layouts compare."""
    match = FUSED_EXPERTS_NAME.search(info.name)
    prefix, leaf = (info.name[:match.start(2) - 1], match.group(2)) if match else info.name.rsplit(".", 1)
    experts, rows, cols = info.shape
    parts: list[tuple[str, tuple]] = [(leaf, (slice(None), slice(None)))]
    if leaf == "gate_up_proj":
        split = _gate_up_split(info, by_name, prefix)
        if isinstance(split, str):
            yield LayerPlan(start, info.name, info.name, DENSE, info.shape, max(rows, cols), min(rows, cols), 1,
                            skip_reason=split, module_type=info.module_type)
            return
        parts = split
    index = start
    for expert in range(experts):
        for part_name, (row_slice, col_slice) in parts:
            part_rows = _slice_length(row_slice, rows)
            part_cols = _slice_length(col_slice, cols)
            yield LayerPlan(index, f"{prefix}.{expert}.{part_name}", info.name, DENSE, info.shape,
                            max(part_rows, part_cols), min(part_rows, part_cols), 1,
                            slices=((expert, row_slice, col_slice),), module_type=info.module_type,
                            columns=(("expert", expert),))
            index += 1


def _gate_up_split(info: TensorInfo, by_name: dict[str, TensorInfo], prefix: str) -> list[tuple[str, tuple]] | str:
    """Where gate and up sit in a fused [E, ., .] gate_up_proj, read off the down_proj beside it.

    [E, 2I, H] with down_proj [E, H, I] (Qwen3-MoE, Mixtral, DeepSeek in transformers 5): gate is
    the first half of the rows. [E, H, 2I] with down_proj [E, I, H] (GPT-OSS, Llama 4): the columns
    hold them, interleaved (gate = even columns) for GPT-OSS, whose experts carry a gate_up_proj_bias,
    else in halves. Returns the skip reason where the layout cannot be told.
    """
    down = by_name.get(f"{prefix}.down_proj") or by_name.get(f"{prefix}.down_proj.weight")
    _, rows, cols = info.shape
    whole = slice(None)
    if down is not None and len(down.shape) == 3:
        _, down_rows, down_cols = down.shape
        if rows == 2 * down_cols and cols == down_rows:
            half = rows // 2
            return [("gate_proj", (slice(0, half), whole)), ("up_proj", (slice(half, rows), whole))]
        if cols == 2 * down_rows and rows == down_cols:
            interleaved = (info.module_type or "").startswith("GptOss") or f"{prefix}.gate_up_proj_bias" in by_name
            if interleaved:
                return [("gate_proj", (whole, slice(0, cols, 2))), ("up_proj", (whole, slice(1, cols, 2)))]
            half = cols // 2
            return [("gate_proj", (whole, slice(0, half))), ("up_proj", (whole, slice(half, cols)))]
    return (f"fused {info.name} {list(info.shape)}: which axis holds gate and up cannot be told "
            "(no down_proj of matching shape beside it)")


def _slice_length(part: slice, length: int) -> int:
    return len(range(*part.indices(length)))


def expert_column(name: str) -> tuple[tuple[str, object], ...]:
    """Per-expert layouts (``experts.3.w1``, ``experts.3.gate_proj``) fill the same column as fused ones."""
    match = _EXPERT_INDEX.search(name)
    return (("expert", int(match.group(1))),) if match else ()
