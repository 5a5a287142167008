"""scikit-learn estimators saved with skops (``model.skops``, the format ``mlflow.sklearn`` writes by
default since MLflow 3), read without skops' loader and without importing anything the file names.

A skops file is a zip: ``schema.json`` describes the object tree (every node names its class and how
skops would rebuild it), and each array is an ``.npy`` member. The tree is only walked here, never
rebuilt: the ``coefs_`` and ``intercepts_`` of every MLP in it (the root estimator, or one inside a
pipeline or search) are found by the node's attribute names, and their ``.npy`` members are read with
``numpy.load(allow_pickle=False)``, one tensor at a time. Tensor names follow the pickled reader's
(gate/sources/pickled/module_graph.py): ``coefs_.0`` for the root, ``steps.1.1.coefs_.0`` inside a
pipeline, so a model scans the same however mlflow.sklearn serialized it.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource
from gate.sources.pickled.module_graph import MLP_MODULE_TYPE
from gate.sources.tree_walk import MAX_VISITS, collect_depth_first

SCHEMA = "schema.json"
_MAX_SCHEMA_BYTES = 256 << 20  # the object tree's description; an MLP's is a few kB
_MLP_ATTRIBUTES = ("coefs_", "intercepts_")
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class SkopsSource(WeightSource):
    """The MLP weights of a skops file; each array is read from the zip when it is loaded."""

    def __init__(self, path: Path, arrays: dict[str, str | None], skip_reasons: dict[str, str]) -> None:
        self.description = str(path)
        self._zip = zipfile.ZipFile(path)
        self._members = arrays  # tensor name -> .npy member (None: skipped, reason in skip_reasons)
        self._infos = [self._info(name, member, skip_reasons.get(name)) for name, member in arrays.items()]
        self._skipped = {info.name for info in self._infos if info.skip_reason is not None}

    def _info(self, name: str, member: str | None, skip_reason: str | None) -> TensorInfo:
        if member is None:
            return TensorInfo(name, (), "unknown", MLP_MODULE_TYPE, skip_reason=skip_reason)
        shape, dtype = _npy_header(self._zip, member, self.description)
        stored = self._zip.getinfo(member).file_size
        if math.prod(shape) * dtype.itemsize > stored:  # numpy would allocate the declared size before reading
            raise GateInputError(f"{self.description}: {member} declares a {list(shape)} {dtype} array but holds "
                                 f"{stored} bytes (truncated or corrupt); re-export the model")
        if dtype.kind != "f":
            return TensorInfo(name, shape, dtype.name, MLP_MODULE_TYPE,
                              skip_reason=f"{name} is stored with dtype {dtype}, not as a float array")
        return TensorInfo(name, shape, dtype.newbyteorder("=").name, MLP_MODULE_TYPE)

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        if name in self._skipped:
            return torch.empty(0, dtype=torch.uint8)  # not read: its row is skipped with the reason
        with self._zip.open(self._members[name]) as handle:
            array = np.load(handle, allow_pickle=False)
        return torch.from_numpy(np.array(array, dtype=array.dtype.newbyteorder("=")))  # a writable native copy

    def close(self) -> None:
        self._zip.close()


def open_skops_file(path: Path) -> SkopsSource:
    """A ``.skops`` file's MLP weights; a file with none is refused naming the estimator it holds."""
    root = _read_schema(path)
    arrays: dict[str, str | None] = {}
    skip_reasons: dict[str, str] = {}
    for name, node in _mlp_arrays(root, path):  # names are paths in a tree: each appears once
        arrays[name] = node["file"] if _is_npy(node) else None
        if not _is_npy(node):
            skip_reasons[name] = f"{name} is stored as {_class_of(node)}, not a float array"
    if not arrays:
        raise GateInputError(
            f"{path}: {_class_of(root)} has no weight matrices weightgate reads (in a skops file it reads the "
            "coefs_ of scikit-learn MLPClassifier/MLPRegressor estimators); nothing to scan")
    return SkopsSource(path, arrays, skip_reasons)


def _read_schema(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(SCHEMA)
            if info.file_size > _MAX_SCHEMA_BYTES:
                raise GateInputError(f"{path}: {SCHEMA} is {info.file_size} bytes (limit {_MAX_SCHEMA_BYTES})")
            root = json.loads(archive.read(info))
    except KeyError:
        raise GateInputError(f"{path}: not a skops file (no {SCHEMA} in the archive)") from None
    except (zipfile.BadZipFile, OSError, ValueError, RecursionError) as err:
        raise GateInputError(f"{path}: cannot read this skops file: {type(err).__name__}: {err}") from None
    if not isinstance(root, dict):
        raise GateInputError(f"{path}: {SCHEMA} does not describe an object")
    return root


def _mlp_arrays(root: dict, path: Path) -> list[tuple[str, object]]:
    """(tensor name, array node) of every MLP's coefs_ and intercepts_, walking the tree iteratively."""
    def match(prefix: str, node: object) -> list[tuple[str, object]] | None:
        state = _attributes(node)
        if state is None or _loader(state.get("coefs_")) != "ListNode":
            return None
        found: list[tuple[str, object]] = []
        for attribute in _MLP_ATTRIBUTES:
            listed = state.get(attribute)
            items = listed.get("content") if _loader(listed) == "ListNode" else None
            found += [(f"{prefix}{attribute}.{i}", item) for i, item in enumerate(items or ())]
        return found

    return collect_depth_first(root, match, _children, too_many=lambda: GateInputError(
        f"{path}: more than {MAX_VISITS} nodes to follow in {SCHEMA} (limit)"))


def _attributes(node: object) -> dict | None:
    """An object node's attributes (its state, a dict node), or None for any other node."""
    if _loader(node) != "ObjectNode":
        return None
    state = node.get("content")
    if _loader(state) != "DictNode" or not isinstance(state.get("content"), dict):
        return None
    return state["content"]


def _children(node: object) -> list[tuple[str, object]]:
    loader = _loader(node)
    if loader == "ObjectNode":
        return _children(node.get("content"))  # its state: the attributes, named as they are
    content = node.get("content") if isinstance(node, dict) else None
    if loader == "DictNode" and isinstance(content, dict):
        return [(str(key), child) for key, child in content.items()]
    if loader in ("ListNode", "TupleNode") and isinstance(content, list):
        return [(str(i), child) for i, child in enumerate(content)]
    return []


def _loader(node: object) -> str | None:
    return node.get("__loader__") if isinstance(node, dict) else None


def _is_npy(node: object) -> bool:
    return _loader(node) == "NdArrayNode" and node.get("type") == "numpy" and isinstance(node.get("file"), str)


def _class_of(node: object) -> str:
    if not isinstance(node, dict):
        return type(node).__name__
    return ".".join(str(part) for part in (node.get("__module__"), node.get("__class__")) if part)


def _npy_header(archive: zipfile.ZipFile, member: str, description: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` member's header, without reading its data."""
    try:
        with archive.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f".npy format version {version}")
            shape, _, dtype = _NPY_HEADER_READERS[version](handle)
    except KeyError:
        raise GateInputError(f"{description}: {SCHEMA} names {member}, which is not in the archive") from None
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise GateInputError(f"{description}: {member} is not a readable .npy array: {err}") from None
    return tuple(int(n) for n in shape), dtype
