"""The Gram-matrix eigensolver against scipy's float64 SVD, and why float64 is the default."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors import safe_open

from gate.spectrum import SpectrumBatcher, resolve_device


def _solve(matrices: list[torch.Tensor], precision: str) -> list[np.ndarray]:
    batcher = SpectrumBatcher(torch.device("cpu"), precision, budget_bytes=1)  # flush after every add
    for k, m in enumerate(matrices):
        batcher.add(k, batcher.gram(m))
    results = batcher.flush()
    return [results[k] for k in range(len(matrices))]


def test_float64_gram_eigenvalues_match_svd(minilm_dir):
    handle = safe_open(str(minilm_dir / "model.safetensors"), framework="pt")
    names = ["embeddings.position_embeddings.weight", "encoder.layer.0.intermediate.dense.weight",
             "encoder.layer.3.attention.self.value.weight"]
    matrices = []
    for name in names:
        W = handle.get_tensor(name)
        matrices.append(W if W.shape[0] >= W.shape[1] else W.T)
    for W, evals in zip(matrices, _solve(matrices, "float64")):
        reference = np.sort(scipy.linalg.svdvals(W.double().numpy()) ** 2)
        np.testing.assert_allclose(evals, reference, rtol=1e-9, atol=1e-12 * reference.max())


def test_float32_loses_the_small_eigenvalues(minilm_dir):
    """Measured: float32 keeps the top of the spectrum but not the bottom, where xmin may lie
    (position_embeddings has xmin / lambda_max ~ 1e-4), so float64 is the default."""
    W = safe_open(str(minilm_dir / "model.safetensors"), framework="pt").get_tensor("embeddings.position_embeddings.weight")
    reference = np.sort(scipy.linalg.svdvals(W.double().numpy()) ** 2)
    (single,) = _solve([W], "float32")
    (double,) = _solve([W], "float64")
    top_error_32 = np.abs(single[-100:] / reference[-100:] - 1).max()
    bottom_error_32 = np.abs(single[:10] / reference[:10] - 1).max()
    bottom_error_64 = np.abs(double[:10] / reference[:10] - 1).max()
    assert top_error_32 < 1e-5
    assert bottom_error_32 > 1e-4  # too coarse for 1e-4 agreement on xmin near the bottom
    assert bottom_error_64 < 1e-9


def test_batches_of_mixed_sizes_keep_their_keys():
    torch.manual_seed(0)
    matrices = [torch.randn(50, 20), torch.randn(30, 30), torch.randn(70, 20), torch.randn(40, 10)]
    for W, evals in zip(matrices, _solve(matrices, "float64")):
        np.testing.assert_allclose(evals, np.sort(scipy.linalg.svdvals(W.double().numpy()) ** 2), rtol=1e-10)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    from gate.errors import GateInputError

    with pytest.raises(GateInputError, match="unknown device"):
        resolve_device("tpu")
