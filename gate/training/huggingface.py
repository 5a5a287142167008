"""Hugging Face ``TrainerCallback``: weight metrics every N steps or epochs, MLH early stopping."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from gate.training.monitor import MeasurementSchedule


class HFWeightMetricsCallback(MeasurementSchedule, TrainerCallback):
    """Measure MLH (and spectral metrics every ``spectral_every``-th time) every ``every_n_steps``
    steps and/or every ``every_n_epochs`` epochs, logged to the active MLflow run (the one
    transformers' MLflowCallback starts with ``report_to="mlflow"``, or your own) with step = global
    step. With ``patience`` (in measurements) training stops when MLH stops rising and the best
    weights are restored at the end; the final scan summary is logged as ``weights.final.*``.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # MeasurementSchedule's options, checked there
        self._epochs_done = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:
        self.start(model, "mlflow")
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
