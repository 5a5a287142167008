"""Scan options: everything that changes a scan's numbers, validated once at the boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gate.errors import GateInputError
from gate.layers.plan import PlanOptions
from gate.solver.precision import Precision
from gate.solver.spectrum import resolve_device


@dataclass(frozen=True)
class ScanOptions:
    """Everything that changes a scan's numbers; recorded in the result for reproducibility."""

    device: str = "auto"
    precision: str = "auto"  # or "float64" / "float32" for every layer (gate.solver.precision says how auto chooses)
    strategy: str = "auto"  # "pool" (CPU default) or "batched" (GPU default, any device): gate.solver.spectrum
    min_evals: int = 8
    max_evals: int | None = None
    max_N: int | None = None
    conv2d_method: str = "pooled"
    mp_fit: bool = False
    randomize: bool = False
    seed: int = 0
    benford: bool = True
    # The weights' sha256 (gate.scanning.fingerprint), from the same read: what a decision is recorded against.
    # Callers that record no decision (the training tracker, rank) turn it off: hashing is ~10% of a
    # CPU scan's work, and ~8 s per measurement of a 7B model.
    fingerprint: bool = True
    tail_estimators: bool = False  # also alpha_hill and alpha_farms (gate.metrics.tail_estimators), optional metrics
    keep_spectra: bool = False  # keep each layer's eigenvalues in ScanResult.spectra (for ESD plots)
    train_accuracy: float | None = None  # enables EIC (training accuracy as a fraction in [0, 1])

    def plan_options(self) -> PlanOptions:
        return PlanOptions(self.min_evals, self.max_evals, self.max_N, self.conv2d_method)


def scan_options(**options: Any) -> ScanOptions:
    """Validated :class:`ScanOptions` from keyword arguments (the boundary: errors name the input)."""
    unknown = set(options) - set(ScanOptions.__dataclass_fields__)
    if unknown:
        raise GateInputError(
            f"unknown scan option(s) {sorted(unknown)}; valid: {sorted(ScanOptions.__dataclass_fields__)}"
        )
    parsed = ScanOptions(**options)
    if parsed.train_accuracy is not None and not 0 <= parsed.train_accuracy <= 1:
        raise GateInputError(f"train_accuracy must be a fraction in [0, 1], not {parsed.train_accuracy}")
    try:
        Precision.parse(parsed.precision)
    except ValueError as error:
        raise GateInputError(str(error)) from None
    if parsed.strategy not in ("auto", "pool", "batched"):
        raise GateInputError(f"strategy must be one of ['auto', 'pool', 'batched'], not {parsed.strategy!r}")
    if parsed.conv2d_method not in ("pooled", "per_slice"):
        raise GateInputError(f"conv2d_method must be one of ['pooled', 'per_slice'], not {parsed.conv2d_method!r}")
    for name in ("min_evals", "max_evals", "max_N"):
        value = getattr(parsed, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise GateInputError(f"{name} must be a whole number >= 1, not {value!r}")
    resolve_device(parsed.device)  # an unusable device fails here, before a source is opened
    return parsed
