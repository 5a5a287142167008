"""What the framework callbacks share: measure at a step, decide whether to stop, and at the end
restore the best weights and log the final summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gate.errors import GateInputError
from gate.training.early_stopping import MLHEarlyStopping
from gate.training.tracker import MetricSink, WeightMetricsTracker

if TYPE_CHECKING:
    from gate.scanning.result import ScanResult


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


class MeasurementSchedule:
    """The options both framework callbacks take, checked once: when to measure (steps and/or
    epochs) and what the :class:`TrainingMonitor` they start at the beginning of training does."""

    def __init__(self, every_n_steps: int | None = None, every_n_epochs: int | None = 1, spectral_every: int = 0,
                 patience: int | None = None, min_delta: float = 0.0, restore_best_weights: bool = True,
                 final_summary: bool = True, device: str = "cpu") -> None:
        if not every_n_steps and not every_n_epochs:
            raise GateInputError("give every_n_steps or every_n_epochs (or both): nothing would be measured")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.options: dict[str, Any] = dict(spectral_every=spectral_every, patience=patience, min_delta=min_delta,
                                            restore_best_weights=restore_best_weights,
                                            final_summary=final_summary, device=device)
        self.monitor: TrainingMonitor | None = None

    def start(self, model: torch.nn.Module, sink: MetricSink | str | None) -> None:
        self.monitor = TrainingMonitor(model, sink, **self.options)
