"""Eigenvalues of a symmetric matrix through an OpenBLAS already in the process, without holding the GIL.

Why not scipy.linalg.eigvalsh: scipy's LAPACK wrappers keep the GIL during the call, so solves from
two threads run one after the other, and OpenBLAS's own threads do not help a 384 x 384
tridiagonal reduction (measured on 2 cores: 39 MiniLM-sized solves take 0.21 s either way). ctypes
releases the GIL around a foreign call, so the very routine scipy's ``driver="evr"`` runs
(``LAPACKE_?syevr``), called through ctypes, can run on every core at once, one solve per thread
(gate.solver.spectrum does that, with OpenBLAS held to one thread).

Which OpenBLAS: numpy's wheels ship one with the full LAPACKE (64-bit integers, symbols
``scipy_LAPACKE_dsyevr64_``), loaded by ``import numpy``; using it spares every scan the 0.15-0.2 s
of ``import scipy.linalg`` (issue 17's cold start). scipy's own (32-bit integers,
``scipy_LAPACKE_dsyevr``) is used when numpy's lacks the routines; where no loaded library has
them (another BLAS vendor, a build against a system LAPACK), solves go through scipy, one at a time.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

import numpy as np

_COLUMN_MAJOR = 102  # LAPACK_COL_MAJOR; a symmetric matrix reads the same in either order
# (prefix, suffix, integer type) of the LAPACKE symbols of the OpenBLAS builds numpy and scipy ship.
_SYMBOL_FORMS = (("scipy_", "64_", ctypes.c_int64), ("", "64_", ctypes.c_int64),
                 ("scipy_", "", ctypes.c_int32), ("", "", ctypes.c_int32))


class SyevrLibrary:
    """``LAPACKE_dsyevr`` and ``LAPACKE_ssyevr`` of one loaded OpenBLAS, in one symbol form."""

    def __init__(self, library: ctypes.CDLL, prefix: str, suffix: str, integer: type) -> None:
        self._integer = integer
        self._routines = {}
        for dtype, name, real in ((np.float64, "dsyevr", ctypes.c_double), (np.float32, "ssyevr", ctypes.c_float)):
            routine = getattr(library, f"{prefix}LAPACKE_{name}{suffix}")
            routine.restype = integer
            pointer = ctypes.c_void_p
            routine.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_char, integer, pointer,
                                integer, real, real, integer, integer, real,
                                ctypes.POINTER(integer), pointer, pointer, integer, pointer]
            self._routines[np.dtype(dtype)] = routine

    def eigvalsh(self, matrix: np.ndarray) -> np.ndarray:
        """Ascending eigenvalues of one symmetric float32/float64 matrix (the input is not changed)."""
        work = np.array(matrix, copy=True, order="C")  # syevr overwrites its input
        n = work.shape[0]
        values = np.empty(n, dtype=work.dtype)
        unused_vectors = np.empty(1, dtype=work.dtype)
        support = np.empty(2 * n, dtype=self._integer)  # numpy reads a ctypes integer type as its width
        found = self._integer(0)
        status = self._routines[work.dtype](
            _COLUMN_MAJOR, b"N", b"A", b"L", n, work.ctypes.data, n, 0.0, 0.0, 0, 0, 0.0, ctypes.byref(found),
            values.ctypes.data, unused_vectors.ctypes.data, 1, support.ctypes.data)
        if status != 0:
            raise np.linalg.LinAlgError(f"LAPACK ?syevr failed with info={status} on a {n} x {n} matrix")
        return values[:found.value]


@lru_cache(maxsize=1)
def blas_controller():
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded now (numpy's OpenBLAS, torch's
    OpenMP, and scipy's OpenBLAS when the solves need it), built once: enumerating takes ~8 ms.
    scipy is imported first when no loaded OpenBLAS has the routines, so that the library the
    solves use is among those a scan holds to one thread."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    if _syevr_in(controller) is None:
        import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS)

        controller = ThreadpoolController()
    return controller


@lru_cache(maxsize=1)
def find_syevr_library() -> SyevrLibrary | None:
    """The first loaded OpenBLAS that exports LAPACKE ``?syevr`` (numpy's, else scipy's); else None."""
    return _syevr_in(blas_controller())


def eigvalsh(matrix: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of a symmetric matrix; releases the GIL where the library allows."""
    library = find_syevr_library()
    if library is None:
        import scipy.linalg

        return scipy.linalg.eigvalsh(matrix, driver="evr", check_finite=False)
    return library.eigvalsh(matrix)


def _syevr_in(controller) -> SyevrLibrary | None:
    """The routines in the first symbol form any loaded OpenBLAS exports (numpy's before scipy's,
    whatever order threadpoolctl lists the libraries in)."""
    libraries = [library.dynlib for library in controller.select(internal_api="openblas").lib_controllers]
    for prefix, suffix, integer in _SYMBOL_FORMS:
        for handle in libraries:
            if all(hasattr(handle, f"{prefix}LAPACKE_{name}{suffix}") for name in ("dsyevr", "ssyevr")):
                return SyevrLibrary(handle, prefix, suffix, integer)
    return None


def usable_cores() -> int:
    """The cores this process may run on (containers, taskset), which is how many solves run at once."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
