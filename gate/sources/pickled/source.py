"""Pickled models as a :class:`WeightSource`: whole ``torch.save(model)`` files, TorchScript archives,
training checkpoints, scikit-learn pickles and joblib files, read without running any of their code.

The file's object graph is read by :class:`~gate.sources.pickled.unpickler.SafeUnpickler` (nothing
named by the file is imported or called); the weights are then found in that inert graph
(:mod:`gate.sources.pickled.module_graph`) and their bytes are read from the file on demand.
"""

from __future__ import annotations

import io
import mmap
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource, dtype_name
from gate.sources.pickled.compressed import compression_of, inflate
from gate.sources.pickled.constructors import Allowed, BadPickle
from gate.sources.pickled.limits import OpBudget, PickleLimits
from gate.sources.pickled.module_graph import (
    FoundTensor,
    checkpoint_tensors,
    estimator_tensors,
    is_eager_module,
    is_script_module,
    module_tensors,
)
from gate.sources.pickled.objects import Global, Opaque, StorageRef, StoredTensor, describe
from gate.sources.pickled.torch_archive import BytesBlob, FileBlob, PickledFile, read_torch_legacy, read_torch_zip
from gate.sources.pickled.torchscript import script_classes
from gate.sources.pickled.unpickler import SafeUnpickler

_LOAD_FROM_BYTES = "torch.storage._load_from_bytes"  # a storage inside a plain pickle: a legacy torch file in bytes


class PickledSource(WeightSource):
    """Weights found in a pickled file's inert object graph; tensor bytes stay in the file until loaded."""

    def __init__(self, found: list[FoundTensor], description: str) -> None:
        self.description = description
        self._found: dict[str, FoundTensor] = {}
        for item in found:
            self._found.setdefault(item.name, item)

    def tensor_infos(self) -> list[TensorInfo]:
        return [_info(item) for item in self._found.values()]

    def load(self, name: str) -> torch.Tensor:
        data = self._found[name].data
        if isinstance(data, StoredTensor):
            return data.materialize()
        if isinstance(data, np.ndarray):
            return torch.from_numpy(np.array(data, dtype=data.dtype.newbyteorder("=")))  # a writable native copy
        return torch.empty(0, dtype=torch.uint8)  # not rebuilt: its row is skipped with the reason

    def close(self) -> None:
        self._found.clear()


def _info(item: FoundTensor) -> TensorInfo:
    data = item.data
    if isinstance(data, StoredTensor):
        return TensorInfo(item.name, data.size, dtype_name(data.dtype), item.module_type)
    if isinstance(data, np.ndarray):
        return TensorInfo(item.name, data.shape, data.dtype.newbyteorder("=").name, item.module_type)
    return TensorInfo(item.name, (), "unknown", item.module_type, skip_reason=item.skip_reason)


def read_pickled(path: Path, limits: PickleLimits = PickleLimits()) -> tuple[PickledFile, list[FoundTensor]]:
    """The file's inert object graph and the weights found in it (possibly none); a file that breaks the
    pickle format or a limit is a :class:`GateInputError` naming it."""
    budget = OpBudget(limits)
    try:
        content = _read_graph(path, budget)
        content.inert_globals = list(budget.inert_globals)
        return content, _find_weights(content)
    except BadPickle as err:
        raise GateInputError(f"{path}: cannot read this pickle (truncated, corrupt or hostile?): {err}; "
                             "re-export or re-download it") from None
    except (zipfile.BadZipFile, OSError) as err:
        raise GateInputError(f"{path}: cannot read this file: {err}") from err


def _read_graph(path: Path, budget: OpBudget) -> PickledFile:
    if zipfile.is_zipfile(path):
        return read_torch_zip(path, budget)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head:
        raise BadPickle("the file is empty")
    if head[:2] == b"PK":
        raise BadPickle("truncated or corrupt zip archive (its central directory is missing)")
    extra = {_LOAD_FROM_BYTES: Allowed(_LOAD_FROM_BYTES, lambda args: _storage_from_bytes(args, budget))}
    compression = compression_of(head)
    if compression is not None:  # joblib.dump(..., compress=...): pickle and arrays in one compressed stream
        stream = io.BytesIO(inflate(path, compression, budget.limits.max_record_bytes))
        return PickledFile("pickle", SafeUnpickler(stream, budget, extra=extra, joblib_arrays=True).load())
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        legacy = read_torch_legacy(view, FileBlob(path, size), budget, extra=extra)
        if legacy is not None:
            return legacy
        view.seek(0)
        return PickledFile("pickle", SafeUnpickler(view, budget, extra=extra, joblib_arrays=True).load())


def _storage_from_bytes(args: tuple, budget: OpBudget) -> StorageRef | Opaque:
    """``torch.storage._load_from_bytes(data)``: how a tensor's storage is written by plain ``pickle``
    (a legacy torch file inside the bytes), read one level deep (the nested file gets no
    ``_load_from_bytes`` of its own). Bytes that hold no storage stay an inert object."""
    if len(args) != 1 or not isinstance(args[0], (bytes, bytearray)):
        raise BadPickle("_load_from_bytes takes bytes")
    data = bytes(args[0])
    content = read_torch_legacy(io.BytesIO(data), BytesBlob(data), budget)
    if content is None or not isinstance(content.root, StorageRef):
        return Opaque(Global("torch.storage", "_load_from_bytes"), ())
    return content.root


def _find_weights(content: PickledFile) -> list[FoundTensor]:
    root = content.root
    if content.kind == "torchscript":
        classes = script_classes(content.script_code)
        if is_script_module(root, classes):
            return module_tensors(root, classes=classes)
    if is_eager_module(root):
        return module_tensors(root)
    if type(root) in (dict, OrderedDict):
        found = checkpoint_tensors(root)
        if found:
            return found
    return estimator_tensors(root)


def open_pickle_file(path: Path) -> PickledSource:
    """A ``.pkl``/``.joblib`` file (mlflow.sklearn's ``model.pkl``, ``joblib.dump``, a plainly pickled
    torch module), read without running it. There is no trusted full load for these: a file without
    weights this reader finds has none weightgate could analyse."""
    content, found = read_pickled(path)
    if not found:
        raise GateInputError(
            f"{path}: {describe(content.root)} has no weight matrices weightgate reads (it reads scikit-learn "
            "MLPClassifier/MLPRegressor coefs_, torch modules and state dicts); nothing to scan")
    return PickledSource(found, str(path))
