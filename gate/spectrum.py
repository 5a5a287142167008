"""Eigenvalues of W^T W for many matrices, batched by size, on the CPU or a GPU, with an error bound.

Why the Gram matrix: eigvalsh of the M x M Gram matrix is ~11x faster than an SVD of W on an H100
(DESIGN.md) and several times faster on a CPU. Which precision (``precision="auto"``, the default):
float64 for weights stored in float32/float64; float32 for weights stored in float16/bfloat16,
whose own rounding already moves the spectrum more than a float32 solve does (measured on MiniLM
rounded to float16: the solve's largest eigenvalue error is at most 0.2 of the largest change the
rounding made; bfloat16: 0.02). The scanner re-solves in float64 any such layer whose fitted tail
is not resolved by the bound (see ``scanner``). ``float32``/``float64`` force one precision; a
float32 Gram keeps the largest eigenvalues to ~1e-6 but loses the small ones (tests/test_spectrum.py).

Each solve comes with an absolute error bound for every eigenvalue, ``SOLVE_ERROR_FACTOR * eps *
||G||_F`` (eps of the solve precision): LAPACK's eigenvalue error bound is eps * ||G||_2 times a
slowly growing function of M, and the Gram product adds its own rounding; measured errors of
float32 Gram + solve against float64 stayed below 6 eps ||G||_F (MiniLM in float16/bfloat16, and
Gaussian, heavy-tailed and low-rank matrices up to 2048 x 2048).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from gate.lapack import eigvalsh_many

PRECISIONS = {"float64": torch.float64, "float32": torch.float32, "auto": None}
SOLVE_ERROR_FACTOR = 8.0  # measured worst case 6 (module docstring), with a margin
# Rows of W converted to the solve precision at a time, so a float16 32000 x 4096 embedding never
# exists as a full float64 copy.
_ROW_BLOCK = 8192


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an input error."""
    from gate.errors import GateInputError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GateInputError("--device cuda was requested, but torch sees no CUDA GPU; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise GateInputError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


@contextmanager
def cpu_threads_for_blas(device: torch.device) -> Iterator[None]:
    """On the CPU, run torch single-threaded for the duration of a scan, then restore it.

    The heavy CPU work (Gram products, eigensolves) runs in OpenBLAS through numpy/scipy; torch's
    OpenMP workers keep spinning between torch ops and take the cores from OpenBLAS (measured: the
    MiniLM scan takes 1.0 s instead of 0.46 s on 2 cores). On a GPU nothing changes.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def gram(matrix: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """W^T W (M x M) for an N x M matrix, accumulated over row blocks in ``dtype`` on ``device``.

    On the CPU the product goes through numpy, whose ``a.T @ a`` is a symmetric rank-k update
    (half the flops) on OpenBLAS: measured 2x faster than torch's CPU matmul on this machine.
    """
    rows, cols = matrix.shape
    if device.type == "cpu":
        numpy_dtype = np.float64 if dtype == torch.float64 else np.float32
        total = np.zeros((cols, cols), dtype=numpy_dtype)
        # Overflow and NaN are checked on the result by the caller (non-finite Gram -> nonfinite
        # layer, or a float64 retry), so numpy's warnings would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, rows, _ROW_BLOCK):
                block = matrix[start:start + _ROW_BLOCK].to(dtype).numpy()
                total += block.T @ block
        return torch.from_numpy(total)
    if dtype == torch.float32 and not ieee_float32_matmul(device):
        # The caller's process allows TF32 (10-bit mantissa) products; the error bound assumes IEEE
        # float32, so accumulate in float64 and round once.
        return gram(matrix, device, torch.float64).to(torch.float32)
    result = torch.zeros((cols, cols), dtype=dtype, device=device)
    for start in range(0, rows, _ROW_BLOCK):
        block = matrix[start:start + _ROW_BLOCK].to(device=device, dtype=dtype)
        result.addmm_(block.T, block)
    return result


def ieee_float32_matmul(device: torch.device) -> bool:
    """Whether float32 products on ``device`` are IEEE float32. Training code often enables TF32 on
    GPUs (``torch.backends.cuda.matmul.allow_tf32`` or ``set_float32_matmul_precision("high")``,
    both visible here); the CPU path multiplies through numpy, which TF32 settings do not touch."""
    return device.type == "cpu" or torch.get_float32_matmul_precision() == "highest"


class SpectrumBatcher:
    """Collects Gram matrices by size and solves each group with one batched ``eigvalsh`` call.

    Results are host float64 arrays, ascending, clipped at zero (a Gram matrix is positive
    semi-definite; tiny negative values are rounding).
    """

    def __init__(self, device: torch.device, precision: str = "float64", budget_bytes: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        self.device = device
        self.precision = precision
        # Queued Gram matrices are solved together when the queue reaches the budget: on a GPU one
        # batched call serves many small matrices (1 GiB of device memory); on the CPU, solving in
        # runs rather than one by one between torch ops keeps OpenBLAS's threads busy (measured: the
        # MiniLM scan takes 0.55 s instead of 0.93 s) while host memory stays bounded at 64 MB.
        self._budget = budget_bytes if budget_bytes is not None else (2**30 if device.type == "cuda" else 64 * 2**20)
        self._pending: dict[tuple, list[tuple[Hashable, torch.Tensor]]] = defaultdict(list)
        self._pending_bytes = 0
        self.results: dict[Hashable, np.ndarray] = {}
        self.error_bounds: dict[Hashable, float] = {}  # absolute, for every eigenvalue of that key

    def solve_dtype(self, weight_dtype: torch.dtype) -> torch.dtype:
        """The precision this batcher solves matrices stored in ``weight_dtype`` in."""
        fixed = PRECISIONS[self.precision]
        if fixed is not None:
            return fixed
        return torch.float32 if torch.finfo(weight_dtype).bits <= 16 else torch.float64  # float16, bfloat16, float8

    def gram(self, matrix: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W^T W on this batcher's device, in the solve precision for ``matrix`` unless ``dtype`` says
        otherwise; a float32 product that overflows (weights above ~1.8e19, which bfloat16 and float32
        hold) is formed again in float64, so that only NaN/Inf weights give a non-finite Gram matrix."""
        g = gram(matrix, self.device, dtype or self.solve_dtype(matrix.dtype))
        if g.dtype == torch.float32 and not bool(torch.isfinite(g.sum())):
            g = gram(matrix, self.device, torch.float64)
        return g

    def add(self, key: Hashable, g: torch.Tensor) -> None:
        """Queue the eigenvalues of the Gram matrix ``g`` (from :meth:`gram`) under ``key``."""
        self.error_bounds[key] = SOLVE_ERROR_FACTOR * torch.finfo(g.dtype).eps * float(torch.linalg.matrix_norm(g))
        self._pending[(g.shape[0], g.dtype)].append((key, g))
        self._pending_bytes += g.numel() * g.element_size()
        if self._pending_bytes >= self._budget:
            self.flush()

    def flush(self) -> dict[Hashable, np.ndarray]:
        """Solve everything queued; returns all results so far."""
        for items in self._pending.values():
            keys = [key for key, _ in items]
            if self.device.type == "cpu":
                # LAPACK relatively robust representations (syevr): measured 1.5x faster than
                # divide-and-conquer (syevd, what torch uses) for 384 x 384 on this CPU; gate.lapack
                # runs one solve per core.
                evals = eigvalsh_many([g.numpy() for _, g in items])
            else:
                evals = torch.linalg.eigvalsh(torch.stack([g for _, g in items])).to("cpu", torch.float64).numpy()
            for key, row in zip(keys, evals):
                self.results[key] = np.clip(np.asarray(row, dtype=np.float64), 0, None)
        self._pending.clear()
        self._pending_bytes = 0
        return self.results
