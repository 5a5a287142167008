"""Eigensolves through ctypes (GIL released) give what scipy's syevr driver gives, up to rounding."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import scipy.linalg
from threadpoolctl import ThreadpoolController

from gate.solver.lapack import SyevrLibrary, eigvalsh, find_syevr_library


def _symmetric(rng: np.random.Generator, n: int, dtype) -> np.ndarray:
    W = rng.standard_normal((n + 5, n))
    return (W.T @ W).astype(dtype)


def test_numpys_openblas_is_found():
    """numpy's pip wheel ships OpenBLAS with LAPACKE (64-bit integers): the GIL-free path is the one
    tests run, and scans need not import scipy.linalg for it."""
    library = find_syevr_library()
    assert library is not None and library._integer is ctypes.c_int64


def test_scipys_openblas_32_bit_form_gives_the_same_eigenvalues():
    """The fallback form (scipy's OpenBLAS, 32-bit integers) reads the same: one matrix solved
    through both libraries and through scipy itself."""
    scipys = [lib for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers
              if "scipy" in lib.filepath and "numpy" not in lib.filepath]
    assert scipys, "scipy's wheel ships its own OpenBLAS"
    library = SyevrLibrary(scipys[0].dynlib, "scipy_", "", ctypes.c_int32)
    matrix = _symmetric(np.random.default_rng(5), 120, np.float64)
    expected = scipy.linalg.eigvalsh(matrix, driver="evr")
    for got in (library.eigvalsh(matrix), find_syevr_library().eigvalsh(matrix)):
        np.testing.assert_allclose(got, expected, rtol=0, atol=32 * np.finfo(np.float64).eps * expected.max())


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
