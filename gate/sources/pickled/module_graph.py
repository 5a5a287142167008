"""Weights found in an inert object graph: the state dict of a pickled ``nn.Module`` (eager or
TorchScript), the tensors of a checkpoint dict, or the ``coefs_`` of a scikit-learn MLP.

Nothing here calls into the graph: it reads the recorded state of :class:`Opaque` objects and real
containers made by the safe unpickler, iteratively (no recursion, however deep the graph), each
object once (a graph that repeats a part by reference is walked in linear time).

An eager module is recognised by its pickled ``__dict__``: ``nn.Module`` keeps ``_parameters``,
``_buffers`` and ``_modules``; the names follow ``Module.state_dict``: parameters, then persistent
buffers (``_non_persistent_buffers_set``), then each submodule in registration order, without the
custom ``_save_to_state_dict`` hooks a class may define (they are code, and never run here).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from gate.sources.pickled.constructors import BadPickle
from gate.sources.pickled.objects import (
    Global,
    Opaque,
    PendingArray,
    StoredTensor,
    class_name,
    class_qualname,
    describe,
)
from gate.sources.pickled.torchscript import ScriptClass
from gate.sources.tree_walk import MAX_VISITS, collect_depth_first

# Wrapper keys used by common training loops around the real state dict (as gate/sources/torch_files.py unwraps).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
MLP_MODULE_TYPE = "Linear"  # an MLP's coefs_[i] is a dense layer's matrix, stored [in, out]


@dataclass(frozen=True)
class FoundTensor:
    """One weight found in the graph: tensor data (lazy) or a numpy array, or ``None`` with the reason."""

    name: str
    data: StoredTensor | np.ndarray | None
    module_type: str | None
    skip_reason: str | None = None


def _state_of(obj: object) -> dict | None:
    if not isinstance(obj, Opaque):
        return None
    state = obj.state
    if type(state) is tuple and len(state) == 2:  # (__dict__, slot state)
        state = state[0]
    return state if type(state) in (dict, OrderedDict) else None


def is_eager_module(obj: object) -> bool:
    state = _state_of(obj)
    return state is not None and all(type(state.get(key)) in (dict, OrderedDict)
                                     for key in ("_parameters", "_buffers", "_modules"))


def is_script_module(obj: object, classes: dict[str, ScriptClass]) -> bool:
    return isinstance(obj, Opaque) and class_qualname(obj.origin) in classes and _state_of(obj) is not None


def module_tensors(root: Opaque, prefix: str = "", classes: dict[str, ScriptClass] | None = None) -> list[FoundTensor]:
    """The state dict of a module (eager, or TorchScript with ``classes``), in ``state_dict`` order; a
    tensor shared by two names (tied weights) is listed once, under its first name, as ModuleSource does."""
    found: list[FoundTensor] = []
    seen_modules: set[int] = set()
    seen_tensors: set[int] = set()
    pending: list[tuple[str, Opaque]] = [(prefix, root)]
    while pending:
        name, module = pending.pop()
        if id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        own, children = (_script_members(module, classes) if classes is not None else _eager_members(module))
        module_type = class_name(module.origin)
        for attr, value in own:
            if value is None or id(value) in seen_tensors:
                continue
            seen_tensors.add(id(value))
            found.append(_found(f"{name}{attr}", value, module_type))
        pending.extend(reversed([(f"{name}{attr}.", child) for attr, child in children]))
    return found


def _eager_members(module: Opaque) -> tuple[list[tuple[str, object]], list[tuple[str, Opaque]]]:
    state = _state_of(module)
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if type(skip) in (set, frozenset) else set()
    own = [*state["_parameters"].items(), *((k, v) for k, v in state["_buffers"].items() if k not in skip)]
    children = [(str(k), v) for k, v in state["_modules"].items() if is_eager_module(v)]
    return [(str(k), v) for k, v in own], children


def _script_members(module: Opaque, classes: dict[str, ScriptClass]) -> tuple[list, list]:
    state = _state_of(module)
    script_class = classes.get(class_qualname(module.origin) or "")
    names = [*script_class.parameters, *script_class.buffers] if script_class else []
    own = [(attr, state.get(attr)) for attr in names]
    children = [(str(k), v) for k, v in state.items() if is_script_module(v, classes)]
    return own, children


def _found(name: str, value: object, module_type: str | None) -> FoundTensor:
    if isinstance(value, StoredTensor):
        logical, stored = math.prod(value.size), value.storage.nbytes // value.dtype.itemsize
        if logical > max(stored, 1):  # zero strides: a few stored bytes could stand for 2^62 elements
            return FoundTensor(name, None, module_type, skip_reason=(
                f"a broadcast view of {logical} elements over {stored} stored ones (zero strides): not expanded"))
        return FoundTensor(name, value, module_type)
    return FoundTensor(name, None, module_type, skip_reason=(
        f"stored as {describe(value)}, which weightgate's safe reader does not rebuild (no values to analyse)"))


def _is_unrebuilt_tensor(value: object) -> bool:
    """A tensor torch wrote with a rebuild function outside the allowlist (quantized, sparse, nested,
    meta, wrapper subclasses) or over a storage this reader does not know: listed as a skipped weight."""
    origin = value.origin if isinstance(value, Opaque) else None
    return isinstance(origin, Global) and (origin.module == "torch._utils" and origin.name.startswith("_rebuild_")
                                           or origin.qualname == "torch._tensor._rebuild_from_type_v2")


def checkpoint_tensors(root: dict) -> list[FoundTensor]:
    """Tensors of a checkpoint dict, as gate/sources/torch_files.py reads a state dict: a
    ``{"state_dict": ...}``-style wrapper is unwrapped (Lightning, training loops), nested dicts are
    flattened with dotted names, and a module found in it contributes its state dict under its key."""
    seen: set[int] = {id(root)}
    while not any(isinstance(v, StoredTensor) for v in root.values()):
        wrapped = next((root[key] for key in STATE_DICT_KEYS if id(root.get(key)) not in seen
                        and (type(root.get(key)) in (dict, OrderedDict) or is_eager_module(root.get(key)))), None)
        if wrapped is None:
            break
        if is_eager_module(wrapped):
            return module_tensors(wrapped)
        root = wrapped
        seen.add(id(root))
    found: list[FoundTensor] = []
    pending = list(reversed(root.items()))
    while pending:  # depth first, in key order: a nested dict's tensors come where the dict stands
        name, value = pending.pop()
        if isinstance(value, StoredTensor) or _is_unrebuilt_tensor(value):
            found.append(_found(str(name), value, None))
        elif id(value) in seen:
            continue
        elif type(value) in (dict, OrderedDict):
            seen.add(id(value))
            pending.extend((f"{name}.{key}", item) for key, item in reversed(value.items()))
        elif is_eager_module(value):
            seen.add(id(value))
            found.extend(module_tensors(value, f"{name}."))
    return found


def estimator_tensors(root: object) -> list[FoundTensor]:
    """``coefs_`` (one [in, out] matrix per layer) and ``intercepts_`` of every scikit-learn MLP in the
    graph: the root itself (names ``coefs_.0``...) or one inside a pipeline or search (names prefixed
    by the path to it, e.g. ``steps.1.1.coefs_.0``)."""
    def match(path: str, obj: object) -> list[FoundTensor] | None:
        state = _state_of(obj)
        return _mlp_tensors(path, state) if state is not None and type(state.get("coefs_")) is list else None

    def children(obj: object) -> list[tuple[str, object]]:
        state = _state_of(obj)
        return _children(state if state is not None else obj)

    return collect_depth_first(root, match, children, once_per_object=True, too_many=lambda: BadPickle(
        f"more than {MAX_VISITS} references to follow while looking for estimators (limit)"))


def _children(obj: object) -> list[tuple[str, object]]:
    if type(obj) in (dict, OrderedDict):
        return [(str(k), v) for k, v in obj.items() if isinstance(k, (str, int))]
    if type(obj) in (list, tuple):
        return [(str(i), v) for i, v in enumerate(obj)]
    return []


def _mlp_tensors(path: str, state: dict) -> list[FoundTensor]:
    found = []
    for attr in ("coefs_", "intercepts_"):
        values = state.get(attr)
        for i, value in enumerate(values if type(values) is list else []):
            array = value.array if isinstance(value, PendingArray) else value
            name = f"{path}{attr}.{i}"
            if isinstance(array, np.ndarray) and array.dtype.kind == "f":
                found.append(FoundTensor(name, array, MLP_MODULE_TYPE))
            else:
                found.append(FoundTensor(name, None, MLP_MODULE_TYPE, skip_reason=(
                    f"{attr}[{i}] is stored as {describe(array)}, not a float array")))
    return found
