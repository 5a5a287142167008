"""Which tensors are layer weight matrices, and how each becomes the matrices whose spectra we analyse.

Planning looks only at names, shapes and dtypes (no tensor data), so it sees the whole model before
anything is loaded. Conventions follow WeightWatcher 0.7.7 (see DESIGN.md): Conv2d kernels are split
into kh*kw slices whose eigenvalues are pooled after scaling by sqrt(1/2); layers whose number of
eigenvalues M*rf is below ``min_evals`` are skipped with a stated reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from gate.sources.base import TensorInfo

# Layer types reported in the layer table.
DENSE, EMBEDDING, CONV1D, CONV2D, RECURRENT = "dense", "embedding", "conv1d", "conv2d", "recurrent"

CONV2D_SCALE = math.sqrt(0.5)  # WeightWatcher's conv2d_norm: pooled slice eigenvalues x 0.5
_RECURRENT = re.compile(r"(^|\.)weight_(ih|hh)_l\d+(_reverse)?$")
_GATE_NAMES = {4: ("i", "f", "g", "o"), 3: ("r", "z", "n"), 1: ("h",)}
_RECURRENT_GATES = {"LSTM": 4, "LSTMCell": 4, "GRU": 3, "GRUCell": 3, "RNN": 1, "RNNCell": 1}
_EMBEDDING_NAME = re.compile(r"(embed|(^|\.)(wte|wpe|tok_embeddings)(\.|$))", re.IGNORECASE)
_CONV_MODULES = {None, "Conv", "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"}


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

    @property
    def num_evals(self) -> int:
        return self.M * self.rf


@dataclass(frozen=True)
class PlanOptions:
    """Knobs of layer selection (WeightWatcher's names and defaults where it has them)."""

    min_evals: int = 8
    max_evals: int | None = None
    max_N: int | None = None
    conv2d_method: str = "pooled"  # or "per_slice" (one row per kernel position, 004's method 1)
    conv2d_norm: bool = True


def plan_layers(infos: list[TensorInfo], options: PlanOptions = PlanOptions()) -> list[LayerPlan]:
    """All analysable matrices of a model, in storage order, including skipped ones with reasons."""
    if options.conv2d_method not in ("pooled", "per_slice"):
        raise ValueError(f"conv2d_method must be 'pooled' or 'per_slice', not {options.conv2d_method!r}")
    by_name = {info.name: info for info in infos}
    plans: list[LayerPlan] = []
    for info in infos:
        if not info.is_floating or len(info.shape) < 2:
            continue  # biases, norms, integer buffers: not matrices
        for plan in _plans_for_tensor(info, by_name, options, len(plans)):
            plans.append(_with_size_check(plan, options))
    return plans


def _plans_for_tensor(info: TensorInfo, by_name: dict[str, TensorInfo], options: PlanOptions, start: int):
    base = info.name.removesuffix(".weight")
    shape = info.shape
    ndim = len(shape)
    if ndim == 2 and _RECURRENT.search(info.name):
        yield from _recurrent_plans(info, by_name, start)
    elif ndim == 2:
        layer_type = EMBEDDING if _is_embedding(info) else DENSE
        yield LayerPlan(start, base, info.name, layer_type, shape, max(shape), min(shape), 1,
                        module_type=info.module_type)
    elif ndim == 3 and info.module_type in _CONV_MODULES:
        out_ch, in_ch, width = shape
        slices = tuple((slice(None), slice(None), k) for k in range(width))
        yield LayerPlan(start, base, info.name, CONV1D, shape, max(out_ch, in_ch), min(out_ch, in_ch), width,
                        slices=slices, module_type=info.module_type)
    elif ndim == 4 and info.module_type in _CONV_MODULES:
        yield from _conv2d_plans(info, base, options, start)
    else:
        kind = info.module_type or "unknown module"
        yield LayerPlan(start, base, info.name, "other", shape, max(shape), min(shape), 1,
                        skip_reason=f"{ndim}-D parameter of {kind}: not a dense, convolution, embedding or recurrent weight",
                        module_type=info.module_type)


def _conv2d_plans(info: TensorInfo, base: str, options: PlanOptions, start: int):
    out_ch, in_ch, kh, kw = info.shape
    N, M = max(out_ch, in_ch), min(out_ch, in_ch)
    positions = [(i, j) for i in range(kh) for j in range(kw)]
    if options.conv2d_method == "pooled":
        scale = CONV2D_SCALE if options.conv2d_norm else 1.0  # WeightWatcher 0.7.7 halves 1x1 kernels too
        slices = tuple((slice(None), slice(None), i, j) for i, j in positions)
        yield LayerPlan(start, base, info.name, CONV2D, info.shape, N, M, kh * kw, slices=slices, scale=scale,
                        module_type=info.module_type)
        return
    for offset, (i, j) in enumerate(positions):
        yield LayerPlan(start + offset, f"{base}[{i},{j}]", info.name, CONV2D, info.shape, N, M, 1,
                        slices=((slice(None), slice(None), i, j),), module_type=info.module_type)


def _recurrent_plans(info: TensorInfo, by_name: dict[str, TensorInfo], start: int):
    """Split stacked gate weights (LSTM: i,f,g,o; GRU: r,z,n) into one matrix per gate."""
    rows, cols = info.shape
    hh_name = info.name.replace("weight_ih_", "weight_hh_")
    hidden = by_name[hh_name].shape[1] if hh_name in by_name else None
    gates = _RECURRENT_GATES.get(info.module_type or "")
    if gates is None and hidden:
        gates = rows // hidden if rows % hidden == 0 else None
    base = info.name.removesuffix(".weight")
    if gates not in _GATE_NAMES or rows % gates:
        yield LayerPlan(start, base, info.name, RECURRENT, info.shape, max(info.shape), min(info.shape), 1,
                        skip_reason="recurrent weight whose gate layout cannot be inferred (expected LSTM/GRU/RNN)",
                        module_type=info.module_type)
        return
    size = rows // gates
    for k, gate in enumerate(_GATE_NAMES[gates]):
        rows_slice = slice(k * size, (k + 1) * size)
        yield LayerPlan(start + k, f"{base}.{gate}", info.name, RECURRENT, info.shape, max(size, cols),
                        min(size, cols), 1, slices=((rows_slice, slice(None)),), module_type=info.module_type)


def _is_embedding(info: TensorInfo) -> bool:
    if info.module_type is not None:
        return info.module_type in ("Embedding", "EmbeddingBag")
    return bool(_EMBEDDING_NAME.search(info.name))


def _with_size_check(plan: LayerPlan, options: PlanOptions) -> LayerPlan:
    if plan.skip_reason:
        return plan
    reason = None
    if 0 in plan.shape:
        reason = f"empty tensor of shape {list(plan.shape)}"
    elif plan.num_evals < options.min_evals:
        reason = f"too small: M*rf = {plan.num_evals} eigenvalues < min_evals = {options.min_evals}"
    elif options.max_evals is not None and plan.num_evals > options.max_evals:
        reason = f"too large: M*rf = {plan.num_evals} eigenvalues > max_evals = {options.max_evals}"
    elif options.max_N is not None and plan.N > options.max_N:
        reason = f"too large: N = {plan.N} > max_N = {options.max_N}"
    if reason is None:
        return plan
    return LayerPlan(**{**plan.__dict__, "skip_reason": reason})


def layer_matrices(plan: LayerPlan, tensor: torch.Tensor) -> list[torch.Tensor]:
    """The 2-D matrices of one layer, each oriented N x M (N >= M).

    ``plan.scale`` is not applied here: it multiplies the eigenvalues by ``scale**2`` after the
    solve, which avoids rounding a scaled copy in the tensor's low-precision dtype.
    """
    matrices = []
    for index in plan.slices:
        matrix = tensor[index] if index else tensor
        matrices.append(matrix.T if matrix.shape[0] < matrix.shape[1] else matrix)
    return matrices
