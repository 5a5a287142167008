"""Weight sources: anything weightgate can read, turned into tensors streamed one at a time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource
from gate.sources.local_files import open_local
from gate.sources.mlflow_uri import is_mlflow_uri, open_mlflow_uri
from gate.sources.module import ModuleSource
from gate.sources.torch_files import StateDictSource

if TYPE_CHECKING:
    from gate.sources.lora import MergedSource

__all__ = ["TensorInfo", "WeightSource", "open_merged", "open_source"]


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


def open_merged(adapter: object, base: object, allow_pickle: bool = False, tracking_uri: str | None = None) -> MergedSource:
    """``base`` with ``adapter`` merged into it; both are any source ``open_source`` accepts."""
    from gate.sources.lora import MergedSource  # late, as in local_files: gate.sources.lora imports gate.sources.base

    adapter_source = open_source(adapter, allow_pickle=allow_pickle, tracking_uri=tracking_uri)
    try:
        base_source = open_source(base, allow_pickle=allow_pickle, tracking_uri=tracking_uri)
    except BaseException:
        adapter_source.close()
        raise
    try:
        return MergedSource(base_source, adapter_source)
    except BaseException:
        base_source.close()
        adapter_source.close()
        raise
