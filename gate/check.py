"""``weightgate check``: scan a model (and its baseline), evaluate the policy, record a decision."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from gate.compare import DISTANCE_COLUMNS, layer_distances, one_pass
from gate.errors import GateInputError
from gate.jsonvalues import json_value
from gate.options import ScanOptions, resolve_device
from gate.policy.decision import Decision, decide, now_utc, weightgate_version
from gate.policy.evaluate import evaluate
from gate.policy.quantisation import quantisation_finding
from gate.policy.schema import load_policy
from gate.report.changes import against_baseline, layer_changes
from gate.scanning.pipeline import scan
from gate.scanning.result import ScanResult
from gate.sources import WeightSource, open_source

SUMMARY_KEYS = ("num_layers", "num_analysed", "num_skipped", "num_nonfinite", "num_degenerate", "alpha", "alpha_weighted",
                "log_spectral_norm", "stable_rank", "mlh", "random_like_fraction")


@dataclass
class CheckResult:
    decision: Decision
    scan: ScanResult
    baseline_scan: ScanResult | None
    # per-layer cosine / relative distance against the baseline (local checks with a baseline, and
    # checks on Ray whose policy needs them)
    pairs: pd.DataFrame | None = None


def check(source: Any, *, policy: str | None = None, baseline: Any = None, device: str = "auto",
          train_accuracy: float | None = None, allow_pickle: bool = False, tracking_uri: str | None = None,
          keep_spectra: bool = False, ray_address: str | None = None) -> CheckResult:
    """Evaluate ``policy`` (default: the shipped one) on ``source`` against ``baseline``.

    ``ray_address`` (``"auto"`` or HOST:PORT) runs the scans as tasks on that Ray cluster
    (gate.distributed); the decision is the same as a local one's.

    ``source`` and ``baseline`` may be opened :class:`WeightSource` objects: each is read once and
    left open for its owner, the caller, to close (as :func:`gate.scanning.pipeline.scan` does);
    what ``check`` opens itself it closes."""
    options = ScanOptions.of(device=device, train_accuracy=train_accuracy, keep_spectra=keep_spectra)
    loaded = load_policy(policy)
    if train_accuracy is None and loaded.needs_train_accuracy():
        raise GateInputError(f"{loaded.path}: rules on eic, eic_scaled or eic_sr need the model's training accuracy; "
                             "pass --train-accuracy (Python: train_accuracy=0.93), or use a policy without them")
    # Distances to the baseline come from the scans' own pass locally (a few reductions per layer):
    # the report shows every layer's cosine and distance. On Ray they need a second local read, so
    # only a policy that judges them pays for it.
    distances = baseline is not None and (ray_address is None or loaded.needs_baseline_weights())
    # A device that is not there fails before any model is read or downloaded. On Ray the scans'
    # device is the cluster's matter, but distances to the baseline are computed on this machine.
    torch_device = resolve_device(options.device) if ray_address is None or distances else None
    preload = threading.Thread(target=_import_great_expectations, daemon=True)
    preload.start()  # Great Expectations imports for seconds; let that overlap with the scans
    # Eigenvalues are kept where a rule judges power-law fits: its likelihood-ratio test needs them.
    keep_spectra = keep_spectra or any(rule.fit == "well_fitted" for rule in loaded.rules)
    options = ScanOptions.of(options, keep_spectra=keep_spectra, **loaded.scan_options())
    opened = {"allow_pickle": allow_pickle, "tracking_uri": tracking_uri}
    # One read of each model: the scan computes spectra, Benford digits and the fingerprint together.
    pairs = None
    if distances and ray_address is None:
        # Rules on the baseline's weights (cosine, relative distance): the distances come from the same pass.
        result, baseline_result, pairs = _scan_with_distances(source, baseline, opened, options, torch_device)
    else:
        result = _scan(source, opened, options, ray_address)
        baseline_result = _scan(baseline, opened, options, ray_address) if baseline is not None else None
        if distances:
            # On Ray the scans ran on the cluster; the distances read the two models here, a tensor pair at a time.
            with _reading(source, opened) as weights, _reading(baseline, opened) as base_weights:
                pairs = layer_distances(weights, base_weights, torch_device)
    preload.join()
    outcomes = evaluate(loaded, result, baseline_result, pairs)
    changes = []
    if baseline_result is not None:
        offending = [o["name"] for rule in outcomes if not rule.passed for o in rule.offending_layers]
        changes = layer_changes(against_baseline(result.layers, baseline_result.layers, pairs), offending)
    decision = Decision(
        decision=decide(outcomes),
        source=result.source,
        baseline=baseline_result.source if baseline_result else None,
        policy={"path": loaded.path, "name": loaded.name, "sha256": loaded.sha256},
        weights_sha256=result.weights_sha256,
        baseline_weights_sha256=baseline_result.weights_sha256 if baseline_result else None,
        rules=outcomes,
        summary={**{key: json_value(result.summary.get(key)) for key in SUMMARY_KEYS},  # strict JSON: a NaN mean is null
                 "quantisation": quantisation_finding(result, baseline_result, pairs)},
        timestamp=now_utc(),
        weightgate_version=weightgate_version(),
        changes=changes,
    )
    return CheckResult(decision, result, baseline_result, pairs)


def _scan(source: Any, opened: dict[str, Any], options: ScanOptions, ray_address: str | None) -> ScanResult:
    if ray_address is not None:
        from gate.distributed.executor import scan_on_ray

        return scan_on_ray(source, options, address=ray_address, **opened)
    with _reading(source, opened) as weights:
        return scan(weights, options)


def _scan_with_distances(source: Any, baseline: Any, opened: dict[str, Any], options: ScanOptions,
                         device: torch.device) -> tuple[ScanResult, ScanResult, pd.DataFrame]:
    """Both scans and the per-layer distances between the two models, reading each model once."""
    with _reading(source, opened) as weights, _reading(baseline, opened) as base_weights:
        result, baseline_result, rows, _, _ = one_pass(weights, base_weights, None, options, device)
    return result, baseline_result, pd.DataFrame(rows).reindex(columns=DISTANCE_COLUMNS)


@contextmanager
def _reading(source: Any, opened: dict[str, Any]) -> Iterator[WeightSource]:
    """``source`` opened for reading; closed afterwards only if it was opened here (a
    :class:`WeightSource` passed in belongs to the caller)."""
    weights = open_source(source, **opened)
    with nullcontext() if weights is source else weights:
        yield weights


def _import_great_expectations() -> None:
    import great_expectations  # noqa: F401
