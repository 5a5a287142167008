"""Eigenvalues of W^T W for many matrices, on the CPU or a GPU, by one of two strategies.

Why the Gram matrix: eigvalsh of the M x M Gram matrix is ~11x faster than an SVD of W on an H100
(docs/performance.md) and several times faster on a CPU. Which dtype each solve uses, and the error bound that
comes with it, are :mod:`gate.solver.precision`'s rules; both strategies apply them the same way.

- ``batched`` (the default on a GPU, available on any torch device): Gram matrices are formed with
  torch on the device and queued by size; each size is solved with one batched ``eigvalsh`` when
  the queue reaches the budget. The test suite runs it on the CPU, so the GPU code path is
  exercised without a GPU.
- ``pool`` (the default on the CPU): each matrix is one task, Gram product (numpy, a symmetric
  rank-k update) then eigensolve (LAPACK without the GIL, gate.solver.lapack), one task per core with BLAS
  single-threaded: OpenBLAS's threads help neither a 384-wide syrk nor a 384 x 384 syevr much, and a
  product on one core overlaps a solve on the other (measured on 2 cores, MiniLM's 39 matrices:
  0.21 s, against 0.28 s for all products on both cores, then all solves on both cores).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from gate.options import STRATEGIES
from gate.solver.lapack import blas_controller, eigvalsh, usable_cores
from gate.solver.precision import Precision, SolveKey, error_bound, ieee_float32_matmul, solve_dtype

# Bytes of W converted to the solve precision at a time, so a float16 32000 x 4096 embedding never
# exists as a full float64 copy, whichever core converts it.
_BLOCK_BYTES = 16 * 2**20


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


def gram(matrix: torch.Tensor, device: torch.device, dtype: torch.dtype, via_numpy: bool = False) -> torch.Tensor:
    """W^T W (M x M) for an N x M matrix, accumulated over row blocks in ``dtype`` on ``device``.

    ``via_numpy`` (CPU only, the pool strategy): numpy's ``a.T @ a`` is a symmetric rank-k update
    (half the flops) on OpenBLAS, measured 2x faster than torch's CPU matmul on this machine, and
    TF32 settings do not touch it. torch products are accumulated in float64 and rounded once when
    the process allows TF32 (:func:`gate.solver.precision.ieee_float32_matmul`).
    """
    rows, cols = matrix.shape
    block_rows = max(1, _BLOCK_BYTES // (cols * torch.finfo(dtype).bits // 8))
    if via_numpy:
        numpy_dtype = np.float64 if dtype == torch.float64 else np.float32
        total = np.zeros((cols, cols), dtype=numpy_dtype)
        # Overflow and NaN are checked on the result (non-finite Gram -> nonfinite layer, or a
        # float64 retry), so numpy's warnings would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, rows, block_rows):
                block = matrix[start:start + block_rows].to(dtype).numpy()
                total += block.T @ block
        return torch.from_numpy(total)
    if dtype == torch.float32 and not ieee_float32_matmul():
        return gram(matrix, device, torch.float64).to(torch.float32)
    result = torch.zeros((cols, cols), dtype=dtype, device=device)
    for start in range(0, rows, block_rows):
        block = matrix[start:start + block_rows].to(device=device, dtype=dtype)
        result.addmm_(block.T, block)
    return result


@dataclass(frozen=True)
class SolveResult:
    """One matrix's solve: ascending eigenvalues of W^T W (host float64, clipped at zero: a Gram
    matrix is positive semi-definite, tiny negative values are rounding), the absolute error bound
    of every eigenvalue, and the dtype solved in. A Gram matrix that is not finite is not solved:
    ``nonfinite_weights`` then counts the NaN/Inf weights (0: finite weights whose squares
    overflow), ``nan_weights`` how many of them are NaN (the rest are infinite), and ``eigenvalues``
    is None."""

    eigenvalues: np.ndarray | None
    error_bound: float
    dtype: torch.dtype
    nonfinite_weights: int | None = None
    nan_weights: int | None = None

    @property
    def is_zero(self) -> bool:
        """Every weight is zero: only then is W^T W, and with it the bound, exactly 0."""
        return self.nonfinite_weights is None and self.error_bound == 0.0


@dataclass(frozen=True)
class _Formed:
    """One Gram matrix as formed, or the count of bad weights that kept it from being finite."""

    gram: torch.Tensor
    nonfinite_weights: int | None
    nan_weights: int | None = None

    def result(self, eigenvalues: np.ndarray | torch.Tensor | None) -> SolveResult:
        if self.nonfinite_weights is not None:
            return SolveResult(None, float("nan"), self.gram.dtype, self.nonfinite_weights, self.nan_weights)
        values = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
        return SolveResult(values, error_bound(self.gram), self.gram.dtype)


class SpectrumBatcher:
    """Eigenvalues of W^T W for many matrices: :meth:`submit` each under a :class:`SolveKey`, then
    :meth:`flush` returns a :class:`SolveResult` per key.

    ``strategy`` (module docstring) defaults to ``pool`` on the CPU and ``batched`` elsewhere. The
    budget (1 GiB by default) bounds memory: queued Gram matrices (batched), or the tasks in flight
    with their inputs, Gram matrices and LAPACK's copies (pool), so memory does not grow with the
    model. Use it as a context manager so that an error stops the pool; :meth:`flush` also stops it.

    ``on_result`` is called with each key and its result as soon as it is solved, on the thread that
    solved it (a pool worker, or the caller's thread for ``batched``), before :meth:`flush` returns:
    the caller can fit a layer while other matrices are still being solved. It must be thread-safe;
    an error it raises fails the scan like an error of the solve.
    """

    def __init__(self, device: torch.device, precision: str | Precision = "float64", budget_bytes: int | None = None,
                 strategy: str | None = None,
                 on_result: Callable[[SolveKey, SolveResult], None] | None = None) -> None:
        self.device = device
        self.precision = Precision.parse(precision)
        self.strategy = strategy or ("pool" if device.type == "cpu" else "batched")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, not {strategy!r}")
        if self.strategy == "pool" and device.type != "cpu":
            raise ValueError(f"the pool strategy solves on the CPU; use strategy='batched' on {device}")
        self._budget = budget_bytes if budget_bytes is not None else 2**30
        self._queued: dict[tuple, list[tuple[SolveKey, _Formed]]] = defaultdict(list)  # batched
        self._queued_bytes = 0
        self._workers = usable_cores()
        self._pool: ThreadPoolExecutor | None = None  # pool
        self._running: dict[Future, tuple[SolveKey, int]] = {}
        self._running_bytes = 0
        self._results: dict[SolveKey, SolveResult] = {}
        self._on_result = on_result
        self._seconds_lock = threading.Lock()
        self.eigensolve_seconds = 0.0  # in eigvalsh calls (pool: summed over threads)

    def __enter__(self) -> SpectrumBatcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop_pool(cancel=True)

    def solve_dtype(self, weight_dtype: torch.dtype) -> torch.dtype:
        """The dtype this batcher solves matrices stored in ``weight_dtype`` in."""
        return solve_dtype(self.precision, weight_dtype)

    def submit(self, key: SolveKey, matrix: torch.Tensor, dtype: torch.dtype | None = None,
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Queue the eigenvalues of W^T W for ``matrix`` (N x M, M the smaller side) under ``key``, in
        the solve dtype for its stored dtype unless ``dtype`` says otherwise. ``transform`` (e.g. a
        shuffle) is applied to the matrix first (inside the task for the pool, so that it runs in
        parallel with other tasks; it must be safe to call from several threads)."""
        dtype = dtype or self.solve_dtype(matrix.dtype)
        if self.strategy == "pool":
            self._submit_task(key, matrix, dtype, transform)
            return
        formed = self._form(transform(matrix) if transform else matrix, dtype)
        if formed.nonfinite_weights is not None:
            self._record(key, formed.result(None))
            return
        self._queued[(formed.gram.shape[0], formed.gram.dtype)].append((key, formed))
        self._queued_bytes += formed.gram.numel() * formed.gram.element_size()
        if self._queued_bytes >= self._budget:
            self._solve_queued()

    def flush(self) -> dict[SolveKey, SolveResult]:
        """Solve everything submitted; returns every result so far, by key."""
        if self._running:
            self._harvest(set(self._running))
        self._stop_pool(cancel=False)
        self._solve_queued()
        return dict(self._results)

    def _form(self, matrix: torch.Tensor, dtype: torch.dtype) -> _Formed:
        """W^T W in ``dtype``; a float32 product that overflows (weights above ~1.8e19, which
        bfloat16 and float32 hold) is formed again in float64, so that only NaN/Inf weights, or
        squares beyond float64, leave it non-finite."""
        via_numpy = self.strategy == "pool"
        g = gram(matrix, self.device, dtype, via_numpy)
        finite = bool(torch.isfinite(g).all())
        if not finite and g.dtype == torch.float32:
            g = gram(matrix, self.device, torch.float64, via_numpy)
            finite = bool(torch.isfinite(g).all())
        if finite:
            return _Formed(g, None)
        return _Formed(g, int((~torch.isfinite(matrix)).sum()), int(torch.isnan(matrix).sum()))

    def _solve_queued(self) -> None:
        for items in self._queued.values():
            started = time.perf_counter()
            evals = torch.linalg.eigvalsh(torch.stack([formed.gram for _, formed in items])).to("cpu", torch.float64)
            self.eigensolve_seconds += time.perf_counter() - started
            for (key, formed), row in zip(items, evals.numpy()):
                self._record(key, formed.result(row))
        self._queued.clear()
        self._queued_bytes = 0

    def _submit_task(self, key: SolveKey, matrix: torch.Tensor, dtype: torch.dtype,
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
        self._running[self._pool.submit(self._task, key, matrix, dtype, transform)] = (key, size)
        self._running_bytes += size

    def _task(self, key: SolveKey, matrix: torch.Tensor, dtype: torch.dtype,
              transform: Callable[[torch.Tensor], torch.Tensor] | None) -> SolveResult:
        formed = self._form(transform(matrix) if transform else matrix, dtype)
        if formed.nonfinite_weights is None:
            started = time.perf_counter()
            eigenvalues = eigvalsh(formed.gram.numpy())
            with self._seconds_lock:
                self.eigensolve_seconds += time.perf_counter() - started
            result = formed.result(eigenvalues)
        else:
            result = formed.result(None)
        if self._on_result is not None:
            self._on_result(key, result)
        return result

    def _harvest(self, done: set[Future]) -> None:
        for future in done:
            key, size = self._running.pop(future)
            self._running_bytes -= size
            self._results[key] = future.result()

    def _record(self, key: SolveKey, result: SolveResult) -> None:
        """A result solved on the caller's thread (batched strategy, or a non-finite Gram matrix)."""
        self._results[key] = result
        if self._on_result is not None:
            self._on_result(key, result)

    def _stop_pool(self, cancel: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None
            self._running.clear()
            self._running_bytes = 0
