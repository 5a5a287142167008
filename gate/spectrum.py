"""Eigenvalues of W^T W for many matrices, batched by size, on the CPU or a GPU, with an error bound.

Why the Gram matrix: eigvalsh of the M x M Gram matrix is ~11x faster than an SVD of W on an H100
(DESIGN.md) and several times faster on a CPU. Which precision (``precision="auto"``, the default):
float64 for weights stored in float32/float64; float32 for weights stored in float16/bfloat16,
whose own rounding already moves the spectrum more than a float32 solve does (measured on MiniLM
rounded to float16: the solve's largest eigenvalue error is at most 0.2 of the largest change the
rounding made; bfloat16: 0.02). The scanner re-solves in float64 any such layer whose fitted tail
is not resolved by the bound (see ``scanner``). ``float32``/``float64`` force one precision; a
float32 Gram keeps the largest eigenvalues to ~1e-6 but loses the small ones (tests/test_spectrum.py).

On the CPU each matrix is one task, Gram product then eigensolve, and one task runs per core with
BLAS single-threaded: OpenBLAS's threads help neither a 384-wide syrk nor a 384 x 384 syevr much,
and a product on one core overlaps a solve on the other (measured on 2 cores, MiniLM's 39 matrices:
0.21 s, against 0.28 s for all products on both cores, then all solves on both cores).

Each solve comes with an absolute error bound for every eigenvalue, ``SOLVE_ERROR_FACTOR * eps *
||G||_F`` (eps of the solve precision): LAPACK's eigenvalue error bound is eps * ||G||_2 times a
slowly growing function of M, and the Gram product adds its own rounding; measured errors of
float32 Gram + solve against float64 stayed below 6 eps ||G||_F (MiniLM in float16/bfloat16, and
Gaussian, heavy-tailed and low-rank matrices up to 2048 x 2048).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from gate.lapack import blas_controller, eigvalsh, usable_cores

PRECISIONS = {"float64": torch.float64, "float32": torch.float32, "auto": None}
SOLVE_ERROR_FACTOR = 8.0  # measured worst case 6 (module docstring), with a margin
# Bytes of W converted to the solve precision at a time, so a float16 32000 x 4096 embedding never
# exists as a full float64 copy, whichever core converts it.
_BLOCK_BYTES = 16 * 2**20


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
    """On the CPU, hold torch and the BLAS libraries to one thread for a scan, then restore them.

    The scan runs one single-threaded task per core (module docstring); torch's OpenMP workers
    would otherwise keep spinning between torch ops and OpenBLAS's threads would multiply the
    threads per core. On a GPU nothing changes.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_controller().limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


