"""PyTorch checkpoint files (``.pt``/``.pth``/``.bin``/``.ckpt``): state dicts through ``torch.load(weights_only=True)``,
everything else pickled through weightgate's own safe reader.

``weights_only=True`` restricts unpickling to tensors and plain containers, so a malicious file
cannot run code. Zip-format files are memory-mapped, so tensors are paged in only when analysed.
A file ``weights_only`` refuses (a whole model saved with ``torch.save(model)``, a training checkpoint
with config objects beside its state dict) and every TorchScript archive are read by
:mod:`gate.sources.pickled`, which runs none of the file's code; a file in which it finds no weights
is refused. ``allow_pickle`` (the author is trusted) instead loads a file ``weights_only`` refuses
with a full ``torch.load``, as before the safe reader existed; TorchScript is never handed to
``torch.jit.load``.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from gate.errors import GateInputError, UnsafePickleError
from gate.sources.base import TensorInfo, WeightSource, dtype_name
from gate.sources.module import ModuleSource
from gate.sources.pickled.module_graph import STATE_DICT_KEYS
from gate.sources.pickled.objects import describe
from gate.sources.pickled.source import PickledSource, read_pickled

_ZIP_MAGIC = b"PK"
_PICKLE_PROTOCOL = b"\x80"

PICKLE_REFUSAL = (
    "{path}: this file holds pickled Python objects, not just tensors. weightgate read them without "
    "running any code but found no weights among them: the file's root object is {root}, not a "
    "torch.nn.Module, a state dict, a checkpoint dict holding tensors or a scikit-learn MLP. Loading it "
    "fully could run arbitrary code from the file, so weightgate does not. Save the weights instead "
    "(torch.save(model.state_dict()), safetensors, or mlflow.pytorch's default pt2 format), or, only if "
    "you trust the author, pass --allow-pickle (Python: allow_pickle=True). Detail: {detail}"
)


class StateDictSource(WeightSource):
    """Tensors of a state dict held in memory or memory-mapped from a checkpoint file."""

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
    """Open a torch checkpoint without running its code; a trusted full load only with ``allow_pickle``."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:2] != _ZIP_MAGIC and head[:1] != _PICKLE_PROTOCOL:
        raise GateInputError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle stream); "
            "weightgate reads .safetensors, .pt/.pth/.bin/.ckpt, .pt2, .onnx or a model directory"
        )
    if is_torchscript_archive(path):  # torch.load would hand it to torch.jit.load, which compiles its code
        return _open_safely(path, "a TorchScript archive")
    try:
        obj = _load_weights_only(path)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise GateInputError(f"{path}: corrupt PyTorch checkpoint: {_first_line(err)}") from err
        if not allow_pickle:
            return _open_safely(path, _unsafe_detail(err))
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return ModuleSource(obj, str(path))
    tensors = _collect_tensors(obj)
    if not tensors:
        raise GateInputError(f"{path}: the file loads, but holds no tensors (found {type(obj).__name__})")
    return StateDictSource(tensors, str(path))


def is_torchscript_archive(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip with ``constants.pkl`` (torch.serialization's own test)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _open_safely(path: Path, detail: str) -> WeightSource:
    """The weights of a pickled file, read without running any of it; refused when none are found."""
    content, found = read_pickled(path)
    if found:
        return PickledSource(found, str(path), content.kind)
    raise UnsafePickleError(PICKLE_REFUSAL.format(path=path, root=describe(content.root), detail=detail))


def _load_weights_only(path: Path) -> object:
    is_zip = zipfile.is_zipfile(path)
    with path.open("rb") as handle:
        if handle.read(2) == _ZIP_MAGIC and not is_zip:
            raise GateInputError(f"{path}: truncated or corrupt zip archive (its central directory is missing)")
    try:
        # mmap keeps tensors on disk until used; only zip-format (torch>=1.6) files support it.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError:
        raise
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as err:
        raise GateInputError(
            f"{path}: cannot read as a PyTorch checkpoint (truncated or corrupt?): {_first_line(err)}"
        ) from err


def _collect_tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten nested dicts of tensors; unwrap ``{"state_dict": ...}``-style training checkpoints."""
    if not isinstance(obj, Mapping):
        return {}
    if not prefix and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _collect_tensors(obj[key])
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, Mapping):
            tensors.update(_collect_tensors(value, prefix=f"{name}."))
    return tensors


def _unsafe_detail(err: BaseException) -> str:
    """The line of torch's message that names the Python object the file wanted to create."""
    lines = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return lines[0] if lines else _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
