"""One pass over a model's tensors: each tensor loaded once gives its fingerprint digest, its Benford
digit counts, its value grid and the Gram matrices of its layers; each layer is fitted as soon as its
last matrix is solved. The result is a :class:`PartialScan` of the tensors fed, merged into a scan
result by :func:`gate.scanning.pipeline.merge_partials`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gate import progress
from gate.layers.plan import LayerPlan, channel_rows, layer_matrices
from gate.metrics.benford import DigitCounts, ModelDigits, digit_counts
from gate.metrics.fit_quality import fit_quality
from gate.metrics.quant_grid import grid_columns
from gate.metrics.random_like import random_like_statistics
from gate.metrics.spectral import spectral_metrics
from gate.metrics.value_grid import MASK_REASON, MIN_WEIGHTS, even_sample, is_zero_one_mask, value_grid_columns
from gate.options import ScanOptions
from gate.scanning.fingerprint import tensor_digest
from gate.solver.lapack import usable_cores
from gate.solver.precision import RANDOMIZED_SOLVE_DTYPE, Precision, SolveKey, tail_unresolved
from gate.solver.spectrum import SolveResult, SpectrumBatcher
from gate.sources.base import dtype_name
from gate.vocabulary import LayerStatus, WeightProblem


@dataclass
class PartialScan:
    """What one pass over a subset of a model's tensors found; picklable, merged by :func:`merge_partials`.

    ``rows``: layer rows by plan index (peer ratios not yet added); ``digits``: model-level Benford
    counts of these tensors; ``tensors``: the names of the tensors read; ``tensor_digests``:
    fingerprint parts by tensor name (with ``fingerprint``); ``spectra``:
    eigenvalues by layer name (with ``keep_spectra``); ``eigensolve_seconds``: time in eigen-solves.
    """

    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    digits: ModelDigits = field(default_factory=ModelDigits)
    tensors: set[str] = field(default_factory=set)
    tensor_digests: dict[str, bytes] = field(default_factory=dict)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    eigensolve_seconds: float = 0.0


class TensorPass:
    """Analyses tensors as they are fed (each exactly once), then :meth:`finish` returns the
    :class:`PartialScan`. A context manager: it owns the batcher's worker pool and the hashing thread.

    The fingerprint digest of a tensor is computed on a thread of its own while the next tensor
    is read and solved (hashlib releases the GIL); at most one digest is pending, so at most one
    extra tensor is held. A layer is fitted as soon as its last matrix is solved, on the thread that
    solved it (the batcher's ``on_result``): fits overlap the solves still running (the solves
    release the GIL that a fit's Python needs) instead of all waiting for the last one.
    """

    def __init__(self, plans: list[LayerPlan], options: ScanOptions, device: torch.device) -> None:
        self._options = options
        self._device = device
        self._precision = Precision.parse(options.precision)
        self._plans: dict[str, list[LayerPlan]] = {}
        for plan in plans:
            self._plans.setdefault(plan.tensor_name, []).append(plan)
        self._plan_at = {plan.index: plan for plan in plans}
        self._shuffle = _shuffler(options.seed) if options.randomize else None
        self._submitted: list[LayerPlan] = []
        self._partial = PartialScan()
        self._pending_digest: tuple[str, Future] | None = None
        # Per submitted layer: the solves done so far (one per slice, twice with randomize), then its fit.
        self._lock = threading.Lock()
        self._solved: dict[int, dict[SolveKey, SolveResult]] = {}
        self._pooled: dict[int, np.ndarray] = {}  # each fitted layer's pooled eigenvalues
        self._unresolved: list[LayerPlan] = []  # float32 solves whose tail needs a float64 solve
        self._stack = ExitStack()
        strategy = None if options.strategy == "auto" else options.strategy
        self._batcher = SpectrumBatcher(device, self._precision, strategy=strategy, on_result=self._on_solved)
        self._solving = progress.bar("solving", "layer", total=0)  # the total grows as layers are queued

    def __enter__(self) -> TensorPass:
        self._stack.enter_context(self._solving)
        self._stack.enter_context(self._batcher)
        self._hasher = self._stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="weightgate-hash"))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def feed(self, name: str, tensor: torch.Tensor) -> None:
        """Digest, digit counts and Gram matrices of one tensor, as loaded (on the CPU)."""
        self._collect_digest()
        self._partial.tensors.add(name)
        if self._options.fingerprint:
            self._pending_digest = (name, self._hasher.submit(tensor_digest, name, tensor))
        group = self._plans.get(name)
        if not group:
            return  # a vector or a non-float buffer: only hashed, for the fingerprint
        if group[0].unreadable:  # e.g. a quantized weight without its scale: a skipped row, no values
            self._partial.rows[group[0].index] = {**_base_row(group[0]), "status": LayerStatus.SKIPPED,
                                                  "reason": group[0].skip_reason}
            return
        tensor = tensor.to(self._device)
        if is_zero_one_mask(name, tensor):
            if self._options.benford:
                self._partial.digits.leave_out(name)
            for plan in group:
                self._partial.rows[plan.index] = {**_base_row(plan), "status": LayerStatus.SKIPPED, "reason": MASK_REASON}
            return
        options = self._options
        tensor_digits = self._partial.digits.add(name, tensor) if options.benford else None
        for plan in group:
            row = self._partial.rows[plan.index] = _base_row(plan)
            matrices = layer_matrices(plan, tensor)
            if options.benford:
                digits = tensor_digits if len(group) == 1 else sum(map(digit_counts, matrices), DigitCounts.empty())
                row["mlh"] = digits.mlh()
            row.update(value_grid_columns(matrices))
            if plan.num_weights >= MIN_WEIGHTS:
                row.update(grid_columns(channel_rows(plan, tensor), even_sample(matrices)))
            if plan.skip_reason:
                row.update(status=LayerStatus.SKIPPED, reason=plan.skip_reason)
                continue
            if options.tail_estimators:
                row["alpha_farms"] = _alpha_farms(matrices, plan.scale)
            # Dequantized weights carry the rounding of their 4-8-bit storage: solved as 16-bit weights are.
            quantized = plan.quantization not in (None, "none")
            dtype = self._batcher.solve_dtype(torch.float8_e4m3fn) if quantized else None
            for k, matrix in enumerate(matrices):
                self._batcher.submit(SolveKey(plan.index, k), matrix, dtype)
                if options.randomize:
                    self._batcher.submit(SolveKey(plan.index, k, randomized=True), matrix, RANDOMIZED_SOLVE_DTYPE,
                                         transform=self._shuffle)
            self._submitted.append(plan)
            self._solving.total = len(self._submitted)

    def finish(self, reload: Callable[[str], torch.Tensor]) -> PartialScan:
        """Solve what is queued (each layer is fitted as its last solve completes), solve again in
        float64 the layers whose float32 solve left the tail unresolved (gate.solver.precision; ``reload``
        reads their tensors once more), and return the partial result."""
        self._collect_digest()
        results = self._batcher.flush()
        if self._unresolved:
            unresolved = sorted(self._unresolved, key=lambda plan: plan.index)
            results.update(_solve_in_float64(reload, unresolved, self._device, self._batcher.strategy))
            with ThreadPoolExecutor(usable_cores(), thread_name_prefix="weightgate-fit") as fitters:
                list(fitters.map(lambda plan: self._fit(plan, results, final=True), unresolved))
        if self._options.keep_spectra:  # in model order, whichever thread fitted first
            self._partial.spectra.update((plan.name, self._pooled[plan.index]) for plan in self._submitted
                                         if plan.index in self._pooled)
        self._partial.eigensolve_seconds = self._batcher.eigensolve_seconds
        return self._partial

    def _on_solved(self, key: SolveKey, result: SolveResult) -> None:
        """The batcher's ``on_result``: fits the layer once all of its solves are in (one per slice,
        as gate.layers.plan.layer_matrices gives, and a shuffled copy of each with randomize)."""
        plan = self._plan_at[key.layer]
        with self._lock:
            solved = self._solved.setdefault(key.layer, {})
            solved[key] = result
            if len(solved) < len(plan.slices) * (2 if self._options.randomize else 1):
                return
            del self._solved[key.layer]
        self._fit(plan, solved, final=False)

    def _fit(self, plan: LayerPlan, results: dict[SolveKey, SolveResult], final: bool) -> None:
        """The layer's ESD metrics and fit. Unless ``final``, a float32 solve whose tail is
        unresolved is set aside for the float64 solve instead of being fitted further."""
        row = self._partial.rows[plan.index]
        if not _add_spectral_row(row, results, plan, self._device):
            self._solving.update(1)
            return  # non-finite or all-zero weights: the row says which
        if not final and tail_unresolved(self._precision, _widest(results, plan), row["eig_error_bound"], row["xmin"]):
            with self._lock:
                self._unresolved.append(plan)
            return
        self._pooled[plan.index] = self._add_fit_rows(row, results, plan)
        self._solving.update(1)

    def _add_fit_rows(self, row: dict[str, Any], results: dict[SolveKey, SolveResult], plan: LayerPlan) -> np.ndarray:
        """The metrics of one analysable layer beyond its fit: MP comparison, fit quality and the
        optional estimators (one layer per call, so layers run on several threads); returns the
        layer's pooled eigenvalues."""
        evals = _pooled(results, plan)
        row.update(random_like_statistics(evals, plan.N, plan.M, plan.rf))
        row.update(fit_quality(evals, row["alpha"], row["xmin"], row["D"], row["num_pl_spikes"],
                               likelihood_ratio=False))
        if self._options.tail_estimators:
            from gate.metrics.tail_estimators import alpha_hill

            row["alpha_hill"] = alpha_hill(evals)
        if self._options.mp_fit:
            from gate.metrics.marchenko_pastur import mp_fit

            row.update(mp_fit(evals, plan.N, plan.M))
        if self._options.randomize:
            from gate.metrics.marchenko_pastur import randomized_comparison

            row.update(randomized_comparison(evals, _pooled(results, plan, randomized=True), plan.N, plan.M))
        return evals

    def _collect_digest(self) -> None:
        if self._pending_digest is not None:
            name, future = self._pending_digest
            self._partial.tensor_digests[name] = future.result()
            self._pending_digest = None


