"""Weight metrics while a model trains: MLH (and optionally spectral metrics) every N steps or
epochs, logged to MLflow, and MLH-based early stopping that needs no validation set.

``WeightMetricsTracker`` and ``MLHEarlyStopping`` serve plain PyTorch loops. The PyTorch Lightning
callback (``gate.training.lightning``) and the Hugging Face ``TrainerCallback``
(``gate.training.huggingface``) live in their own modules, imported only when asked for, so that
``import gate.training`` loads neither framework.
"""

from __future__ import annotations

from typing import Any

from gate.training.early_stopping import MLHEarlyStopping
from gate.training.tracker import WeightMetricsTracker, model_mlh

__all__ = ["MLHEarlyStopping", "WeightMetricsTracker", "model_mlh", "LightningWeightMetrics",
           "HFWeightMetricsCallback"]

_LAZY = {"LightningWeightMetrics": "gate.training.lightning", "HFWeightMetricsCallback": "gate.training.huggingface"}


def __getattr__(name: str) -> Any:
    """The framework callbacks, imported on first use (their frameworks are heavy)."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gate.training' has no attribute {name!r}")
