"""PyTorch checkpoint files (``.pt``/``.pth``/``.bin``/``.ckpt``), read without running any of their code.

Every pickled torch file (state dicts, whole models saved with ``torch.save(model)``, training
checkpoints with config objects beside their state dict, TorchScript archives, legacy non-zip
files) is read by :mod:`gate.sources.pickled`, whose unpickler calls nothing the file names and
bounds the work a file may ask for. ``torch.load(weights_only=True)`` is not used: it refuses whole
models, and its unpickler hashes dict keys as given (a 200-byte key of nested tuples takes it hours).
Zip-format tensors are memory-mapped, so they are paged in only when analysed.

Only a file in which that reader finds no weights but which names Python objects (a custom
container, say) can be loaded fully, with ``allow_pickle`` (the author is trusted): ``torch.load
(weights_only=False)``, which runs the file's code. TorchScript is never handed to ``torch.jit.load``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from gate.errors import GateInputError, UnsafePickleError
from gate.sources.base import SUPPORTED_FORMATS, TensorInfo, WeightSource, dtype_name
from gate.sources.module import ModuleSource
from gate.sources.pickled.module_graph import STATE_DICT_KEYS
from gate.sources.pickled.objects import describe
from gate.sources.pickled.source import PickledSource, read_pickled

_ZIP_MAGIC = b"PK"
_PICKLE_PROTOCOL = b"\x80"

PICKLE_REFUSAL = (
    "{path}: this file holds pickled Python objects, not just tensors. weightgate read it without running "
    "any of its code but found no weights in it: its root object is {root}, not a torch.nn.Module, a "
    "state dict, a checkpoint dict holding tensors or a scikit-learn MLP. Loading it fully could run "
    "arbitrary code from the file, so weightgate does not. Save the weights instead "
    "(torch.save(model.state_dict()), safetensors, or mlflow.pytorch's default pt2 format), or, only if "
    "you trust the author, pass --allow-pickle (Python: allow_pickle=True). The file names: {names}"
)


class StateDictSource(WeightSource):
    """Tensors of a state dict held in memory (the Python API, or a trusted full load)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], description: str) -> None:
        self.description = description
        self._tensors = dict(tensors)

    def tensor_infos(self) -> list[TensorInfo]:
        return [TensorInfo(name, tuple(t.shape), dtype_name(t.dtype)) for name, t in self._tensors.items()]

    def load(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def close(self) -> None:
        self._tensors.clear()


def open_torch_file(path: Path, allow_pickle: bool = False) -> WeightSource:
    """Open a torch checkpoint without running its code; a trusted full load only with ``allow_pickle``,
    and only for a file whose weights the safe reader does not find."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:2] != _ZIP_MAGIC and head[:1] != _PICKLE_PROTOCOL:
        raise GateInputError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle stream); "
            f"weightgate reads {SUPPORTED_FORMATS}"
        )
    content, found = read_pickled(path)
    if found:
        return PickledSource(found, str(path))
    if not content.inert_globals:  # plain data only: a full load would find no more
        raise GateInputError(f"{path}: the file loads, but holds no tensors (found {describe(content.root)})")
    if not allow_pickle or content.kind == "torchscript":
        names = ", ".join(content.inert_globals[:5]) + (", ..." if len(content.inert_globals) > 5 else "")
        raise UnsafePickleError(PICKLE_REFUSAL.format(path=path, root=describe(content.root), names=names))
    obj = torch.load(path, map_location="cpu", weights_only=False)  # trusted: runs the file's code
    if isinstance(obj, torch.nn.Module):
        return ModuleSource(obj, str(path))
    tensors = _collect_tensors(obj)
    if not tensors:
        raise GateInputError(f"{path}: the file loads, but holds no tensors (found {type(obj).__name__})")
    return StateDictSource(tensors, str(path))


def _collect_tensors(obj: object) -> dict[str, torch.Tensor]:
    """Flatten nested dicts of tensors; unwrap ``{"state_dict": ...}``-style training checkpoints. Each
    dict is walked once, however often the object graph refers to it."""
    seen = {id(obj)}
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapped = next((obj[key] for key in STATE_DICT_KEYS
                        if isinstance(obj.get(key), Mapping) and id(obj[key]) not in seen), None)
        if wrapped is None:
            break
        obj = wrapped
        seen.add(id(obj))
    tensors: dict[str, torch.Tensor] = {}
    pending = list(obj.items())[::-1] if isinstance(obj, Mapping) else []
    while pending:  # depth first, in key order: a nested dict's tensors come where the dict stands
        name, value = pending.pop()
        if isinstance(value, torch.Tensor):
            tensors[str(name)] = value
        elif isinstance(value, Mapping) and id(value) not in seen:
            seen.add(id(value))
            pending.extend((f"{name}.{key}", item) for key, item in list(value.items())[::-1])
    return tensors
