"""A layer plan: one row of the layer table, where its matrices come from and how to cut them.

Plans are made from names, shapes and dtypes alone (:mod:`gate.layers.planner`); the tensor's data
meets its plan only in :func:`layer_matrices`, once the tensor is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gate.options import ScanOptions

# Layer types reported in the layer table.
DENSE, EMBEDDING, CONV1D, CONV2D, CONV3D, RECURRENT = "dense", "embedding", "conv1d", "conv2d", "conv3d", "recurrent"


@dataclass(frozen=True)
class LayerPlan:
    """One row of the layer table: where its matrices come from and how to cut them.

    ``slices`` lists index tuples into the stored tensor (``()`` for a plain matrix); the spectra
    of all slices are pooled into one ESD, as WeightWatcher does for convolutions.
    """

    index: int
    name: str
    tensor_name: str
    layer_type: str
    shape: tuple[int, ...]
    N: int
    M: int
    rf: int
    slices: tuple[tuple, ...] = ((),)
    scale: float = 1.0
    skip_reason: str | None = None
    module_type: str | None = field(default=None, compare=False)
    quantization: str | None = field(default=None, compare=False)  # stored scheme of dequantized weights
    columns: tuple[tuple[str, object], ...] = field(default=(), compare=False)  # from TensorInfo.columns
    unreadable: bool = field(default=False, compare=False)  # the source cannot produce the tensor (skip_reason says why)

    @property
    def num_evals(self) -> int:
        return self.M * self.rf

    @property
    def num_weights(self) -> int:
        """The weights this row stands for: its slices' N x M each, or the whole stored tensor for a
        row that is not cut into matrices (a skipped tensor of unknown kind). What the share of a
        model a rule judged is counted in."""
        if self.slices == ((),):
            return math.prod(self.shape)
        return self.N * self.M * len(self.slices)


@dataclass(frozen=True)
class PlanOptions:
    """Knobs of layer selection (WeightWatcher's names and defaults where it has them)."""

    min_evals: int = 8
    max_evals: int | None = None
    max_N: int | None = None
    conv2d_method: str = "pooled"  # or "per_slice" (one row per kernel position, 004's method 1)

    @classmethod
    def of(cls, options: ScanOptions) -> PlanOptions:
        """The layer-selection knobs of a scan's options."""
        return cls(options.min_evals, options.max_evals, options.max_N, options.conv2d_method)


def layer_matrices(plan: LayerPlan, tensor: torch.Tensor) -> list[torch.Tensor]:
    """The 2-D matrices of one layer, each oriented N x M (N >= M).

    ``plan.scale`` is not applied here: it multiplies the eigenvalues by ``scale**2`` after the
    solve, which avoids rounding a scaled copy in the tensor's low-precision dtype.
    """
    matrices = []
    for index in plan.slices:
        matrix = tensor[index] if index else tensor
        matrices.append(matrix.T if matrix.ndim == 2 and matrix.shape[0] < matrix.shape[1] else matrix)
    return matrices


def channel_rows(plan: LayerPlan, tensor: torch.Tensor) -> torch.Tensor:
    """The layer's weights as [output channels, inputs], as stored (not oriented): the rows a
    per-channel or group-wise quantiser gives their own grid. Pooled kernel positions belong to their
    channel's row."""
    if len(plan.slices) > 1:
        return tensor.reshape(tensor.shape[0], -1)
    index = plan.slices[0]
    matrix = tensor[index] if index else tensor
    return matrix if matrix.ndim == 2 else matrix.reshape(matrix.shape[0], -1)
