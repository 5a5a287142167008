"""The scan pipeline: source -> layer plans -> spectra (batched on the device) -> metrics -> result.

Tensors are loaded one at a time and dropped after their Gram matrices are formed, so host memory
holds one tensor plus the queued Gram matrices (bounded by the batcher's budget), whatever the
model size.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any

import numpy as np
import pandas as pd
import torch

from gate.benford import DigitCounts, ModelDigits, digit_counts
from gate.errors import GateInputError
from gate.layer_metrics import add_peer_ratios, spectral_metrics
from gate.layers import LayerPlan, PlanOptions, layer_matrices, plan_layers
from gate.fit_quality import fit_quality
from gate.marchenko_pastur import (Shuffler, mp_fit, random_like_fraction, random_like_statistics,
                                    randomized_comparison)
from gate.result import LEADING_COLUMNS, ScanResult
from gate.sources import WeightSource, open_source
from gate.spectrum import SpectrumBatcher, cpu_threads_for_blas, resolve_device
from gate.summary import summarize

TAIL_TOLERANCE = 1e-3  # largest relative error bound accepted at xmin for a float32 solve (precision="auto")


@dataclass(frozen=True)
class ScanOptions:
    """Everything that changes a scan's numbers; recorded in the result for reproducibility."""

    device: str = "auto"
    precision: str = "auto"  # or "float64" / "float32" for every layer (gate.spectrum says how auto chooses)
    min_evals: int = 8
    max_evals: int | None = None
    max_N: int | None = None
    conv2d_method: str = "pooled"
    mp_fit: bool = False
    randomize: bool = False
    seed: int = 0
    benford: bool = True
    keep_spectra: bool = False  # keep each layer's eigenvalues in ScanResult.spectra (for ESD plots)
    train_accuracy: float | None = None  # enables EIC (training accuracy as a fraction in [0, 1])


def scan(
    source: Any,
    *,
    allow_pickle: bool = False,
    tracking_uri: str | None = None,
    progress: bool = False,
    **options: Any,
) -> ScanResult:
    """Scan a model's weights.

    ``source``: path, MLflow URI, ``nn.Module`` or state dict. ``options``: the fields of
    :class:`ScanOptions` (e.g. ``device="cuda"``, ``mp_fit=True``, ``randomize=True``).
    ``progress`` shows a bar on stderr when it is a terminal.
    """
    unknown = set(options) - set(ScanOptions.__dataclass_fields__)
    if unknown:
        raise GateInputError(
            f"unknown scan option(s) {sorted(unknown)}; valid: {sorted(ScanOptions.__dataclass_fields__)}"
        )
    scan_options = ScanOptions(**options)
    if scan_options.train_accuracy is not None and not 0 <= scan_options.train_accuracy <= 1:
        raise GateInputError(f"train_accuracy must be a fraction in [0, 1], not {scan_options.train_accuracy}")
    device = resolve_device(scan_options.device)
    started = time.perf_counter()
    weights = open_source(source, allow_pickle=allow_pickle, tracking_uri=tracking_uri)
    # A WeightSource passed in belongs to the caller (e.g. compare reads it again): leave it open.
    owner = nullcontext() if weights is source else weights
    with cpu_threads_for_blas(device), owner:
        plan_options = PlanOptions(scan_options.min_evals, scan_options.max_evals, scan_options.max_N,
                                   scan_options.conv2d_method)
        plans = plan_layers(weights.tensor_infos(), plan_options)
        spectra: dict[str, np.ndarray] = {}
        rows, model_digits = _analyse(weights, plans, scan_options, device, progress, spectra)
        description = weights.description
        vectors_left_out = sum(1 for info in weights.tensor_infos() if info.is_floating and len(info.shape) < 2)
    layers = _layer_table(rows)
    add_peer_ratios(layers)
    summary = summarize(layers)
    summary["random_like_fraction"] = random_like_fraction(layers)
    if scan_options.benford:
        summary.update(model_digits.summary(vectors_left_out, scan_options.train_accuracy))
    summary["device"] = device.type
    summary["scan_seconds"] = time.perf_counter() - started
    return ScanResult(description, layers, summary, asdict(scan_options), spectra)


