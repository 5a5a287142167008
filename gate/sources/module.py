"""Weights of a live ``torch.nn.Module`` (the Python API's source)."""

from __future__ import annotations

import torch

from gate.sources.base import TensorInfo, WeightSource, dtype_name


class ModuleSource(WeightSource):
    """Parameters of an ``nn.Module``; the owning module's class tells the layer kind exactly."""

    def __init__(self, module: torch.nn.Module, description: str | None = None) -> None:
        self.description = description or f"<{type(module).__name__} object>"
        self._params: dict[str, torch.Tensor] = {}
        self._infos: list[TensorInfo] = []
        seen: set[int] = set()
        for module_name, owner in module.named_modules():
            for param_name, param in owner.named_parameters(recurse=False):
                if id(param) in seen:  # shared (tied) parameter, e.g. embedding and LM head: analyse it once
                    continue
                seen.add(id(param))
                name = f"{module_name}.{param_name}" if module_name else param_name
                self._params[name] = param
                self._infos.append(
                    TensorInfo(name, tuple(param.shape), dtype_name(param.dtype), type(owner).__name__)
                )

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        return self._params[name].detach().to("cpu")
