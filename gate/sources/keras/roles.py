"""Keras layer variables in torch's names and orientation, so the layer planner (:mod:`gate.layers`)
reads a Keras layer exactly as it reads the same weights in the equivalent torch module.

Keras stores a layer's variables in the order its ``build()`` creates them; the Keras 3 weights file
keeps only that position (``vars/0``, ``vars/1``), legacy ``.h5`` files keep the variable's name
(``kernel:0``). Either way the variable's *role* (kernel, recurrent_kernel, bias, ...) and the layer's
class fix its layout:

- ``Dense`` kernel ``[in, out]`` -> ``weight [out, in]`` (torch ``Linear``);
- ``Conv1D/2D/3D`` kernel ``[k..., in, out]`` -> ``weight [out, in, k...]``; ``Conv*Transpose`` kernel
  ``[k..., out, in]`` -> ``weight [in, out, k...]`` (torch ``ConvTranspose``): the same permutation;
- ``DepthwiseConv1D/2D`` kernel ``[k..., in, m]`` -> ``weight [in*m, 1, k...]``, torch's depthwise
  ``Conv`` (``groups=in``, output channel ``c*m + j``, as TensorFlow's depthwise convolution orders
  them); ``SeparableConv1D/2D`` -> that depthwise ``depthwise.weight`` plus a 1x1 ``pointwise.weight``
  ``[out, in*m, 1...]`` (and ``pointwise.bias``), torch's usual depthwise-separable pair;
- recurrent cells (``LSTM``, ``GRU``, ``SimpleRNN`` and their ``*Cell``): kernel ``[in, G*units]`` and
  recurrent kernel ``[units, G*units]`` -> torch's stacked ``weight_ih_l0 [G*units, in]`` and
  ``weight_hh_l0 [G*units, units]`` with the gate blocks put in torch's order (Keras LSTM i,f,c,o is
  torch's i,f,g,o already; Keras GRU z,r,h becomes torch's r,z,n), so the recurrent planner
  (:mod:`gate.layers.recurrent`) splits them as it splits a torch ``nn.LSTM``/``nn.GRU`` with no
  Keras case of its own; a ``Bidirectional`` layer's backward copy gets torch's ``_reverse`` suffix;
- ``Embedding`` ``[vocab, dim]`` is torch's layout; norms' ``gamma``/``beta``/``moving_*`` get torch's
  ``weight``/``bias``/``running_*`` names; biases stay ``bias``.

A role this module does not know keeps its own name and stored layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]

_CONV = frozenset({"Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"})
_DEPTHWISE = frozenset({"DepthwiseConv1D", "DepthwiseConv2D"})
_SEPARABLE = frozenset({"SeparableConv1D", "SeparableConv2D"})
_DENSE = frozenset({"Dense", "EinsumDense"})
# Recurrent layer -> its cell's gate order in torch's order (index of the Keras block for each torch gate).
_GATE_ORDER = {"LSTM": (0, 1, 2, 3), "GRU": (1, 0, 2), "SimpleRNN": (0,)}
_RECURRENT = {**_GATE_ORDER, **{f"{name}Cell": order for name, order in _GATE_ORDER.items()}}
_NORM_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_NORMS = frozenset({"BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization"})
# Wrappers whose variables belong to the layer they wrap (config "layer"): their class adds no layout.
WRAPPERS = frozenset({"Bidirectional", "TimeDistributed"})

# Layer classes a Keras 3 weights file names its groups after (snake case plus _1, _2 ...), for files
# without config.json (a bare .weights.h5).
KNOWN_CLASSES = (*_CONV, *_DEPTHWISE, *_SEPARABLE, *_DENSE, *_GATE_ORDER, *_NORMS, *WRAPPERS, "Embedding")


@dataclass(frozen=True)
class TorchTensor:
    """One tensor a Keras variable becomes: its name below the layer path and how to get it."""

    leaf: str
    transform: Transform


def is_recurrent(class_name: str) -> bool:
    return class_name in _RECURRENT


def positional_roles(class_name: str, config: dict, count: int, from_config: bool) -> tuple[str, ...] | None:
    """The roles of a Keras 3 layer's ``vars/0..count-1``, in ``build()`` order, or ``None`` when the
    class is unknown or the count does not fit (the variables then keep their positions as names).
    Without config.json (``from_config`` false) the defaults hold, and a missing last ``bias`` is
    read as ``use_bias=False``."""
    bias = ("bias",) if config.get("use_bias", True) else ()
    if class_name in _DENSE or class_name in _CONV or class_name in _DEPTHWISE:
        roles: tuple[str, ...] = ("kernel",) + bias
        if class_name == "EinsumDense":
            roles = ("kernel",) + (("bias",) if config.get("bias_axes") or not from_config else ())
    elif class_name in _SEPARABLE:
        roles = ("depthwise_kernel", "pointwise_kernel") + bias
    elif class_name in _RECURRENT:
        roles = ("kernel", "recurrent_kernel") + bias
    elif class_name == "Embedding":
        roles = ("embeddings",)
    elif class_name in _NORMS:
        roles = (("gamma",) if config.get("scale", True) else ()) + (("beta",) if config.get("center", True) else ())
        if class_name == "BatchNormalization":
            roles += ("moving_mean", "moving_variance")
    else:
        return None
    if not from_config and count == len(roles) - 1 and roles[-1] == "bias":
        return roles[:-1]
    return roles if count == len(roles) else None


def role_from_name(weight_name: str) -> str:
    """A legacy .h5 weight name's role: ``lstm/lstm_cell/kernel:0`` -> ``kernel``."""
    return re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])


