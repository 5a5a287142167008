"""Early stopping on MLH instead of validation accuracy (Sahu et al., docs/metrics.md): the training
data that a validation split would hold back can all be trained on."""

from __future__ import annotations

import math

import torch

from gate.errors import GateInputError


class MLHEarlyStopping:
    """Stop when MLH has not risen by more than ``min_delta`` for ``patience`` measurements.

    Call :meth:`update` with each measurement's MLH; it returns True when training should stop.
    With ``restore_best_weights`` a CPU copy of the state at the best MLH is kept and
    :meth:`restore` puts it back into the model. A NaN MLH (no digits) never counts as better.
    """

    def __init__(self, model: torch.nn.Module, patience: int = 15, min_delta: float = 0.0,
                 restore_best_weights: bool = True) -> None:
        if patience < 1:
            raise GateInputError(f"patience must be at least 1 measurement, not {patience}")
        if min_delta < 0:
            raise GateInputError(f"min_delta must be >= 0 (an MLH rise that counts as better), not {min_delta}")
        self.model = model
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best_weights = restore_best_weights
        self.best_mlh = -math.inf
        self.best_step: int | None = None
        self.stopped_step: int | None = None
        self.waited = 0
        self._best_state: dict[str, torch.Tensor] | None = None

    def update(self, step: int, mlh: float) -> bool:
        """Record the MLH measured at ``step``; True once patience has run out."""
        if not math.isnan(mlh) and mlh > self.best_mlh + self.min_delta:
            self.best_mlh, self.best_step, self.waited = mlh, step, 0
            if self.restore_best_weights:
                self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            return False
        self.waited += 1
        if self.waited >= self.patience:
            self.stopped_step = step
            return True
        return False

    def restore(self) -> bool:
        """Load the best weights back into the model; False when there is nothing to restore."""
        if self._best_state is None:
            return False
        self.model.load_state_dict(self._best_state)
        return True
