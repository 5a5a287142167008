"""llama.cpp GGUF files written with gguf's own GGUFWriter, read back and analysed.

F32/F16/BF16/Q8_0/Q4_0 are quantized by ``gguf.quants.quantize``; gguf 0.19 cannot quantize K-quants
in Python, so Q4_K and Q6_K blocks are crafted byte by byte. The reference matrices are decoded here
in float64 from llama.cpp's block layouts (ggml-quants.c dequantize_row_*), not by gguf.
"""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

from gate.cli.app import main
from gate.scanning.pipeline import scan

RNG = np.random.default_rng(11)
QK_K = 256


def f16(raw: np.ndarray) -> np.ndarray:
    return raw.view("<f2").astype(np.float64)


def decode_q8_0(blocks: np.ndarray) -> np.ndarray:
    d = f16(blocks[:, :2].copy())
    return d * blocks[:, 2:].view(np.int8).astype(np.float64)


def decode_q4_0(blocks: np.ndarray) -> np.ndarray:
    d = f16(blocks[:, :2].copy())
    qs = blocks[:, 2:].astype(np.int64)
    return d * np.concatenate([(qs & 0xF) - 8, (qs >> 4) - 8], axis=1)


def decode_q4_k(blocks: np.ndarray) -> np.ndarray:
    """Per 256-value block: d, dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of nibbles."""
    out = np.empty((len(blocks), QK_K))
    for n, block in enumerate(blocks.astype(np.int64)):
        d, dmin = f16(blocks[n, 0:2].copy())[0], f16(blocks[n, 2:4].copy())[0]
        scales, qs = block[4:16], block[16:144]

        def scale_min(j):
            if j < 4:
                return scales[j] & 63, scales[j + 4] & 63
            return ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
                    (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))

        for chunk in range(4):  # 64 values: 32 low nibbles, then 32 high nibbles of the same bytes
            sc1, m1 = scale_min(2 * chunk)
            sc2, m2 = scale_min(2 * chunk + 1)
            q = qs[32 * chunk:32 * chunk + 32]
            out[n, 64 * chunk:64 * chunk + 32] = d * sc1 * (q & 0xF) - dmin * m1
            out[n, 64 * chunk + 32:64 * chunk + 64] = d * sc2 * (q >> 4) - dmin * m2
    return out


def decode_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Per 256-value block: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, d (f16)."""
    out = np.empty((len(blocks), QK_K))
    for n in range(len(blocks)):
        block = blocks[n].astype(np.int64)
        ql, qh = block[0:128], block[128:192]
        sc = blocks[n, 192:208].view(np.int8).astype(np.int64)
        d = f16(blocks[n, 208:210].copy())[0]
        for half in range(2):
            l_, h_, s_ = ql[64 * half:], qh[32 * half:], sc[8 * half:]
            y = out[n, 128 * half:]
            for l in range(32):
                is_ = l // 16
                q1 = ((l_[l] & 0xF) | (((h_[l] >> 0) & 3) << 4)) - 32
                q2 = ((l_[l + 32] & 0xF) | (((h_[l] >> 2) & 3) << 4)) - 32
                q3 = ((l_[l] >> 4) | (((h_[l] >> 4) & 3) << 4)) - 32
                q4 = ((l_[l + 32] >> 4) | (((h_[l] >> 6) & 3) << 4)) - 32
                y[l], y[l + 32] = d * s_[is_] * q1, d * s_[is_ + 2] * q2
                y[l + 64], y[l + 96] = d * s_[is_ + 4] * q3, d * s_[is_ + 6] * q4
    return out


def crafted_k_blocks(rows: int, cols: int, qtype) -> np.ndarray:
    """Random K-quant blocks with sane scale factors, as byte rows [rows, cols/256 * type_size]."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    count = rows * cols // QK_K
    blocks = RNG.integers(0, 256, (count, type_size), dtype=np.uint8)
    if qtype == T.Q4_K:
        blocks[:, 0:2] = np.full(count, 0.01, "<f2").view(np.uint8).reshape(count, 2)
        blocks[:, 2:4] = np.full(count, 0.002, "<f2").view(np.uint8).reshape(count, 2)
    else:
        blocks[:, 192:208] = RNG.integers(-60, 60, (count, 16)).astype(np.int8).view(np.uint8)
        blocks[:, 208:210] = np.full(count, 0.001, "<f2").view(np.uint8).reshape(count, 2)
    return blocks.reshape(rows, -1)