def torch_tensors(class_name: str, role: str, stored_shape: tuple[int, ...], suffix: str = "") -> list[TorchTensor]:
    """What one Keras variable is in the equivalent torch module (usually one tensor; a GRU's
    ``[2, 3*units]`` bias is torch's ``bias_ih`` and ``bias_hh``). ``suffix`` is ``_reverse`` for the
    backward copy of a ``Bidirectional`` recurrent layer."""
    ndim = len(stored_shape)
    if class_name in _RECURRENT:
        return _recurrent_tensors(_RECURRENT[class_name], role, ndim, suffix)
    if role == "kernel" and class_name in _DENSE and ndim == 2:
        return [TorchTensor("weight", _transpose)]
    if role == "kernel" and class_name in _CONV and ndim >= 3:
        return [TorchTensor("weight", _conv)]
    if role in ("kernel", "depthwise_kernel") and class_name in _DEPTHWISE and ndim >= 3:
        return [TorchTensor("weight", _depthwise)]
    if class_name in _SEPARABLE and ndim >= 3 and role in ("depthwise_kernel", "pointwise_kernel"):
        if role == "depthwise_kernel":
            return [TorchTensor("depthwise.weight", _depthwise)]
        return [TorchTensor("pointwise.weight", _conv)]
    if class_name in _SEPARABLE and role == "bias":
        return [TorchTensor("pointwise.bias", identity)]
    if role == "embeddings":
        return [TorchTensor("weight", identity)]
    return [TorchTensor(_NORM_NAMES.get(role, role), identity)]


def _recurrent_tensors(order: tuple[int, ...], role: str, ndim: int, suffix: str) -> list[TorchTensor]:
    if role == "kernel" and ndim == 2:
        return [TorchTensor(f"weight_ih_l0{suffix}", _gates(order, transpose=True))]
    if role == "recurrent_kernel" and ndim == 2:
        return [TorchTensor(f"weight_hh_l0{suffix}", _gates(order, transpose=True))]
    if role == "bias" and ndim == 1:
        return [TorchTensor(f"bias_ih_l0{suffix}", _gates(order))]
    if role == "bias" and ndim == 2:  # GRU reset_after=True: input bias, recurrent bias
        return [TorchTensor(f"bias_ih_l0{suffix}", _gates(order, row=0)),
                TorchTensor(f"bias_hh_l0{suffix}", _gates(order, row=1))]
    return [TorchTensor(f"{role}{suffix}", identity)]


def identity(tensor: torch.Tensor) -> torch.Tensor:
    """The stored layout is torch's already (or unknown: kept as stored)."""
    return tensor


def _transpose(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.T


def _conv(tensor: torch.Tensor) -> torch.Tensor:
    """[k..., a, b] -> [b, a, k...]."""
    ndim = tensor.dim()
    return tensor.permute(ndim - 1, ndim - 2, *range(ndim - 2))


def _depthwise(tensor: torch.Tensor) -> torch.Tensor:
    """[k..., in, m] -> [in*m, 1, k...]: channel c's j-th filter is output channel c*m + j."""
    *kernel, channels, multiplier = tensor.shape
    flat = tensor.reshape(*kernel, channels * multiplier)
    return _conv(flat.unsqueeze(-2))


def _gates(order: tuple[int, ...], transpose: bool = False, row: int | None = None) -> Transform:
    """Keras's gate blocks (last axis) put in torch's order; kernels transposed to [G*units, in]."""

    def reorder(tensor: torch.Tensor) -> torch.Tensor:
        if row is not None:
            tensor = tensor[row]
        blocks = tensor.chunk(len(order), dim=-1)
        stacked = torch.cat([blocks[k] for k in order], dim=-1)
        return stacked.T if transpose else stacked

    return reorder