def gram(matrix: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """W^T W (M x M) for an N x M matrix, accumulated over row blocks in ``dtype`` on ``device``.

    On the CPU the product goes through numpy, whose ``a.T @ a`` is a symmetric rank-k update
    (half the flops) on OpenBLAS: measured 2x faster than torch's CPU matmul on this machine.
    """
    rows, cols = matrix.shape
    block_rows = max(1, _BLOCK_BYTES // (cols * torch.finfo(dtype).bits // 8))
    if device.type == "cpu":
        numpy_dtype = np.float64 if dtype == torch.float64 else np.float32
        total = np.zeros((cols, cols), dtype=numpy_dtype)
        # Overflow and NaN are checked on the result (non-finite Gram -> nonfinite layer, or a
        # float64 retry), so numpy's warnings would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, rows, block_rows):
                block = matrix[start:start + block_rows].to(dtype).numpy()
                total += block.T @ block
        return torch.from_numpy(total)
    if dtype == torch.float32 and not ieee_float32_matmul(device):
        # The caller's process allows TF32 (10-bit mantissa) products; the error bound assumes IEEE
        # float32, so accumulate in float64 and round once.
        return gram(matrix, device, torch.float64).to(torch.float32)
    result = torch.zeros((cols, cols), dtype=dtype, device=device)
    for start in range(0, rows, block_rows):
        block = matrix[start:start + block_rows].to(device=device, dtype=dtype)
        result.addmm_(block.T, block)
    return result


def ieee_float32_matmul(device: torch.device) -> bool:
    """Whether float32 products on ``device`` are IEEE float32. Training code often enables TF32 on
    GPUs (``torch.backends.cuda.matmul.allow_tf32`` or ``set_float32_matmul_precision("high")``,
    both visible here); the CPU path multiplies through numpy, which TF32 settings do not touch."""
    return device.type == "cpu" or torch.get_float32_matmul_precision() == "highest"


@dataclass(frozen=True)
class _Formed:
    """One Gram matrix as formed, or the count of bad weights that kept it from being finite."""

    gram: torch.Tensor
    nonfinite_weights: int | None  # None: finite; else NaN/Inf weights (0: finite weights whose squares overflow)


class SpectrumBatcher:
    """Eigenvalues of W^T W for many matrices: :meth:`submit` each, :meth:`flush`, then read
    ``results`` (host float64, ascending, clipped at zero: a Gram matrix is positive
    semi-definite, tiny negative values are rounding), ``error_bounds`` and ``solve_dtypes``;
    matrices whose Gram matrix is not finite are in ``nonfinite`` instead of ``results``.

    On a GPU, Gram matrices are formed at once and queued by size, and each size is solved with one
    batched ``eigvalsh`` call when the queue reaches the budget (1 GiB of device memory). On the
    CPU, each matrix is a task (product and solve) on a pool of one thread per core; the budget
    (1 GiB of host memory: inputs held, Gram matrices, LAPACK's copies) bounds the tasks in flight,
    so memory does not grow with the model. Use it as a context manager so that an error stops the
    pool; :meth:`flush` also stops it.
    """

    def __init__(self, device: torch.device, precision: str = "float64", budget_bytes: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        self.device = device
        self.precision = precision
        self._budget = budget_bytes if budget_bytes is not None else 2**30
        self._queued: dict[tuple, list[tuple[Hashable, torch.Tensor]]] = defaultdict(list)  # GPU
        self._queued_bytes = 0
        self._workers = usable_cores()
        self._pool: ThreadPoolExecutor | None = None  # CPU
        self._running: dict[Future, tuple[Hashable, int]] = {}
        self._running_bytes = 0
        self.results: dict[Hashable, np.ndarray] = {}
        self.error_bounds: dict[Hashable, float] = {}  # absolute, for every eigenvalue of that key
        self.solve_dtypes: dict[Hashable, torch.dtype] = {}
        self.nonfinite: dict[Hashable, int] = {}  # key -> NaN/Inf weights, for Gram matrices not finite

    def __enter__(self) -> SpectrumBatcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop_pool(cancel=True)

    def solve_dtype(self, weight_dtype: torch.dtype) -> torch.dtype:
        """The precision this batcher solves matrices stored in ``weight_dtype`` in."""
        fixed = PRECISIONS[self.precision]
        if fixed is not None:
            return fixed
        return torch.float32 if torch.finfo(weight_dtype).bits <= 16 else torch.float64  # float16, bfloat16, float8

    def submit(self, key: Hashable, matrix: torch.Tensor, dtype: torch.dtype | None = None,
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Queue the eigenvalues of W^T W for ``matrix`` (N x M, M the smaller side) under ``key``, in
        the solve precision for its dtype unless ``dtype`` says otherwise. ``transform`` (e.g. a
        shuffle) is applied to the matrix first, on the CPU inside the task, so that it runs in
        parallel with other tasks; it must be safe to call from several threads."""
        dtype = dtype or self.solve_dtype(matrix.dtype)
        if self.device.type == "cpu":
            self._submit_task(key, matrix, dtype, transform)
            return
        formed = self._form(transform(matrix) if transform else matrix, dtype)
        self._record(key, formed, None)
        if formed.nonfinite_weights is None:
            self._queued[(formed.gram.shape[0], formed.gram.dtype)].append((key, formed.gram))
            self._queued_bytes += formed.gram.numel() * formed.gram.element_size()
            if self._queued_bytes >= self._budget:
                self._solve_queued()

    def is_zero(self, key: Hashable) -> bool:
        """Whether every weight of that matrix is zero: its bound, 8 eps ||W^T W||_F, is then 0."""
        return key not in self.nonfinite and self.error_bounds[key] == 0.0

    def flush(self) -> dict[Hashable, np.ndarray]:
        """Solve everything submitted; returns all results so far."""
        if self._running:
            self._harvest(set(self._running))
        self._stop_pool(cancel=False)
        self._solve_queued()
        return self.results

    def _form(self, matrix: torch.Tensor, dtype: torch.dtype) -> _Formed:
        """W^T W in ``dtype``; a float32 product that overflows (weights above ~1.8e19, which
        bfloat16 and float32 hold) is formed again in float64, so that only NaN/Inf weights, or
        squares beyond float64, leave it non-finite."""
        g = gram(matrix, self.device, dtype)
        finite = bool(torch.isfinite(g).all())
        if not finite and g.dtype == torch.float32:
            g = gram(matrix, self.device, torch.float64)
            finite = bool(torch.isfinite(g).all())
        return _Formed(g, None if finite else int((~torch.isfinite(matrix)).sum()))

    def _record(self, key: Hashable, formed: _Formed, eigenvalues: np.ndarray | None) -> None:
        self.solve_dtypes[key] = formed.gram.dtype
        if formed.nonfinite_weights is not None:
            self.nonfinite[key] = formed.nonfinite_weights
            return
        eps = torch.finfo(formed.gram.dtype).eps
        self.error_bounds[key] = SOLVE_ERROR_FACTOR * eps * float(torch.linalg.matrix_norm(formed.gram))
        if eigenvalues is not None:
            self.results[key] = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)

    def _solve_queued(self) -> None:
        for items in self._queued.values():
            evals = torch.linalg.eigvalsh(torch.stack([g for _, g in items])).to("cpu", torch.float64).numpy()
            for (key, _), row in zip(items, evals):
                self.results[key] = np.clip(row, 0, None)
        self._queued.clear()
        self._queued_bytes = 0

    def _submit_task(self, key: Hashable, matrix: torch.Tensor, dtype: torch.dtype,
                     transform: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Start product and solve on the pool once the tasks in flight leave room (at least one
        task always runs, and at most two per core wait, so the pool never starves)."""
        cols = matrix.shape[1]
        width = torch.finfo(dtype).bits // 8
        held = matrix.numel() * matrix.element_size() * (2 if transform else 1)  # the input, and a transformed copy
        # The Gram matrix, one block's product before it is added, LAPACK's copy; one converted block.
        size = held + 3 * cols * cols * width + min(_BLOCK_BYTES, matrix.numel() * width)
        while self._running and (self._running_bytes + size > self._budget or len(self._running) >= 2 * self._workers):
            self._harvest(wait(self._running, return_when=FIRST_COMPLETED).done)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="weightgate-solve")
        self._running[self._pool.submit(self._task, matrix, dtype, transform)] = (key, size)
        self._running_bytes += size

    def _task(self, matrix: torch.Tensor, dtype: torch.dtype,
              transform: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[_Formed, np.ndarray | None]:
        formed = self._form(transform(matrix) if transform else matrix, dtype)
        if formed.nonfinite_weights is not None:
            return formed, None
        return formed, eigvalsh(formed.gram.numpy())

    def _harvest(self, done: set[Future]) -> None:
        for future in done:
            key, size = self._running.pop(future)
            self._running_bytes -= size
            self._record(key, *future.result())

    def _stop_pool(self, cancel: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None
            self._running.clear()
            self._running_bytes = 0
