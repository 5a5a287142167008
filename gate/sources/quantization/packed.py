"""GPTQ and AWQ: integers of ``bits`` bits packed eight (4-bit) to an int32, with per-group scales
and zero points. W = (q - z) * s, group g of input row i given by ``g_idx[i]`` (GPTQ) or ``i // group``.

GPTQ (AutoGPTQ / GPTQModel / transformers): ``qweight`` [in * bits / 32, out] packs consecutive
*input* rows into one int32, row ``8k + j`` in bits ``4j..4j+3``; ``qzeros`` [groups, out * bits / 32]
packs output columns the same way; ``scales`` [groups, out]; ``g_idx`` [in] (act-order checkpoints
permute it). The original format (``checkpoint_format: gptq``) stores zero points minus one, so 1 is
added back; ``gptq_v2`` stores them as they are.

AWQ (AutoAWQ GEMM): ``qweight`` [in, out / 8] packs *output* columns, nibble ``j`` of int32 column
``c`` holding column ``8c + order[j]`` with order [0, 2, 4, 6, 1, 3, 5, 7]; ``qzeros`` [groups, out / 8]
likewise; ``scales`` [groups, out]; no offset on the zeros.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_UNDO_ORDER = tuple(AWQ_ORDER.index(k) for k in range(8))  # (0, 4, 1, 5, 2, 6, 3, 7)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] int32 -> [R * 32/bits, C]: value j of word (r, c) becomes row r * 32/bits + j."""
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32).reshape(1, per_word, 1)
    values = (packed.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0] * per_word, packed.shape[1])


def unpack_columns(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] int32 -> [R, C * 32/bits]: value j of word (r, c) becomes column c * 32/bits + j."""
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32).reshape(1, 1, per_word)
    values = (packed.to(torch.int32).unsqueeze(2) >> shifts) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0], packed.shape[1] * per_word)


def dequantize_gptq(parts: Mapping[str, torch.Tensor], bits: int, group_size: int, v1_zeros: bool) -> torch.Tensor:
    """float32 W [out, in] from a GPTQ family."""
    weights = unpack_rows(parts["qweight"], bits)  # [in, out]
    zeros = unpack_columns(parts["qzeros"], bits) + (1 if v1_zeros else 0)  # [groups, out]
    g_idx = parts["g_idx"].to(torch.long) if "g_idx" in parts else torch.arange(weights.shape[0]) // group_size
    scales = parts["scales"].to(torch.float32)
    result = (weights - zeros[g_idx]).to(torch.float32).mul_(scales[g_idx])
    return result.T.contiguous()


def dequantize_awq(parts: Mapping[str, torch.Tensor], bits: int, group_size: int) -> torch.Tensor:
    """float32 W [out, in] from an AWQ GEMM family."""
    order = torch.tensor(AWQ_UNDO_ORDER)
    weights = unpack_columns(parts["qweight"], bits)  # [in, out], columns in AWQ's packing order
    zeros = unpack_columns(parts["qzeros"], bits)
    undo = (torch.arange(weights.shape[1]).reshape(-1, 8)[:, order]).reshape(-1)
    weights, zeros = weights[:, undo], zeros[:, undo]
    groups = torch.arange(weights.shape[0]) // group_size
    result = (weights - zeros[groups]).to(torch.float32).mul_(parts["scales"].to(torch.float32)[groups])
    return result.T.contiguous()
