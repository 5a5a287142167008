"""Benford first-digit extraction (exact, against Python's exact Decimal conversion), MLH and EIC."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
import scipy.stats
import torch

import gate
from gate.metrics.benford import BENFORD, DigitCounts, digit_counts, eic


def reference_counts(values: torch.Tensor) -> tuple[np.ndarray, int, int]:
    """Independent reference: Decimal(float) is the exact decimal value of the binary float."""
    counts = np.zeros(9, dtype=np.int64)
    zeros = nonfinite = 0
    for value in values.double().tolist():  # every float16/bfloat16/float32 is exact in float64
        if not math.isfinite(value):
            nonfinite += 1
        elif value == 0:
            zeros += 1
        else:
            counts[Decimal(abs(value)).as_tuple().digits[0] - 1] += 1
    return counts, zeros, nonfinite


def adversarial(dtype: torch.dtype) -> torch.Tensor:
    """d * 10^e rounded to the type, and its neighbours, over the type's whole range; subnormals;
    the extremes; zeros, NaN and infinities."""
    info = torch.finfo(dtype)
    low, high = math.floor(math.log10(info.smallest_normal)) - 8, math.ceil(math.log10(info.max))
    values = []
    for exponent in range(low, high + 1):
        for digit in range(1, 10):
            with np.errstate(over="ignore"):
                center = torch.tensor(float(Decimal(digit) * Decimal(10) ** exponent), dtype=torch.float64).to(dtype)
            if not torch.isfinite(center) or center == 0:
                continue
            up = torch.nextafter(center, torch.tensor(math.inf, dtype=dtype))
            down = torch.nextafter(center, torch.tensor(0.0, dtype=dtype))
            values += [center, up, down, -center]
    tiny = torch.tensor(info.smallest_normal, dtype=dtype)
    subnormals = [tiny / 2**k for k in range(1, 24)]
    specials = [torch.tensor(v, dtype=dtype) for v in (0.0, -0.0, math.nan, math.inf, -math.inf, info.max, info.tiny)]
    stacked = torch.stack(values + subnormals + specials)
    return stacked[torch.isnan(stacked) | (stacked == stacked)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_digits_exact_on_adversarial_values(dtype):
    values = adversarial(dtype)
    counts = digit_counts(values)
    expected, zeros, nonfinite = reference_counts(values)
    assert counts.counts.tolist() == expected.tolist()
    assert (counts.zeros, counts.nonfinite) == (zeros, nonfinite)
    assert counts.total > 200


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_digits_exact_on_random_data(dtype):
    generator = torch.Generator().manual_seed(1)
    values = (torch.randn(20000, generator=generator, dtype=torch.float64)
              * torch.exp(torch.randn(20000, generator=generator, dtype=torch.float64) * 6)).to(dtype)
    counts = digit_counts(values)
    expected, zeros, nonfinite = reference_counts(values)
    assert counts.counts.tolist() == expected.tolist()
    assert (counts.zeros, counts.nonfinite) == (zeros, nonfinite)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_counts_in_chunks_are_exact(monkeypatch, dtype):
    """Large tensors are counted in chunks (bounded temporaries); a chunk size that splits a 2-D
    tensor mid-row, with NaN, Inf and zeros on both sides of a boundary, still counts exactly."""
    import gate.metrics.benford

    monkeypatch.setattr(gate.metrics.benford, "_CHUNK_ELEMENTS", 777)
    generator = torch.Generator().manual_seed(2)
    values = (torch.randn(40, 101, generator=generator, dtype=torch.float64)
              * torch.exp(torch.randn(40, 101, generator=generator, dtype=torch.float64) * 3)).to(dtype)
    values.view(-1)[[0, 776, 777, 778, 2000]] = torch.tensor([math.nan, 0.0, math.inf, -0.0, -math.inf], dtype=dtype)
    counts = digit_counts(values)
    expected, zeros, nonfinite = reference_counts(values.reshape(-1))
    assert counts.counts.tolist() == expected.tolist()
    assert (counts.zeros, counts.nonfinite) == (zeros, nonfinite) == (2, 3)


def test_log_uniform_samples_follow_benford():
    generator = torch.Generator().manual_seed(0)
    values = torch.pow(10.0, torch.rand(2_000_000, generator=generator, dtype=torch.float64) * 12 - 6)
    counts = digit_counts(values)
    assert counts.mlh() > 0.99
    frequencies = counts.counts / counts.total
    np.testing.assert_allclose(frequencies, BENFORD, atol=2e-3)
    # MLH is Pearson's r between the frequencies and Benford's law: check with scipy.
    assert counts.mlh() == pytest.approx(scipy.stats.pearsonr(frequencies, BENFORD).statistic, abs=1e-12)


def test_uniform_digits_do_not_follow_benford():
    values = torch.rand(100000, generator=torch.Generator().manual_seed(0)) * 8 + 1  # digits 1..8 equally
    assert digit_counts(values).mlh() < 0.9


def test_minilm_mlh_recorded(minilm_dir):
    """Recorded figure: all-MiniLM-L6-v2's model MLH (2-D weights, biases/norms left out)."""
    result = gate.scan(minilm_dir, device="cpu")
    summary = result.summary
    assert summary["mlh"] == pytest.approx(0.98870, abs=5e-5)
    # Hand count of the 2-D weights: word (30522x384) + position (512x384) + token type (2x384)
    # embeddings, 6 blocks of q, k, v, o (384x384) and two 1536x384 MLP matrices, and the pooler.
    weights = 30522 * 384 + 512 * 384 + 2 * 384 + 6 * (4 * 384 * 384 + 2 * 1536 * 384) + 384 * 384
    assert sum(summary["benford_digit_counts"]) + summary["benford_zeros"] == weights
    # Vectors left out: the embedding LayerNorm (2), per block 6 biases + 2 LayerNorms x 2, the pooler bias.
    assert summary["benford_tensors_left_out"] == 2 + 6 * (6 + 4) + 1
    layers = result.layers.set_index("name")
    assert 0.9 < layers.loc["embeddings.word_embeddings", "mlh"] < 1.0


