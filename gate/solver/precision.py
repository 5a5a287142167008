"""Solve precision, owned in one place: which dtype each eigen-solve uses, how far its eigenvalues
can be off, and when a float32 solve must be redone in float64.

Why these rules (measurements in tests/test_spectrum.py; float32 against float64 on a GPU in
docs/performance.md):

- ``auto`` (the default) solves weights stored in float32/float64 in float64, and weights stored
  in 16 bits or fewer (float16, bfloat16, float8) in float32: their own rounding already moves the
  spectrum more than a float32 solve does (MiniLM rounded to float16: the solve's largest eigenvalue
  error is at most 0.2 of the largest change the rounding made; bfloat16: 0.02).
- Every solve carries an absolute error bound for each eigenvalue, ``SOLVE_ERROR_FACTOR * eps *
  ||G||_F`` (eps of the solve dtype): LAPACK's eigenvalue bound is eps * ||G||_2 times a slowly
  growing function of M, and the Gram product adds its own rounding; measured errors of float32
  Gram + solve against float64 stayed below 6 eps ||G||_F (MiniLM in float16/bfloat16, Gaussian,
  heavy-tailed and low-rank matrices up to 2048 x 2048). Both solve strategies use this bound.
- Under ``auto``, a float32 solve whose bound is not below ``TAIL_TOLERANCE`` times the fitted
  xmin has not resolved the tail alpha, xmin and D come from: that layer is solved again in float64.
- Shuffled (randomised) matrices are solved in float32 whatever the setting: their ESDs feed only
  the Marchenko-Pastur comparison (a density estimate with bandwidth 0.1 on rescaled eigenvalues)
  and the largest eigenvalue, which float32 keeps to ~1e-6.
- A float32 Gram product must be IEEE float32 for the bound to hold; when the process allows TF32
  (``torch.backends.cuda.matmul.allow_tf32`` or ``torch.set_float32_matmul_precision("high")``,
  common in training code), torch products are accumulated in float64 and rounded once instead.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gate.options import Precision

SOLVE_ERROR_FACTOR = 8.0  # measured worst case 6 (module docstring), with a margin
TAIL_TOLERANCE = 1e-3  # largest relative error bound accepted at xmin for a float32 solve under auto
RANDOMIZED_SOLVE_DTYPE = torch.float32


class SolveKey(NamedTuple):
    """One matrix solve of a scan: the layer (plan index), the slice within it (kernel position or
    gate), and whether it is the shuffled copy used by the randomised comparison."""

    layer: int
    slice: int = 0
    randomized: bool = False


def solve_dtype(precision: Precision, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype a matrix stored in ``weight_dtype`` is solved in under ``precision``."""
    if precision is Precision.FLOAT64:
        return torch.float64
    if precision is Precision.FLOAT32:
        return torch.float32
    return torch.float32 if torch.finfo(weight_dtype).bits <= 16 else torch.float64


def error_bound(gram: torch.Tensor) -> float:
    """Absolute bound on every eigenvalue error of a solve of the Gram matrix ``gram`` in its dtype."""
    return SOLVE_ERROR_FACTOR * torch.finfo(gram.dtype).eps * float(torch.linalg.matrix_norm(gram))


def tail_unresolved(precision: Precision, dtype: torch.dtype, bound: float, xmin: float) -> bool:
    """Whether a layer solved in ``dtype`` with eigenvalue error ``bound`` must be solved again in
    float64 before its fit (at ``xmin``) is trusted: only under ``auto``, only float32 solves."""
    return precision is Precision.AUTO and dtype == torch.float32 and bool(bound > TAIL_TOLERANCE * xmin)


def ieee_float32_matmul() -> bool:
    """Whether torch's float32 products are IEEE float32 in this process (no TF32 allowed)."""
    return torch.get_float32_matmul_precision() == "highest"
