"""The scan pipeline: source -> layer plans -> one pass over the tensors -> partial result -> merge.

One pass: every tensor is loaded once, and from that load come its fingerprint digest, its Benford
digit counts and the Gram matrices of its layers (the spectra). Tensors are dropped after their
Gram matrices are formed, so host memory holds one tensor plus the queued Gram matrices (bounded by
the batcher's budget), whatever the model size. The one exception: under ``precision="auto"`` a
layer stored in 16 bits whose float32 solve does not resolve its tail (gate.solver.precision) is read once
more to be solved in float64.

Seams for distributed scans: :func:`analyse_tensors` analyses any subset of a model's tensors and
returns a small picklable :class:`PartialScan` (layer rows, digit counts, tensor digests);
:func:`merge_partials` builds the :class:`ScanResult` from partials of disjoint subsets that
together cover the model (peer ratios, the summary and the fingerprint are computed only there,
so the result does not depend on how the model was split). :class:`TensorPass` is the incremental
form, fed tensors that the caller loads (gate.compare feeds two models in step).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import pandas as pd
import torch

from gate.layers.plan import LayerPlan, PlanOptions
from gate.layers.planner import plan_layers
from gate.metrics.benford import ModelDigits
from gate.metrics.random_like import random_like_fraction
from gate.metrics.spectral import add_peer_ratios
from gate.options import ScanOptions, resolve_device
from gate.progress import iterate, shown
from gate.scanning.fingerprint import combine
from gate.scanning.result import LEADING_COLUMNS, ScanResult
from gate.scanning.summary import summarize, tensor_counts
from gate.scanning.tensor_pass import PartialScan, TensorPass
from gate.solver.spectrum import cpu_threads_for_blas
from gate.sources import TensorInfo, WeightSource, open_source


def scan(
    source: Any,
    options: ScanOptions | None = None,
    *,
    allow_pickle: bool = False,
    tracking_uri: str | None = None,
    progress: bool | None = None,
    **changes: Any,
) -> ScanResult:
    """Scan a model's weights.

    ``source``: path, MLflow URI, ``nn.Module`` or state dict. ``options`` (default: the defaults)
    with ``changes``, keyword arguments named as :class:`ScanOptions`'s fields (e.g.
    ``device="cuda"``, ``mp_fit=True``, ``randomize=True``), checked before the source is opened.
    ``progress``: True shows bars (tensors read, layers solved, downloads) on stderr when it is a
    terminal, False shows none; None (the default) leaves it to the caller's
    :func:`gate.progress.shown` (off unless a caller turned bars on).
    """
    parsed = ScanOptions.of(options, **changes)
    device = resolve_device(parsed.device)
    started = time.perf_counter()
    with nullcontext() if progress is None else shown(progress):
        weights = open_source(source, allow_pickle=allow_pickle, tracking_uri=tracking_uri)
        # A WeightSource passed in belongs to the caller: leave it open.
        with nullcontext() if weights is source else weights:
            infos = weights.tensor_infos()
            plans = plan_layers(infos, PlanOptions.of(parsed), weights.model_config)
            names = iterate([info.name for info in infos], "reading", "tensor")
            partial = analyse_tensors(weights, plans, names, parsed, device)
            description = weights.description
    return merge_partials([partial], description, infos, parsed, device, time.perf_counter() - started)


def analyse_tensors(weights: WeightSource, plans: list[LayerPlan], tensor_names: Iterable[str], options: ScanOptions,
                    device: torch.device) -> PartialScan:
    """One pass over the named tensors of ``weights``: each is loaded once (``plans`` may cover the
    whole model; only the layers of these tensors are analysed)."""
    with cpu_threads_for_blas(device), TensorPass(plans, options, device) as tensor_pass:
        for name in tensor_names:
            tensor_pass.feed(name, weights.load(name))
        return tensor_pass.finish(weights.load)


def merge_partials(partials: list[PartialScan], description: str, infos: list[TensorInfo], options: ScanOptions,
                   device: torch.device, seconds: float) -> ScanResult:
    """The scan result of a model from partial scans of disjoint tensor subsets covering it."""
    covered = set().union(*(part.tensors for part in partials))
    missing = [info.name for info in infos if info.name not in covered]
    if missing:
        raise ValueError(f"partial scans do not cover tensors {missing[:5]} ({len(missing)} in all)")
    rows = {index: row for part in partials for index, row in part.rows.items()}
    layers = _layer_table([rows[i] for i in sorted(rows)])
    add_peer_ratios(layers)
    summary = summarize(layers)
    summary["random_like_fraction"] = random_like_fraction(layers)
    summary.update(tensor_counts(infos))
    if options.benford:
        vectors_left_out = sum(1 for info in infos if info.is_floating and len(info.shape) < 2)
        digits = ModelDigits.merged([part.digits for part in partials])
        summary.update(digits.summary(vectors_left_out, options.train_accuracy))
    summary["device"] = device.type
    summary["scan_seconds"] = seconds
    summary["eigensolve_seconds"] = sum(part.eigensolve_seconds for part in partials)
    spectra = {name: evals for part in partials for name, evals in part.spectra.items()}
    digests = {name: digest for part in partials for name, digest in part.tensor_digests.items()}
    fingerprint = combine(digests) if options.fingerprint else None
    return ScanResult(description, layers, summary, asdict(options), spectra, weights_sha256=fingerprint)


def _layer_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=LEADING_COLUMNS)
    rest = [c for c in table.columns if c not in LEADING_COLUMNS]
    if "expert" in table.columns:  # only expert rows have one: integers with gaps, not floats
        table["expert"] = table["expert"].astype("Int64")
    return table[LEADING_COLUMNS + rest]