def test_eic_matches_the_paper_equations():
    values = eic(0.98, 0.9)
    assert values["eic"] == pytest.approx(-0.9 - 0.98)
    assert values["eic_scaled"] == pytest.approx(-0.9 - (0.98 - 0.9462) / 0.0537)
    assert values["eic_sr"] == pytest.approx(-math.log(0.98) / 0.9)
    result = gate.scan(torch.nn.Linear(64, 32), device="cpu", train_accuracy=0.75)
    assert result.summary["eic"] == pytest.approx(-0.75 - result.summary["mlh"])


def test_constant_tensors_and_vectors_left_out_of_model_mlh():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    torch.nn.init.constant_(model[1].weight, 0.5)
    summary = gate.scan(model, device="cpu").summary
    assert sum(summary["benford_digit_counts"]) == 64 * 64  # only the first weight matrix
    assert summary["benford_tensors_left_out"] == 3  # two biases and the constant matrix
    with pytest.raises(gate.errors.GateInputError, match="train_accuracy"):
        gate.scan(model, device="cpu", train_accuracy=90)


def test_counts_add_up():
    a = DigitCounts(np.arange(1, 10), zeros=1, nonfinite=2)
    total = a + a
    assert total.counts.tolist() == list(range(2, 20, 2)) and (total.zeros, total.nonfinite) == (2, 4)


def test_torch_backend_agrees_with_numpy_backend():
    """GPU tensors take the torch code path; run it on the CPU against the numpy one."""
    from gate.metrics.benford import _count, _Tables

    generator = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        values = torch.randn(50000, generator=generator, dtype=torch.float64).to(dtype) * 1e-3
        values[:5] = 0
        values[5] = math.nan
        by_torch = _count(values, _Tables.for_torch(dtype, torch.device("cpu")))
        by_numpy = _count(values.numpy(), _Tables.for_numpy(dtype))
        assert by_torch.counts.tolist() == by_numpy.counts.tolist()
        assert (by_torch.zeros, by_torch.nonfinite) == (by_numpy.zeros, by_numpy.nonfinite) == (5, 1)
