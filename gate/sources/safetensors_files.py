"""``.safetensors`` files, single or sharded (``model.safetensors.index.json``), read lazily."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource, natural_key

# safetensors' header dtype codes -> the names TensorInfo uses.
_SAFETENSORS_DTYPES = {
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool",
}


# Bytes read through one open shard before it is mapped afresh (see SafetensorsSource).
REMAP_BYTES = 64 * 2**20


class SafetensorsSource(WeightSource):
    """One or more safetensors shards; only headers are read up front, data per tensor on demand.

    The shard being read stays open between tensors (opening one costs a stat, a header parse and a
    new mapping, ~0.6 ms: a tenth of a MiniLM scan when done per tensor), but only until
    ``REMAP_BYTES`` have been read through it or another shard is read: pages of a mapping that
    stays open count towards the process's resident memory, which would then grow with shard size.
    """

    def __init__(self, shard_paths: list[Path], description: str) -> None:
        self.description = description
        self._shards = list(shard_paths)
        self._where: dict[str, int] = {}
        self._infos: list[TensorInfo] = []
        self._open: tuple[int, object] | None = None  # (shard number, safe_open handle) being read
        self._read_since_open = 0
        for shard_number, path in enumerate(self._shards):
            with _open_shard(path) as handle:
                self._index_shard(shard_number, handle)
        self._infos.sort(key=lambda info: natural_key(info.name))

    def _index_shard(self, shard_number: int, handle) -> None:
        for name in handle.keys():
            if name in self._where:
                raise GateInputError(f"{self._shards[shard_number]}: tensor {name!r} appears in two shards; the checkpoint is inconsistent")
            tensor_slice = handle.get_slice(name)
            dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype(), tensor_slice.get_dtype().lower())
            self._where[name] = shard_number
            self._infos.append(TensorInfo(name, tuple(tensor_slice.get_shape()), dtype))

    @classmethod
    def from_index(cls, index_path: Path) -> "SafetensorsSource":
        """A sharded checkpoint: the index's ``weight_map`` names the shard of every tensor."""
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise GateInputError(
                f"{index_path}: not a valid safetensors index (expected JSON with a 'weight_map'): {err}"
            ) from err
        shard_names = list(dict.fromkeys(weight_map.values()))
        shards = [index_path.parent / shard for shard in shard_names]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise GateInputError(f"{index_path}: shard files listed in the index are missing: {', '.join(missing)}")
        return cls(shards, str(index_path))

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def shard_files(self) -> dict[Path, list[TensorInfo]]:
        """Each shard file with the tensors it holds: how a distributed scan (gate.distributed)
        splits the work without reading weights."""
        shards: dict[Path, list[TensorInfo]] = {path: [] for path in self._shards}
        for info in self._infos:
            shards[self._shards[self._where[info.name]]].append(info)
        return shards

    def load(self, name: str) -> torch.Tensor:
        handle = self._handle(self._where[name])
        try:
            tensor = handle.get_tensor(name)
        except SafetensorError as err:
            raise GateInputError(f"{self.description}: cannot read tensor {name!r}: {err}") from err
        self._read_since_open += tensor.numel() * tensor.element_size()
        return tensor

    def close(self) -> None:
        if self._open is not None:
            self._open[1].__exit__(None, None, None)
            self._open = None

    def _handle(self, shard_number: int):
        """The open handle of this shard: the one kept from the last read unless it was another
        shard or has read ``REMAP_BYTES`` (class docstring)."""
        if self._open is not None and (self._open[0] != shard_number or self._read_since_open >= REMAP_BYTES):
            self.close()
        if self._open is None:
            self._open = (shard_number, _open_shard(self._shards[shard_number]).__enter__())
            self._read_since_open = 0
        return self._open[1]


def _open_shard(path: Path):
    if path.stat().st_size < 8:
        raise GateInputError(f"{path}: file is {path.stat().st_size} bytes, too short to be safetensors (truncated?)")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as err:
        raise GateInputError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err