def _analyse(weights: WeightSource, plans: list[LayerPlan], options: ScanOptions, device: torch.device,
             progress: bool, spectra: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], ModelDigits]:
    shuffle = Shuffler(options.seed)
    model_digits = ModelDigits()
    rows: dict[int, dict[str, Any]] = {}
    groups = [(name, list(group)) for name, group in groupby(plans, key=lambda p: p.tensor_name)]
    submitted: list[LayerPlan] = []
    with SpectrumBatcher(device, options.precision) as batcher:
        for tensor_name, group in _progress(groups, progress):
            tensor = weights.load(tensor_name).to(device)
            tensor_digits = model_digits.add(tensor_name, tensor) if options.benford else None
            for plan in group:
                row = rows[plan.index] = _base_row(plan)
                matrices = layer_matrices(plan, tensor)
                if options.benford:
                    digits = tensor_digits if len(group) == 1 else sum(map(digit_counts, matrices), DigitCounts.empty())
                    row["mlh"] = digits.mlh()
                if plan.skip_reason:
                    row.update(status="skipped", reason=plan.skip_reason)
                    continue
                for k, matrix in enumerate(matrices):
                    batcher.submit((plan.index, k), matrix)
                    if options.randomize:
                        # float32 suffices here: shuffled ESDs feed only the MP fit (a density
                        # estimate with bandwidth 0.1 on rescaled eigenvalues) and the largest eigenvalue.
                        batcher.submit((plan.index, k, "random"), matrix, torch.float32, transform=shuffle)
                submitted.append(plan)
            del tensor
        # Fits wait for the last solve: run between tasks, their Python code would hold the GIL
        # that the pool's threads need to start each task (measured slower on 2 cores).
        batcher.flush()
        analysable = [plan for plan in submitted if _add_spectral_row(rows[plan.index], batcher, plan, device)]
        unresolved = [plan for plan in analysable if _tail_unresolved(rows[plan.index])]
        if unresolved and options.precision == "auto":
            _resolve_in_float64(weights, unresolved, batcher, device)
            for plan in unresolved:
                _add_spectral_row(rows[plan.index], batcher, plan, device)
    for plan in analysable:
        evals = _pooled(batcher.results, plan, ())
        if options.keep_spectra:
            spectra[plan.name] = evals
        row = rows[plan.index]
        row.update(random_like_statistics(evals, plan.N, plan.M))
        row.update(fit_quality(evals, row["alpha"], row["xmin"], row["D"], row["num_pl_spikes"], likelihood_ratio=False))
        if options.mp_fit:
            row.update(mp_fit(evals, plan.N, plan.M))
        if options.randomize:
            row.update(randomized_comparison(evals, _pooled(batcher.results, plan, ("random",)), plan.N, plan.M))
    return [rows[i] for i in sorted(rows)], model_digits


def _keys(plan: LayerPlan) -> list[tuple]:
    """The batcher keys of one layer's matrices (one per slice)."""
    return [(plan.index, k) for k in range(len(plan.slices))]


def _add_spectral_row(row: dict[str, Any], batcher: SpectrumBatcher, plan: LayerPlan, device: torch.device) -> bool:
    """Adds the solved layer's ESD metrics to ``row``, or its weight problem; True when analysable."""
    problem = _weight_problem(batcher, plan)
    if problem is not None:
        row.update(problem)
        return False
    widest = max((batcher.solve_dtypes[key] for key in _keys(plan)), key=lambda dtype: torch.finfo(dtype).bits)
    row.update(_spectral_row(batcher, plan, device), solve_precision=str(widest).removeprefix("torch."))
    return True


