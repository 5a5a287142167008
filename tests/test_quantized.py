"""Quantized checkpoints (FP8, INT8, GPTQ, AWQ) in their on-disk layouts, dequantized and analysed.

Every reference here is independent of gate.sources.quantization: FP8 bytes are decoded bit by bit, GPTQ and
AWQ words are packed by loops written from those projects' documented layouts, the dequantized
matrices are formed in numpy float64, and their spectra come from numpy's eigvalsh.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gate.scanning.pipeline import scan
from gate.sources import open_source

RNG = np.random.default_rng(7)


def decode_fp8(raw: np.ndarray, exponent_bits: int) -> np.ndarray:
    """float8 bytes -> float64 by the IEEE-like bit layout (e4m3fn: bias 7, no infinities; e5m2: bias 15)."""
    raw = raw.astype(np.int64)
    mantissa_bits = 7 - exponent_bits
    bias = 2 ** (exponent_bits - 1) - 1
    sign = np.where(raw >> 7, -1.0, 1.0)
    exponent = (raw >> mantissa_bits) & (2**exponent_bits - 1)
    mantissa = raw & (2**mantissa_bits - 1)
    normal = (1 + mantissa / 2**mantissa_bits) * 2.0 ** (exponent - bias)
    subnormal = (mantissa / 2**mantissa_bits) * 2.0 ** (1 - bias)
    return sign * np.where(exponent == 0, subnormal, normal)


def fp8_bytes(tensor: torch.Tensor) -> np.ndarray:
    return tensor.view(torch.uint8).numpy()


def reference_evals(matrix: np.ndarray) -> np.ndarray:
    matrix = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    return np.sort(np.clip(np.linalg.eigvalsh(matrix.T @ matrix), 0, None))


def assert_row_matches(result, name: str, matrix: np.ndarray, scheme: str) -> None:
    """The analysed spectrum, stable rank and spectral norm equal the float64 reference's."""
    row = result.layers.set_index("name").loc[name]
    assert row["status"] == "ok", row["reason"]
    assert row["quantization"] == scheme
    evals = reference_evals(matrix)
    got = result.spectra[name]
    np.testing.assert_allclose(got, evals, rtol=0, atol=2e-5 * evals.max())
    assert row["stable_rank"] == pytest.approx(evals.sum() / evals.max(), rel=1e-4)
    assert row["log_spectral_norm"] == pytest.approx(math.log10(evals.max()), abs=1e-5)


