"""Several sources seen as one model (sharded ``pytorch_model-0000x.bin`` files, downloaded artifacts)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource


class CompositeSource(WeightSource):
    """Concatenates the tensors of its parts; ``on_close`` cleans up what the parts came from."""

    def __init__(
        self, parts: list[WeightSource], description: str, on_close: Callable[[], None] | None = None
    ) -> None:
        self.description = description
        self._parts = parts
        self._on_close = on_close
        self._owner: dict[str, WeightSource] = {}
        self._infos: list[TensorInfo] = []
        for part in parts:
            for info in part.tensor_infos():
                if info.name in self._owner:
                    raise GateInputError(f"{description}: tensor {info.name!r} appears in two shards")
                self._owner[info.name] = part
                self._infos.append(info)

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        return self._owner[name].load(name)

    def close(self) -> None:
        for part in self._parts:
            part.close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
