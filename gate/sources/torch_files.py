"""PyTorch checkpoint files (``.pt``/``.pth``/``.bin``) read with ``weights_only=True``.

``weights_only=True`` restricts unpickling to tensors and plain containers, so a malicious file
cannot run code. Zip-format files are memory-mapped, so tensors are paged in only when analysed.
A file that holds a whole pickled module is refused unless the caller opts in explicitly.
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

_ZIP_MAGIC = b"PK"
_PICKLE_PROTOCOL = b"\x80"
# Wrapper keys used by common training loops around the real state dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")

PICKLE_REFUSAL = (
    "{path}: this file holds pickled Python objects (a whole model saved with torch.save(model) or "
    "mlflow.pytorch serialization_format='pickle'), not just tensors. Loading it could run arbitrary "
    "code, so weightgate refuses it. Save the weights instead (torch.save(model.state_dict()), "
    "safetensors, or mlflow.pytorch's default pt2 format), or, only if you trust the author, pass "
    "--allow-pickle (Python: allow_pickle=True). Detail: {detail}"
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
    """Open a torch checkpoint safely; the whole-module case only with ``allow_pickle``."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:2] != _ZIP_MAGIC and head[:1] != _PICKLE_PROTOCOL:
        raise GateInputError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle stream); "
            "weightgate reads .safetensors, .pt/.pth/.bin/.ckpt, .pt2, .onnx or a model directory"
        )
    try:
        obj = _load_weights_only(path)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise GateInputError(f"{path}: corrupt PyTorch checkpoint: {_first_line(err)}") from err
        if not allow_pickle:
            raise UnsafePickleError(PICKLE_REFUSAL.format(path=path, detail=_unsafe_detail(err))) from err
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return ModuleSource(obj, str(path))
    tensors = _collect_tensors(obj)
    if not tensors:
        raise GateInputError(f"{path}: the file loads, but holds no tensors (found {type(obj).__name__})")
    return StateDictSource(tensors, str(path))


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
        for key in _STATE_DICT_KEYS:
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