def write_model(directory: Path, tensors: dict[str, torch.Tensor], quantization_config: dict | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "model.safetensors")
    config = {"model_type": "llama"}
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_fp8_block_channel_and_tensor_scales_dequantize_exactly(tmp_path):
    out, inp = 300, 200  # not multiples of 128: the last blocks are partial
    weight = torch.from_numpy(RNG.standard_normal((out, inp)) * 0.05).float()
    block_scale = torch.rand(3, 2) * 0.02 + 0.01  # DeepSeek-V3 weight_scale_inv: W = fp8 * scale per 128x128 block
    expanded = block_scale.repeat_interleave(128, 0)[:out].repeat_interleave(128, 1)[:, :inp]
    block_q = (weight / expanded).to(torch.float8_e4m3fn)
    channel_scale = torch.rand(96, 1) * 0.01 + 0.001  # compressed-tensors channel strategy, e5m2 storage
    channel_q = (torch.randn(96, 64) * 0.1 / channel_scale).to(torch.float8_e5m2)
    tensor_q = (torch.randn(64, 80)).to(torch.float8_e4m3fn)
    path = write_model(tmp_path / "fp8", {
        "model.layers.0.mlp.up_proj.weight": block_q,
        "model.layers.0.mlp.up_proj.weight_scale_inv": block_scale,
        "model.layers.0.self_attn.q_proj.weight": channel_q,
        "model.layers.0.self_attn.q_proj.weight_scale": channel_scale,
        "model.layers.0.self_attn.k_proj.weight": tensor_q,
        "model.layers.0.self_attn.k_proj.weight_scale": torch.tensor([0.03]),
        "model.layers.0.self_attn.k_proj.input_scale": torch.tensor([1.0]),
        "model.layers.0.self_attn.o_proj.weight": torch.randn(64, 64),
    }, {"quant_method": "fp8", "weight_block_size": [128, 128], "fmt": "e4m3"})
    result = scan(str(path), device="cpu", keep_spectra=True)

    scale64 = block_scale.double().numpy()
    block_ref = decode_fp8(fp8_bytes(block_q), 4).copy()
    for i in range(3):
        for j in range(2):
            block_ref[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= scale64[i, j]
    assert_row_matches(result, "model.layers.0.mlp.up_proj", block_ref, "fp8_e4m3/block128x128")
    channel_ref = decode_fp8(fp8_bytes(channel_q), 5) * channel_scale.double().numpy()
    assert_row_matches(result, "model.layers.0.self_attn.q_proj", channel_ref, "fp8_e5m2/per_channel")
    tensor_ref = decode_fp8(fp8_bytes(tensor_q), 4) * float(np.float32(0.03))
    assert_row_matches(result, "model.layers.0.self_attn.k_proj", tensor_ref, "fp8_e4m3/per_tensor")
    assert result.layers.set_index("name").loc["model.layers.0.self_attn.o_proj", "quantization"] == "none"


def test_int8_compressed_tensors_channel_scales_with_zero_points(tmp_path):
    q = torch.randint(-128, 128, (128, 48), dtype=torch.int8)
    scale = torch.rand(128, 1) * 0.01 + 0.001
    zero = torch.randint(-5, 6, (128, 1), dtype=torch.int8)
    sym_q = torch.randint(-128, 128, (40, 72), dtype=torch.int8)
    sym_scale = torch.rand(40, 1, dtype=torch.bfloat16) * 0.01
    path = write_model(tmp_path / "int8", {
        "model.layers.0.mlp.down_proj.weight": q,
        "model.layers.0.mlp.down_proj.weight_scale": scale,
        "model.layers.0.mlp.down_proj.weight_zero_point": zero,
        "model.layers.0.mlp.gate_proj.weight": sym_q,
        "model.layers.0.mlp.gate_proj.weight_scale": sym_scale,
    }, {"quant_method": "compressed-tensors", "format": "int-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}}})
    result = scan(str(path), device="cpu", keep_spectra=True)
    asym = (q.numpy().astype(np.float64) - zero.numpy()) * scale.double().numpy()
    assert_row_matches(result, "model.layers.0.mlp.down_proj", asym, "int8/per_channel/asymmetric")
    sym = sym_q.numpy().astype(np.float64) * sym_scale.double().numpy()
    assert_row_matches(result, "model.layers.0.mlp.gate_proj", sym, "int8/per_channel")


def pack_gptq(values: np.ndarray) -> np.ndarray:
    """[in, out] 4-bit values -> qweight [in/8, out]: input row 8k+j in bits 4j..4j+3 of word k."""
    packed = np.zeros((values.shape[0] // 8, values.shape[1]), dtype=np.uint32)
    for row in range(values.shape[0]):
        packed[row // 8] |= values[row].astype(np.uint32) << np.uint32(4 * (row % 8))
    return packed.view(np.int32)


def pack_columns(values: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """[R, C] 4-bit values -> [R, C/8]: nibble j of word c holds column 8c + order[j]."""
    packed = np.zeros((values.shape[0], values.shape[1] // 8), dtype=np.uint32)
    for col in range(values.shape[1] // 8):
        for j in range(8):
            packed[:, col] |= values[:, 8 * col + order[j]].astype(np.uint32) << np.uint32(4 * j)
    return packed.view(np.int32)


def test_gptq_act_order_v1_zeros(tmp_path):
    inp, out, group = 256, 96, 32
    groups = inp // group
    values = RNG.integers(0, 16, (inp, out))
    zeros = RNG.integers(1, 16, (groups, out))  # the true zero points; v1 checkpoints store zero - 1
    scales = (RNG.random((groups, out)) * 0.02 + 0.005).astype(np.float16)
    g_idx = RNG.permutation(np.arange(inp) // group)  # act-order: groups follow a column permutation
    path = write_model(tmp_path / "gptq", {
        "model.layers.0.mlp.up_proj.qweight": torch.from_numpy(pack_gptq(values)),
        "model.layers.0.mlp.up_proj.qzeros": torch.from_numpy(pack_columns(zeros - 1, tuple(range(8)))),
        "model.layers.0.mlp.up_proj.scales": torch.from_numpy(scales),
        "model.layers.0.mlp.up_proj.g_idx": torch.from_numpy(g_idx.astype(np.int32)),
        "model.layers.0.mlp.up_proj.bias": torch.zeros(out, dtype=torch.float16),
    }, {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": True, "sym": False,
        "checkpoint_format": "gptq"})
    result = scan(str(path), device="cpu", keep_spectra=True)
    reference = (values - zeros[g_idx]) * scales.astype(np.float64)[g_idx]  # [in, out]
    assert_row_matches(result, "model.layers.0.mlp.up_proj", reference.T, "gptq_int4/g32")
    assert result.layers.iloc[0]["shape"] == [out, inp]


def test_awq_gemm_packing_order(tmp_path):
    inp, out, group = 256, 96, 64
    groups = inp // group
    values = RNG.integers(0, 16, (inp, out))
    zeros = RNG.integers(0, 16, (groups, out))
    scales = (RNG.random((groups, out)) * 0.02 + 0.005).astype(np.float16)
    order = (0, 2, 4, 6, 1, 3, 5, 7)
    path = write_model(tmp_path / "awq", {
        "model.layers.0.self_attn.v_proj.qweight": torch.from_numpy(pack_columns(values, order)),
        "model.layers.0.self_attn.v_proj.qzeros": torch.from_numpy(pack_columns(zeros, order)),
        "model.layers.0.self_attn.v_proj.scales": torch.from_numpy(scales),
    }, {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm", "zero_point": True})
    result = scan(str(path), device="cpu", keep_spectra=True)
    rows = np.arange(inp) // group
    reference = (values - zeros[rows]) * scales.astype(np.float64)[rows]
    assert_row_matches(result, "model.layers.0.self_attn.v_proj", reference.T, "awq_int4/g64")


def test_missing_or_misshaped_scales_are_skipped_and_every_tensor_is_accounted_for(tmp_path):
    tensors = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(64, 32).to(torch.float8_e4m3fn),  # no scale
        "model.layers.0.mlp.down_proj.weight": torch.randn(64, 32).to(torch.float8_e4m3fn),
        "model.layers.0.mlp.down_proj.weight_scale_inv": torch.ones(2, 2),  # blocks of 128: expected [1, 1]
        "model.layers.0.mlp.gate_proj.weight": torch.randint(-9, 9, (64, 32), dtype=torch.int8),  # no scale
        "model.layers.0.self_attn.q_proj.weight": torch.randint(-9, 9, (64, 32), dtype=torch.int8),
        "model.layers.0.self_attn.q_proj.weight_scale": torch.ones(63, 1),  # per channel needs 64
        "model.layers.0.self_attn.k_proj.qweight": torch.zeros(4, 64, dtype=torch.int32),  # no scales / qzeros
        "model.layers.0.self_attn.o_proj.weight": torch.randint(0, 255, (1024, 1), dtype=torch.uint8),  # bnb nf4
        "model.layers.0.self_attn.o_proj.weight.absmax": torch.ones(32),
        "model.layers.0.self_attn.o_proj.weight.quant_state.bitsandbytes__nf4": torch.zeros(60, dtype=torch.uint8),
        "model.layers.0.self_attn.v_proj.weight": torch.randn(64, 32),
        "model.layers.0.input_layernorm.weight": torch.ones(32),
    }
    path = write_model(tmp_path / "broken", tensors, None)
    result = scan(str(path), device="cpu")
    rows = result.layers.set_index("name")
    reasons = {name: rows.loc[name, "reason"] for name in rows.index if rows.loc[name, "status"] == "skipped"}
    assert "model.layers.0.mlp.up_proj.weight (float8_e4m3fn) has no model.layers.0.mlp.up_proj.weight_scale" \
        in reasons["model.layers.0.mlp.up_proj"]
    assert "weight_scale_inv has shape [2, 2]" in reasons["model.layers.0.mlp.down_proj"]
    assert "[1, 1]" in reasons["model.layers.0.mlp.down_proj"]
    assert "gate_proj.weight (int8) has no" in reasons["model.layers.0.mlp.gate_proj"]
    assert "weight_scale has shape [63, 1]" in reasons["model.layers.0.self_attn.q_proj"]
    assert "without model.layers.0.self_attn.k_proj.qzeros" in reasons["model.layers.0.self_attn.k_proj.qweight"]
    assert "uint8 weight in a quantized layout weightgate does not read" in reasons["model.layers.0.self_attn.o_proj"]
    assert rows.loc["model.layers.0.self_attn.v_proj", "status"] == "ok"
    # accounting: every stored tensor is a row's tensor, consumed by one, or a vector
    with open_source(str(path)) as source:
        infos = source.tensor_infos()
    planned = {info.name for info in infos if info.consumed_by is None and len(info.shape) >= 2}
    consumed = {info.name for info in infos if info.consumed_by is not None}
    vectors = {info.name for info in infos if len(info.shape) < 2}
    assert planned | consumed | vectors == set(tensors)
    assert len(result.layers) == len(planned)


def test_quantized_families_stream_one_tensor_at_a_time(tmp_path):
    """The view reads only a family's own parts when it dequantizes one weight."""
    path = write_model(tmp_path / "fp8", {
        f"model.layers.{i}.mlp.up_proj.{suffix}": tensor
        for i in range(3)
        for suffix, tensor in (("weight", torch.randn(32, 16).to(torch.float8_e4m3fn)), ("weight_scale", torch.ones(1)))
    }, None)
    with open_source(str(path)) as source:
        inner_reads: list[str] = []
        inner = source._inner
        original = inner.load
        inner.load = lambda name: inner_reads.append(name) or original(name)
        source.load("model.layers.1.mlp.up_proj.weight")
    assert inner_reads == ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight_scale"]
