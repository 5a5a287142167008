"""PEFT LoRA adapters: each adapted module's update dW = scale * B A, analysed as a weight matrix.

An adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``, as PEFT's
``save_pretrained`` writes it) reads as a source whose tensors are the updates, named like the
base model's weights (``model.layers.0.self_attn.q_proj.weight``), so that adapter versions compare
layer by layer and ``--base`` can add them to the base model's weights. scale = lora_alpha / r,
or lora_alpha / sqrt(r) with ``use_rslora``; r is each module's own (its factors' shape, so PEFT's
``rank_pattern`` needs no reading) and ``alpha_pattern`` is honoured.

Adapter metrics come from the factors alone: with A^T = QR (Q orthonormal, in x r), the singular
values of B A are those of B R^T (out x r), so the r x r Gram of B R^T gives dW's whole spectrum at
O(r (in + out)) memory. ``lora_stable_rank_ratio`` (stable rank of dW over r) near 1/r says the
adapter learned essentially one direction; near 1, that it uses its whole rank.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, WeightSource

ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<embedding>embedding_)?(?P<factor>[AB])(\.(?P<adapter>[^.]+))?(\.weight)?$")


@dataclass(frozen=True)
class AdapterConfig:
    """What PEFT's adapter_config.json says about the scaling and orientation of updates."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    alpha_pattern: dict[str, float] | None = None

    @classmethod
    def read(cls, path: Path) -> "AdapterConfig":
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise GateInputError(f"{path}: unreadable adapter config ({err})") from err
        if str(raw.get("peft_type", "LORA")).upper() != "LORA":
            raise GateInputError(f"{path}: peft_type {raw.get('peft_type')!r} is not supported; weightgate reads LoRA adapters")
        try:
            return cls(int(raw["r"]), float(raw.get("lora_alpha", raw["r"])), bool(raw.get("use_rslora", False)),
                       bool(raw.get("fan_in_fan_out", False)), raw.get("alpha_pattern") or None)
        except (KeyError, TypeError, ValueError) as err:
            raise GateInputError(f"{path}: adapter config needs an integer 'r' and a number 'lora_alpha': {err}") from err

    def scale(self, module: str, rank: int) -> float:
        """PEFT's scaling for ``module``: patterns match by key suffix, as PEFT matches them."""
        alpha = self.lora_alpha
        for key, value in (self.alpha_pattern or {}).items():
            if module == key or module.endswith(f".{key}"):
                alpha = float(value)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


@dataclass(frozen=True)
class _Update:
    name: str  # the base weight it updates, e.g. model.layers.0.mlp.up_proj.weight
    a: str
    b: str
    scale: float
    transpose: bool  # embeddings and fan_in_fan_out (GPT-2 Conv1D) weights store dW^T
    embedding: bool


