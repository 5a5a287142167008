"""Eigenvalues of a symmetric matrix through the LAPACK that scipy loaded, without holding the GIL.

Why not scipy.linalg.eigvalsh: scipy's LAPACK wrappers keep the GIL during the call, so solves from
two threads run one after the other, and OpenBLAS's own threads do not help a 384 x 384
tridiagonal reduction (measured on 2 cores: 39 MiniLM-sized solves take 0.21 s either way). ctypes
releases the GIL around a foreign call, so the very routine scipy's ``driver="evr"`` runs
(``LAPACKE_?syevr`` of the same OpenBLAS, found with threadpoolctl) can run on every core at once,
one solve per thread (gate.spectrum does that, with OpenBLAS held to one thread). Where no such
library or symbol is loaded (another BLAS vendor, a scipy built against a system LAPACK), solves go
through scipy, one at a time.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

import numpy as np
import scipy.linalg

_COLUMN_MAJOR = 102  # LAPACK_COL_MAJOR; a symmetric matrix reads the same in either order
_SYMBOL_PREFIXES = ("scipy_", "")  # scipy's wheels rename OpenBLAS's symbols with "scipy_"


class SyevrLibrary:
    """``LAPACKE_dsyevr`` and ``LAPACKE_ssyevr`` (32-bit integers) of one loaded OpenBLAS."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._routines = {}
        for dtype, name, real in ((np.float64, "dsyevr", ctypes.c_double), (np.float32, "ssyevr", ctypes.c_float)):
            routine = _symbol(library, f"LAPACKE_{name}")
            routine.restype = ctypes.c_int
            pointer = ctypes.c_void_p
            routine.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_char, ctypes.c_int, pointer,
                                ctypes.c_int, real, real, ctypes.c_int, ctypes.c_int, real,
                                ctypes.POINTER(ctypes.c_int), pointer, pointer, ctypes.c_int, pointer]
            self._routines[np.dtype(dtype)] = routine

    def eigvalsh(self, matrix: np.ndarray) -> np.ndarray:
        """Ascending eigenvalues of one symmetric float32/float64 matrix (the input is not changed)."""
        work = np.array(matrix, copy=True, order="C")  # syevr overwrites its input
        n = work.shape[0]
        values = np.empty(n, dtype=work.dtype)
        unused_vectors = np.empty(1, dtype=work.dtype)
        support = np.empty(2 * n, dtype=np.int32)
        found = ctypes.c_int(0)
        status = self._routines[work.dtype](
            _COLUMN_MAJOR, b"N", b"A", b"L", n, work.ctypes.data, n, 0.0, 0.0, 0, 0, 0.0, ctypes.byref(found),
            values.ctypes.data, unused_vectors.ctypes.data, 1, support.ctypes.data)
        if status != 0:
            raise np.linalg.LinAlgError(f"LAPACK ?syevr failed with info={status} on a {n} x {n} matrix")
        return values[:found.value]


@lru_cache(maxsize=1)
def blas_controller():
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded now (numpy's and scipy's OpenBLAS,
    torch's OpenMP), built once: enumerating them takes ~8 ms."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@lru_cache(maxsize=1)
def find_syevr_library() -> SyevrLibrary | None:
    """The OpenBLAS scipy.linalg uses, if it exports 32-bit-integer LAPACKE ``?syevr``; else None."""
    for library in blas_controller().select(internal_api="openblas").lib_controllers:
        handle = library.dynlib
        if all(_symbol(handle, f"LAPACKE_{name}") is not None for name in ("dsyevr", "ssyevr")):
            return SyevrLibrary(handle)
    return None


def eigvalsh(matrix: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of a symmetric matrix; releases the GIL where the library allows."""
    library = find_syevr_library()
    if library is None:
        return scipy.linalg.eigvalsh(matrix, driver="evr", check_finite=False)
    return library.eigvalsh(matrix)


def usable_cores() -> int:
    """The cores this process may run on (containers, taskset), which is how many solves run at once."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _symbol(library: ctypes.CDLL, name: str):
    """The routine ``name`` under any of the known prefixes, or None."""
    return next((getattr(library, p + name) for p in _SYMBOL_PREFIXES if hasattr(library, p + name)), None)
