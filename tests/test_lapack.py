"""Eigensolves through ctypes (GIL released) give what scipy's syevr driver gives, up to rounding."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from gate.lapack import eigvalsh, find_syevr_library


def _symmetric(rng: np.random.Generator, n: int, dtype) -> np.ndarray:
    W = rng.standard_normal((n + 5, n))
    return (W.T @ W).astype(dtype)


def test_scipys_openblas_is_found():
    """The pip wheels of scipy ship OpenBLAS with LAPACKE: the GIL-free path is the one tests run."""
    assert find_syevr_library() is not None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_eigenvalues_as_scipy_evr(dtype):
    rng = np.random.default_rng(3)
    matrices = [_symmetric(rng, n, dtype) for n in (1, 2, 17, 64, 300, 64, 17)]
    originals = [m.copy() for m in matrices]
    results = [eigvalsh(m) for m in matrices]
    for matrix, original, got in zip(matrices, originals, results):
        expected = scipy.linalg.eigvalsh(original, driver="evr")
        assert got.dtype == expected.dtype and got.shape == expected.shape
        # The same routine; OpenBLAS's thread count only changes the order of sums (rounding).
        np.testing.assert_allclose(got, expected, rtol=0, atol=32 * np.finfo(dtype).eps * expected.max())
        np.testing.assert_array_equal(matrix, original)  # the input is left alone


def test_a_diagonal_and_a_zero_matrix_are_exact():
    np.testing.assert_array_equal(eigvalsh(np.diag([3.0, 1.0, 2.0])), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(eigvalsh(np.zeros((4, 4))), np.zeros(4))