class LoraSource(WeightSource):
    """An adapter's updates dW, one per adapted module; other saved tensors (``modules_to_save``)
    pass through; the factors are marked consumed."""

    def __init__(self, directory: Path, factors: WeightSource) -> None:
        self.description = str(directory)
        self.config = AdapterConfig.read(directory / ADAPTER_CONFIG)
        self._factors = factors
        infos = {info.name: info for info in factors.tensor_infos()}
        self.updates = self._pair(infos)
        by_a = {update.a: update for update in self.updates.values()}
        consumed = {update.b: update.name for update in self.updates.values()}
        self._infos: list[TensorInfo] = []
        for info in factors.tensor_infos():
            if info.name in by_a:
                self._infos.append(self._update_info(by_a[info.name], infos))
                self._infos.append(replace(info, consumed_by=by_a[info.name].name))
            elif info.name in consumed:
                self._infos.append(replace(info, consumed_by=consumed[info.name]))
            else:
                self._infos.append(replace(info, name=info.name.removeprefix(_PREFIX)))
        self._stored = {info.name.removeprefix(_PREFIX): info.name for info in factors.tensor_infos()}

    def _pair(self, infos: dict[str, TensorInfo]) -> dict[str, _Update]:
        halves: dict[tuple[str, bool], dict[str, str]] = {}
        for name in infos:
            match = _FACTOR.match(name)
            if match:
                key = (match["module"], bool(match["embedding"]))
                halves.setdefault(key, {})[match["factor"]] = name
        updates = {}
        for (module, embedding), pair in halves.items():
            if set(pair) != {"A", "B"}:
                missing = "lora_B" if "A" in pair else "lora_A"
                raise GateInputError(f"{self.description}: {module} has no {missing} tensor; the adapter file is incomplete")
            a, b = infos[pair["A"]], infos[pair["B"]]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise GateInputError(
                    f"{self.description}: {module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not "
                    "[r, in] and [out, r] factors (convolution adapters are not supported)")
            clean = module.removeprefix(_PREFIX)
            rank = a.shape[0]
            name = f"{clean}.weight"
            updates[name] = _Update(name, a.name, b.name, self.config.scale(clean, rank),
                                    embedding or self.config.fan_in_fan_out, embedding)
        return updates

    def _update_info(self, update: _Update, infos: dict[str, TensorInfo]) -> TensorInfo:
        a, b = self._factors.load(update.a), self._factors.load(update.b)
        rank = a.shape[0]
        evals = factor_eigenvalues(a, b, update.scale)
        stable = float(evals.sum() / evals.max()) if evals.max() > 0 else math.nan
        shape = (a.shape[1], b.shape[0]) if update.transpose else (b.shape[0], a.shape[1])
        columns = (("lora_rank", rank), ("lora_scale", update.scale), ("lora_stable_rank", stable),
                   ("lora_stable_rank_ratio", stable / rank), ("lora_norm", float(math.sqrt(evals.sum()))))
        return TensorInfo(update.name, shape, "float32", "Embedding" if update.embedding else None, columns=columns)

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def delta(self, name: str) -> torch.Tensor:
        """scale * B A in float32, oriented like the base weight."""
        update = self.updates[name]
        a = self._factors.load(update.a).to(torch.float32)
        b = self._factors.load(update.b).to(torch.float32)
        product = (b @ a).mul_(update.scale)
        return product.T.contiguous() if update.transpose else product

    def load(self, name: str) -> torch.Tensor:
        if name in self.updates:
            return self.delta(name)
        return self._factors.load(self._stored.get(name, name))

    def close(self) -> None:
        self._factors.close()


def factor_eigenvalues(a: torch.Tensor, b: torch.Tensor, scale: float) -> np.ndarray:
    """The r eigenvalues of dW^T dW (dW = scale B A; the other in - r are zero), from the factors:
    A^T = QR, so dW = scale (B R^T) Q^T and dW's singular values are those of scale B R^T."""
    r_factor = torch.linalg.qr(a.to(torch.float64).T, mode="r").R  # r x r (A: r x in, in >= r)
    small = scale * (b.to(torch.float64) @ r_factor.T)  # out x r
    return np.clip(torch.linalg.eigvalsh(small.T @ small).numpy(), 0, None)


class MergedSource(WeightSource):
    """Base weights with an adapter's updates added (W + dW, in the base weight's dtype, as PEFT's
    ``merge_and_unload`` does); the adapted tensors carry the adapter's columns. ``adapter`` is any
    source whose update tensors carry a ``lora_rank`` column (a :class:`LoraSource`, also behind an
    MLflow URI)."""

    def __init__(self, base: WeightSource, adapter: WeightSource) -> None:
        self.description = f"{base.description} + {adapter.description}"
        self._base, self._adapter = base, adapter
        updates = {info.name: info for info in adapter.tensor_infos() if "lora_rank" in dict(info.columns)}
        if not updates:
            raise GateInputError(f"{adapter.description}: not a LoRA adapter (no lora_A/lora_B pairs), so there is "
                                 "nothing to merge into the base; pass the adapter directory (adapter_config.json)")
        base_infos = {info.name: info for info in base.tensor_infos()}
        problems = [f"{name} is not in the base" if name not in base_infos else
                    f"{name}: base {list(base_infos[name].shape)}, update {list(info.shape)}"
                    for name, info in updates.items()
                    if name not in base_infos or tuple(base_infos[name].shape) != tuple(info.shape)]
        if problems:
            raise GateInputError(f"{adapter.description} does not fit base {base.description}: "
                                 + "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                                 + "; pass the base model the adapter was trained on")
        self._updates = updates
        self._infos = [replace(info, columns=info.columns + updates[info.name].columns) if info.name in updates else info
                       for info in base.tensor_infos()]

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        weight = self._base.load(name)
        if name not in self._updates:
            return weight
        return (weight.to(torch.float32) + self._adapter.load(name)).to(weight.dtype)

    def close(self) -> None:
        self._base.close()
        self._adapter.close()
