"""Hugging Face ``TrainerCallback``: weight metrics every N steps or epochs, MLH early stopping."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from gate.errors import GateInputError
from gate.training.monitor import TrainingMonitor


class HFWeightMetricsCallback(TrainerCallback):
    """Measure MLH (and spectral metrics every ``spectral_every``-th time) every ``every_n_steps``
    steps and/or every ``every_n_epochs`` epochs, logged to the active MLflow run (the one
    transformers' MLflowCallback starts with ``report_to="mlflow"``, or your own) with step = global
    step. With ``patience`` (in measurements) training stops when MLH stops rising and the best
    weights are restored at the end; the final scan summary is logged as ``weights.final.*``.
    """

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
        self._epochs_done = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:
        self.monitor = TrainingMonitor(model, "mlflow", **self.options)
        self._epochs_done = 0

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._measure(state, control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._epochs_done += 1
        if self.every_n_epochs and self._epochs_done % self.every_n_epochs == 0:
            self._measure(state, control)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.monitor.end(state.global_step)

    def _measure(self, state: TrainerState, control: TrainerControl) -> None:
        if self.monitor.at(state.global_step):
            control.should_training_stop = True
