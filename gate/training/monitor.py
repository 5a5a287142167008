"""What the framework callbacks share: measure at a step, decide whether to stop, and at the end
restore the best weights and log the final summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gate.training.early_stopping import MLHEarlyStopping
from gate.training.tracker import MetricSink, WeightMetricsTracker

if TYPE_CHECKING:
    from gate.result import ScanResult


class TrainingMonitor:
    """A tracker plus, when ``patience`` is given, MLH early stopping over its measurements."""

    def __init__(self, model: torch.nn.Module, sink: MetricSink | str | None, spectral_every: int = 0,
                 patience: int | None = None, min_delta: float = 0.0, restore_best_weights: bool = True,
                 final_summary: bool = True, device: str = "cpu") -> None:
        self.tracker = WeightMetricsTracker(model, every=1, spectral_every=spectral_every, sink=sink, device=device)
        self.stopping = (MLHEarlyStopping(model, patience, min_delta, restore_best_weights)
                         if patience is not None else None)
        self.final_summary = final_summary
        self.final: ScanResult | None = None

    def at(self, global_step: int) -> bool:
        """Measure now; True when early stopping says training should stop."""
        metrics = self.tracker.measure(global_step)
        return self.stopping is not None and self.stopping.update(global_step, metrics["mlh"])

    def end(self, global_step: int) -> None:
        """Put the best weights back (if stopping kept them), then scan and log the final weights."""
        if self.stopping is not None and self.stopping.restore_best_weights:
            self.stopping.restore()
        if self.final_summary:
            self.final = self.tracker.finish(global_step)
