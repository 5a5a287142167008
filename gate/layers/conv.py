"""Convolution kernels [out, in, k...] (and ConvTranspose [in, out, k...]): the kernel slices of one
layer, pooled into one ESD as WeightWatcher does, or one row per slice."""

from __future__ import annotations

import itertools
import math

from gate.layers.plan import CONV1D, CONV2D, CONV3D, LayerPlan, PlanOptions
from gate.sources.base import TensorInfo

_CONV_TYPES = {1: CONV1D, 2: CONV2D, 3: CONV3D}  # by number of kernel dimensions


CONV2D_SCALE = math.sqrt(0.5)  # WeightWatcher's conv2d_norm: pooled slice eigenvalues x 0.5


# torch modules, ONNX operators, and Keras layer classes (gate/sources/keras/roles.py hands their kernels over
# in torch's [out, in, k...] / [in, out, k...] layout; a SeparableConv's tensors are its depthwise and 1x1 parts).
_CONV_MODULES = {"Conv", "ConvTranspose", "Conv1d", "Conv2d", "Conv3d",
                 "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
                 "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                 "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"}


def is_convolution(info: TensorInfo) -> bool:
    """Modules and ONNX operators that say so; a file's 4-D and 5-D tensors (WeightWatcher's reading
    too). A file's 3-D tensors are read in gate.layers.three_d."""
    if info.module_type is not None:
        return info.module_type in _CONV_MODULES
    return len(info.shape) in (4, 5)


def conv_plans(info: TensorInfo, base: str, options: PlanOptions, start: int):
    """Kernel slices W[:, :, k...]: [out, in/groups] for Conv, [in, out/groups] for ConvTranspose;
    either way N x M after orientation, so one convention serves both."""
    rows, cols, *kernel = info.shape
    N, M = max(rows, cols), min(rows, cols)
    layer_type = _CONV_TYPES[len(kernel)]
    positions = list(itertools.product(*(range(k) for k in kernel)))
    if layer_type == CONV1D:  # WeightWatcher pools conv1d slices without the sqrt(1/2) factor
        slices = tuple((slice(None), slice(None), *pos) for pos in positions)
        yield LayerPlan(start, base, info.name, CONV1D, info.shape, N, M, len(positions), slices=slices,
                        module_type=info.module_type)
        return
    if options.conv2d_method == "pooled":
        scale = CONV2D_SCALE  # WeightWatcher 0.7.7 halves 1x1 kernels too
        slices = tuple((slice(None), slice(None), *pos) for pos in positions)
        yield LayerPlan(start, base, info.name, layer_type, info.shape, N, M, len(positions), slices=slices,
                        scale=scale, module_type=info.module_type)
        return
    for offset, pos in enumerate(positions):
        label = ",".join(map(str, pos))
        yield LayerPlan(start + offset, f"{base}[{label}]", info.name, layer_type, info.shape, N, M, 1,
                        slices=((slice(None), slice(None), *pos),), module_type=info.module_type)
