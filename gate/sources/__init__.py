"""Weight sources: anything weightgate can read, turned into tensors streamed one at a time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource
from gate.sources.local_files import open_local
from gate.sources.mlflow_uri import is_mlflow_uri, open_mlflow_uri
from gate.sources.module import ModuleSource
from gate.sources.torch_files import StateDictSource

__all__ = ["TensorInfo", "WeightSource", "open_source"]


def open_source(source: Any, allow_pickle: bool = False, tracking_uri: str | None = None) -> WeightSource:
    """Open a module, a state dict, a local path, or an MLflow URI as a :class:`WeightSource`."""
    if isinstance(source, WeightSource):
        return source
    if isinstance(source, torch.nn.Module):
        return ModuleSource(source)
    if isinstance(source, Mapping):
        if not all(isinstance(v, torch.Tensor) for v in source.values()):
            raise GateInputError("a state dict passed to weightgate must map names to torch tensors")
        return StateDictSource(source, "<state dict>")
    if isinstance(source, (str, Path)):
        text = str(source)
        if is_mlflow_uri(text):
            return open_mlflow_uri(text, allow_pickle, tracking_uri)
        return open_local(Path(text).expanduser(), allow_pickle)
    raise GateInputError(
        f"cannot scan an object of type {type(source).__name__}; pass a path, an MLflow URI, "
        "a torch.nn.Module or a state dict"
    )