def _alpha_farms(matrices: list[torch.Tensor], scale: float) -> float:
    """FARMS alpha from the loaded matrices (NaN for NaN/Inf weights: their layer is reported nonfinite)."""
    from gate.metrics.tail_estimators import alpha_farms

    if not all(bool(torch.isfinite(matrix).all()) for matrix in matrices):
        return float("nan")
    return alpha_farms(matrices, scale)


def _shuffler(seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """gate.metrics.marchenko_pastur (scipy.stats, seconds to import) loads only for scans that use it."""
    from gate.metrics.marchenko_pastur import Shuffler

    return Shuffler(seed)


def _solve_in_float64(reload: Callable[[str], torch.Tensor], plans: list[LayerPlan], device: torch.device,
                      strategy: str) -> dict[SolveKey, SolveResult]:
    """These layers solved again in float64 from their tensors, read once more (memory stays one tensor)."""
    with SpectrumBatcher(device, Precision.FLOAT64, strategy=strategy) as exact:
        for tensor_name in dict.fromkeys(plan.tensor_name for plan in plans):
            tensor = reload(tensor_name).to(device)
            for plan in plans:
                if plan.tensor_name == tensor_name:
                    for k, matrix in enumerate(layer_matrices(plan, tensor)):
                        exact.submit(SolveKey(plan.index, k), matrix)
            del tensor
        return exact.flush()


def _keys(plan: LayerPlan, randomized: bool = False) -> list[SolveKey]:
    """The solve keys of one layer's matrices (one per slice)."""
    return [SolveKey(plan.index, k, randomized) for k in range(len(plan.slices))]


def _widest(results: dict[SolveKey, SolveResult], plan: LayerPlan) -> torch.dtype:
    return max((results[key].dtype for key in _keys(plan)), key=lambda dtype: torch.finfo(dtype).bits)


def _add_spectral_row(row: dict[str, Any], results: dict[SolveKey, SolveResult], plan: LayerPlan,
                      device: torch.device) -> bool:
    """Adds the solved layer's ESD metrics to ``row``, or its weight problem; True when analysable."""
    problem = _weight_problem([results[key] for key in _keys(plan)], plan)
    if problem is not None:
        row.update(problem)
        return False
    # Pooled slices: the largest bound, on the scaled eigenvalues.
    bound = max(results[key].error_bound for key in _keys(plan)) * plan.scale**2
    evals = _pooled(results, plan)
    row.update(spectral_metrics(evals, plan.N, device, error_bound=bound), eig_error_bound=bound,
               solve_precision=dtype_name(_widest(results, plan)))
    if not np.isfinite(row["alpha"]):
        # e.g. a rank-r LoRA update has only r non-zero eigenvalues: too few for a tail of 8
        above = int(np.count_nonzero(evals > 1e-5))
        row.update(status=LayerStatus.DEGENERATE, reason=f"no power-law fit: {above} eigenvalues above 1e-5 "
                                               "(a fit needs 2 distinct ones, and a tail of 8 below 20)")
    return True


def _pooled(results: dict[SolveKey, SolveResult], plan: LayerPlan, randomized: bool = False) -> np.ndarray:
    evals = np.sort(np.concatenate([results[key].eigenvalues for key in _keys(plan, randomized)]))
    return evals * plan.scale**2 if plan.scale != 1.0 else evals


def _weight_problem(solves: list[SolveResult], plan: LayerPlan) -> dict[str, str] | None:
    """The status, ``weight_problem`` and finding of weights no spectrum can be read from: NaN/Inf
    weights (``nonfinite``) or all-zero weights (``degenerate``, problem ``all_zero``); else ``None``.

    Read from the solves: a NaN/Inf weight makes its Gram matrix non-finite, and W^T W is zero only
    for all-zero weights. Weights are counted only once a Gram matrix is known to be non-finite.
    """
    if any(solve.nonfinite_weights is not None for solve in solves):
        bad = sum(solve.nonfinite_weights or 0 for solve in solves)
        nan = sum(solve.nan_weights or 0 for solve in solves)
        reason = (nonfinite_finding(nan, bad - nan, plan.num_weights) if bad
                  else "weights overflow when squared (|w| too large for the Gram matrix)")
        return {"status": LayerStatus.NONFINITE, "reason": reason, "weight_problem": WeightProblem.NONFINITE}
    if all(solve.is_zero for solve in solves):
        return {"status": LayerStatus.DEGENERATE, "reason": ALL_ZERO_FINDING, "weight_problem": WeightProblem.ALL_ZERO}
    return None


ALL_ZERO_FINDING = "all weights are zero"


def nonfinite_finding(nan: int, infinite: int, total: int) -> str:
    """``1 NaN weight (of 2048)``, ``2 infinite weights (of 2048)``, ``1 NaN and 2 infinite weights (of 2048)``."""
    parts = [f"{nan} NaN" if nan else "", f"{infinite} infinite" if infinite else ""]
    noun = "weight" if nan + infinite == 1 else "weights"
    return f"{' and '.join(p for p in parts if p)} {noun} (of {total})"


def _base_row(plan: LayerPlan) -> dict[str, Any]:
    return {
        "layer_id": plan.index,
        "name": plan.name,
        "layer_type": plan.layer_type,
        "tensor": plan.tensor_name,
        "shape": list(plan.shape),
        "status": LayerStatus.OK,
        "reason": "",
        "N": plan.N,
        "M": plan.M,
        "rf": plan.rf,
        "num_evals": plan.num_evals,
        "num_weights": plan.num_weights,
        **({"quantization": plan.quantization} if plan.quantization is not None else {}),
        **dict(plan.columns),
    }
