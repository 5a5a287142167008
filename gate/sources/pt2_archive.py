"""``torch.export`` archives (``.pt2``, mlflow.pytorch's default format) read from their raw weight files.

The archive stores each parameter as a raw byte file described by
``data/weights/model_weights_config.json``; reading those bytes needs no unpickling, unlike
``torch.export.load`` which would also deserialise the program (docs/mlflow.md: pt2 and pickle).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from gate.errors import GateInputError, UnsafePickleError
from gate.sources.base import TensorInfo, WeightSource, dtype_name

# torch.export's serialised ScalarType codes (torch/_export/serde/schema.py) for the float types we
# analyse; integer tensors are listed too so that they are recognised and then skipped.
_SCALAR_TYPES = {
    1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64,
    6: torch.float16, 7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16,
}
_CONFIG_SUFFIX = "data/weights/model_weights_config.json"


class Pt2ArchiveSource(WeightSource):
    """Parameters of a ``.pt2`` archive, each read from its own zip member on demand."""

    def __init__(self, path: Path) -> None:
        self.description = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
            config_name = next((n for n in self._zip.namelist() if n.endswith(_CONFIG_SUFFIX)), None)
            if config_name is None:
                raise GateInputError(f"{path}: a zip file, but not a torch.export archive (no {_CONFIG_SUFFIX})")
            config = json.loads(self._zip.read(config_name))["config"]
        except (zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
            raise GateInputError(f"{path}: not a readable .pt2 archive (truncated or corrupt?): {err}") from err
        self._weights_dir = config_name.rsplit("/", 1)[0]
        self._entries: dict[str, dict] = {}
        self._infos: list[TensorInfo] = []
        for name, entry in config.items():
            meta = entry["tensor_meta"]
            code = meta["dtype"]
            if code not in _SCALAR_TYPES:
                raise GateInputError(f"{path}: tensor {name!r} has dtype code {code}, which weightgate does not know")
            shape = tuple(int(s["as_int"]) for s in meta["sizes"])
            self._entries[name] = entry
            self._infos.append(TensorInfo(name, shape, dtype_name(_SCALAR_TYPES[code])))

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        if entry.get("use_pickle"):
            raise UnsafePickleError(
                f"{self.description}: tensor {name!r} is stored pickled inside the archive; weightgate reads "
                "only raw weight files. Export the model with plain tensor parameters."
            )
        meta = entry["tensor_meta"]
        dtype = _SCALAR_TYPES[meta["dtype"]]
        try:
            raw = self._zip.read(f"{self._weights_dir}/{entry['path_name']}")
        except (zipfile.BadZipFile, KeyError, OSError) as err:
            raise GateInputError(f"{self.description}: cannot read tensor {name!r}: {err}") from err
        shape = [int(s["as_int"]) for s in meta["sizes"]]
        strides = [int(s["as_int"]) for s in meta["strides"]]
        offset = int(meta["storage_offset"]["as_int"])
        storage = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        needed = offset + sum((n - 1) * s for n, s in zip(shape, strides)) + 1 if all(shape) else 0
        if storage.numel() < needed:
            raise GateInputError(
                f"{self.description}: tensor {name!r} needs {needed} elements but its file holds {storage.numel()} (truncated?)"
            )
        return torch.as_strided(storage, shape, strides, offset)

    def close(self) -> None:
        self._zip.close()