def _spectral_row(batcher: SpectrumBatcher, plan: LayerPlan, device: torch.device) -> dict[str, Any]:
    """The ESD metrics of one solved layer, with its eigenvalue error bound (pooled slices: the largest)."""
    bound = max(batcher.error_bounds[key] for key in _keys(plan)) * plan.scale**2
    row = spectral_metrics(_pooled(batcher.results, plan, ()), plan.N, device, error_bound=bound)
    row["eig_error_bound"] = bound
    if not np.isfinite(row["alpha"]):
        row.update(status="degenerate", reason="no power-law fit: fewer than 2 distinct eigenvalues above 1e-5")
    return row


def _tail_unresolved(row: dict[str, Any]) -> bool:
    """A float32 solve whose error bound is not small against the fitted xmin: the tail that alpha,
    xmin and D come from is then not resolved to TAIL_TOLERANCE, and the layer is solved again in
    float64."""
    return row.get("solve_precision") == "float32" and bool(row["eig_error_bound"] > TAIL_TOLERANCE * row["xmin"])


def _resolve_in_float64(weights: WeightSource, plans: list[LayerPlan], batcher: SpectrumBatcher,
                        device: torch.device) -> None:
    """Solve these layers again in float64, reading their tensors once more (memory stays one
    tensor), and replace their eigenvalues, error bounds and solve precisions in ``batcher``."""
    with SpectrumBatcher(device, "float64") as exact:
        for tensor_name, group in groupby(plans, key=lambda p: p.tensor_name):
            tensor = weights.load(tensor_name).to(device)
            for plan in group:
                for k, matrix in enumerate(layer_matrices(plan, tensor)):
                    exact.submit((plan.index, k), matrix)
            del tensor
        batcher.results.update(exact.flush())
    batcher.error_bounds.update(exact.error_bounds)
    batcher.solve_dtypes.update(exact.solve_dtypes)


def _pooled(results: dict, plan: LayerPlan, suffix: tuple) -> np.ndarray:
    parts = [results[(plan.index, k, *suffix)] for k in range(len(plan.slices))]
    evals = np.sort(np.concatenate(parts))
    return evals * plan.scale**2 if plan.scale != 1.0 else evals


def _weight_problem(batcher: SpectrumBatcher, plan: LayerPlan) -> dict[str, str] | None:
    """``nonfinite`` for NaN/Inf weights, ``degenerate`` for all-zero weights, else ``None``.

    Read from the solves: a NaN/Inf weight makes its Gram matrix non-finite, and W^T W is zero only
    for all-zero weights. Weights are counted only once a Gram matrix is known to be non-finite.
    """
    keys = _keys(plan)
    if any(key in batcher.nonfinite for key in keys):
        bad = sum(batcher.nonfinite.get(key, 0) for key in keys)
        total = len(keys) * plan.N * plan.M
        if bad:
            return {"status": "nonfinite", "reason": f"{bad} of {total} weights are NaN or infinite"}
        return {"status": "nonfinite", "reason": "weights overflow when squared (|w| too large for the Gram matrix)"}
    if all(batcher.is_zero(key) for key in keys):
        return {"status": "degenerate", "reason": "all weights are zero"}
    return None


def _base_row(plan: LayerPlan) -> dict[str, Any]:
    return {
        "layer_id": plan.index,
        "name": plan.name,
        "layer_type": plan.layer_type,
        "shape": list(plan.shape),
        "status": "ok",
        "reason": "",
        "N": plan.N,
        "M": plan.M,
        "rf": plan.rf,
        "num_evals": plan.num_evals,
    }


def _layer_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=LEADING_COLUMNS)
    rest = [c for c in table.columns if c not in LEADING_COLUMNS]
    return table[LEADING_COLUMNS + rest]


def _progress(items: list, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc="scanning", unit="tensor", file=sys.stderr)