def reference_evals(matrix: np.ndarray) -> np.ndarray:
    matrix = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    return np.sort(np.clip(np.linalg.eigvalsh(matrix.T @ matrix), 0, None))


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    """A llama-named GGUF with one tensor per type; returns (path, {tensor name: float64 matrix})."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    base = RNG.standard_normal((96, 256)).astype(np.float32) * 0.05  # [out, in]; GGUF dims [256, 96]
    expected = {}
    writer.add_tensor("token_embd.weight", base[:, :64].copy())
    expected["token_embd.weight"] = base[:, :64].astype(np.float64)
    writer.add_tensor("blk.0.attn_v.weight", base.astype(np.float16))
    expected["blk.0.attn_v.weight"] = base.astype(np.float16).astype(np.float64)
    bf16 = gguf.quants.quantize(base, T.BF16)
    writer.add_tensor("blk.0.attn_k.weight", bf16, raw_dtype=T.BF16)
    expected["blk.0.attn_k.weight"] = (bf16.view("<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    for name, qtype, decode in (("blk.0.attn_q.weight", T.Q8_0, decode_q8_0),
                                ("blk.0.attn_output.weight", T.Q4_0, decode_q4_0)):
        raw = gguf.quants.quantize(base, qtype)
        writer.add_tensor(name, raw, raw_dtype=qtype)
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        expected[name] = decode(raw.reshape(-1, type_size)).reshape(base.shape)
    for name, qtype, decode in (("blk.0.ffn_up.weight", T.Q4_K, decode_q4_k),
                                ("blk.0.ffn_down.weight", T.Q6_K, decode_q6_k)):
        raw = crafted_k_blocks(96, 256, qtype)
        writer.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = decode(raw.reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])).reshape(96, 256)
    writer.add_tensor("blk.0.ffn_gate.weight", np.zeros((96, gguf.GGML_QUANT_SIZES[T.Q8_K][1]), np.uint8),
                      raw_dtype=T.Q8_K)  # gguf 0.19 has no Q8_K dequantization
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(256, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, expected


def test_gguf_types_dequantize_to_the_independent_decoding(gguf_model):
    path, expected = gguf_model
    result = scan(str(path), device="cpu", keep_spectra=True)
    rows = result.layers.set_index("name")
    schemes = {"token_embd": "none", "blk.0.attn_v": "none", "blk.0.attn_k": "none",
               "blk.0.attn_q": "gguf_q8_0", "blk.0.attn_output": "gguf_q4_0", "blk.0.ffn_up": "gguf_q4_k",
               "blk.0.ffn_down": "gguf_q6_k"}
    for name, scheme in schemes.items():
        row = rows.loc[name]
        assert row["status"] == "ok", (name, row["reason"])
        assert row["quantization"] == scheme
        matrix = expected[f"{name}.weight"]
        assert row["shape"] == list(matrix.shape)  # GGUF's innermost-first dims, reversed
        evals = reference_evals(matrix)
        np.testing.assert_allclose(result.spectra[name], evals, rtol=0, atol=1e-5 * evals.max(), err_msg=name)
        assert row["log_spectral_norm"] == pytest.approx(math.log10(evals.max()), abs=1e-5)
    assert rows.loc["token_embd", "layer_type"] == "embedding"
    assert rows.loc["blk.0.attn_q", "layer_type"] == "dense"


def test_gguf_type_without_dequantization_is_a_skipped_row_naming_it(gguf_model):
    path, _ = gguf_model
    rows = scan(str(path), device="cpu", benford=False).layers.set_index("name")
    assert rows.loc["blk.0.ffn_gate", "status"] == "skipped"
    assert "GGUF type Q8_K" in rows.loc["blk.0.ffn_gate", "reason"]
    assert "blk.0.attn_norm" not in rows.index  # a vector, not a matrix


def test_truncated_gguf_exits_2_naming_the_file(gguf_model, tmp_path):
    path, _ = gguf_model
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(path.read_bytes()[:-1000])
    outcome = CliRunner().invoke(main, ["scan", str(truncated)])
    assert outcome.exit_code == 2
    assert str(truncated) in outcome.output and "truncated" in outcome.output


def test_gguf_expert_stacks_are_read_by_the_expert_count(tmp_path):
    """A MoE GGUF: ffn_*_exps stacks hold E experts (numpy [E, out, in]; GGUF dims innermost first),
    and the metadata's <arch>.expert_count says so. Each expert becomes its own dense row; without the
    count the stacks (no router inside their module, no channel chain) stay unread, with the reason."""
    def write(path, experts: int | None):
        writer = gguf.GGUFWriter(str(path), "qwen2moe")
        writer.add_block_count(1)
        if experts is not None:
            writer.add_expert_count(experts)
        stack = RNG.standard_normal((4, 48, 64)).astype(np.float32)
        writer.add_tensor("blk.0.ffn_gate_exps.weight", stack)
        writer.add_tensor("blk.0.ffn_down_exps.weight", np.ascontiguousarray(stack.transpose(0, 2, 1)[:, :, :40]))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return stack

    stack = write(tmp_path / "moe.gguf", 4)
    layers = scan(tmp_path / "moe.gguf", device="cpu").layers.set_index("name")
    gate_rows = layers[layers["tensor"] == "blk.0.ffn_gate_exps.weight"]
    assert list(gate_rows.index) == [f"blk.0.ffn_gate_exps.{e}.weight" for e in range(4)]
    assert set(gate_rows["N"]) == {64} and set(gate_rows["M"]) == {48} and set(gate_rows["status"]) == {"ok"}
    top = float(np.linalg.svd(stack[2].astype(np.float64), compute_uv=False)[0] ** 2)
    assert gate_rows.loc["blk.0.ffn_gate_exps.2.weight", "lambda_max"] == pytest.approx(top, rel=1e-5)
    write(tmp_path / "bare.gguf", None)
    bare = scan(tmp_path / "bare.gguf", device="cpu").layers
    assert set(bare["status"]) == {"skipped"} and bare["reason"].str.contains("expert stack").all()
