"""PyTorch Lightning callback: weight metrics every N steps or epochs, MLH early stopping."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from gate.training.monitor import MeasurementSchedule
from gate.training.tracker import ActiveRunSink, MetricSink


class LightningWeightMetrics(MeasurementSchedule, pl.Callback):
    """Measure MLH (and spectral metrics every ``spectral_every``-th time) every ``every_n_steps``
    optimizer steps and/or every ``every_n_epochs`` epochs, logged through the trainer's loggers
    (``MLFlowLogger`` puts them in its run) with step = global step, or to the active MLflow run when
    the trainer has no logger. With ``patience`` (in measurements), stops training when MLH stops
    rising and restores the best weights at the end; the final scan summary is logged as
    ``weights.final.*``.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start(pl_module, _sink(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._measure(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._measure(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.monitor.end(trainer.global_step)

    def _measure(self, trainer: pl.Trainer) -> None:
        if self.monitor.at(trainer.global_step):
            trainer.should_stop = True


def _sink(trainer: pl.Trainer) -> MetricSink:
    loggers = list(trainer.loggers)
    if not loggers:
        return ActiveRunSink()

    def log(metrics: dict[str, float], step: int) -> None:
        for logger in loggers:
            logger.log_metrics(metrics, step=step)

    return log
