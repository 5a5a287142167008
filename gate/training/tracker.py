"""Measure a live model's weights during training and log the numbers to MLflow.

MLH (Benford closeness of the weights' first digits, gate.metrics.benford) costs one pass of digit
counting over the weight matrices, so it can run every epoch; the spectral metrics need an
eigensolve per layer (a full gate.scan) and run only every ``spectral_every`` measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from gate.errors import GateInputError
from gate.jsonvalues import metric_value
from gate.layers.planner import plan_layers
from gate.metrics.benford import ModelDigits
from gate.options import ScanOptions, resolve_device
from gate.sources.module import ModuleSource

if TYPE_CHECKING:
    from gate.scanning.result import ScanResult

MetricSink = Callable[[dict[str, float], int], None]
SPECTRAL_METRICS = ("alpha", "alpha_weighted", "log_alpha_norm", "stable_rank")
PREFIX = "weights."


def matrix_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a scan counts into the model's MLH: the tensors it plans as layer matrices
    (2+ dimensions, floating point), each once; biases and norm vectors are left out."""
    live = dict(model.named_parameters())  # the live tensors, on whatever device the model trains
    names = dict.fromkeys(plan.tensor_name for plan in plan_layers(ModuleSource(model).tensor_infos()))
    return {name: live[name] for name in names}


def model_mlh(model: torch.nn.Module, parameters: dict[str, torch.Tensor] | None = None) -> float:
    """The model's MLH now, as ``gate.scan(model).summary["mlh"]`` would report it, without spectra."""
    digits = ModelDigits()
    for name, parameter in (parameters if parameters is not None else matrix_parameters(model)).items():
        digits.add(name, parameter.detach())
    return digits.counts.mlh()


class ActiveRunSink:
    """Logs to the MLflow run that is active at the first measurement (``mlflow.start_run()``, or the
    one transformers' MLflowCallback starts), and keeps logging to that run even after it ends: the
    final summary comes after frameworks that end their run in their own train-end hook."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self._client: Any = None

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        import time

        import mlflow
        from mlflow.entities import Metric

        if self.run_id is None:
            run = mlflow.active_run()
            if run is None:
                raise GateInputError("no active MLflow run to log weight metrics to: call mlflow.start_run() "
                                     "before training, or pass sink=None to only keep the history")
            self.run_id, self._client = run.info.run_id, mlflow.MlflowClient()
        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


class WeightMetricsTracker:
    """Call :meth:`step` with the global step (or epoch) after each step; every ``every`` calls'
    worth of steps it measures MLH, and spectral metrics every ``spectral_every``-th measurement.

    Metrics are named ``weights.mlh``, ``weights.alpha``, ... and logged with the global step;
    :meth:`finish` logs the final scan summary as ``weights.final.*`` and returns the scan.
    ``sink`` receives (metrics, step); ``"mlflow"`` (default) logs to the active MLflow run
    (:class:`ActiveRunSink`); ``None`` keeps only :attr:`history`.
    """

    def __init__(self, model: torch.nn.Module, every: int = 1, spectral_every: int = 0,
                 sink: MetricSink | str | None = "mlflow", device: str = "cpu") -> None:
        if not isinstance(model, torch.nn.Module):
            raise GateInputError(f"WeightMetricsTracker needs a torch.nn.Module, not {type(model).__name__}")
        if every < 1:
            raise GateInputError(f"every must be a positive number of steps, not {every}")
        if spectral_every < 0:
            raise GateInputError(f"spectral_every must be 0 (never) or a positive number of measurements, "
                                 f"not {spectral_every}")
        self.model = model
        self.every = every
        self.spectral_every = spectral_every
        if isinstance(sink, str) and sink != "mlflow":
            raise GateInputError(f"sink must be 'mlflow', None or a callable(metrics, step), not {sink!r}")
        self.sink: MetricSink | None = ActiveRunSink() if sink == "mlflow" else sink
        # Checked now, not at the first spectral measurement hours into training.
        self.options = ScanOptions.of(device=device)
        resolve_device(device)
        self.history: list[dict[str, float]] = []
        self._parameters = matrix_parameters(model)
        if not self._parameters:
            raise GateInputError(f"{type(model).__name__} has no weight matrices to measure (no parameter with "
                                 "2+ dimensions)")

    def step(self, global_step: int) -> dict[str, float] | None:
        """Measure and log when ``global_step`` is a multiple of ``every``; else return None."""
        if global_step % self.every:
            return None
        return self.measure(global_step)

    def measure(self, global_step: int) -> dict[str, float]:
        """Measure now, whatever the step; returns the metrics (without the ``weights.`` prefix)."""
        metrics = {"mlh": model_mlh(self.model, self._parameters)}
        if self.spectral_every and len(self.history) % self.spectral_every == 0:
            summary = self._scan(full=False).summary
            metrics.update({name: float(summary[name]) for name in SPECTRAL_METRICS if name in summary})
        self.history.append({"step": global_step, **metrics})
        self._log(metrics, global_step)
        return metrics

    def finish(self, global_step: int) -> "ScanResult":
        """Scan the final weights fully; log the summary's numbers as ``weights.final.*``."""
        result = self._scan(full=True)
        self._log({f"final.{key}": value for key, value in result.summary.items()}, global_step)
        return result

    def _scan(self, full: bool) -> "ScanResult":
        """The periodic spectral measurement needs neither Benford digits (``model_mlh`` counts them)
        nor the weights' hash; the final scan has both, like ``gate.scan``'s default."""
        from gate.scanning.pipeline import scan

        with torch.no_grad():
            return scan(self.model, self.options, benford=full, fingerprint=full)

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        # MLflow refuses NaN in some stores, and a NaN is no measurement: leave it out of the log
        # (it stays in history, where a caller can see it), like text and flags in a scan summary.
        finite = {f"{PREFIX}{key}": number for key, value in metrics.items()
                  if (number := metric_value(value)) is not None}
        if self.sink is not None and finite:
            self.sink(finite, step)
