"""A content hash of a model's weights, independent of file format and tensor order on disk."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from gate.sources.base import TensorInfo, WeightSource


def weights_sha256(source: WeightSource) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes digest, in name order.

    The same weights saved as safetensors, a state dict or a pt2 archive hash alike, so a decision
    recorded for one copy applies to the others; any changed value changes the hash. Built from
    per-tensor digests, so parts of a model hashed apart (gate.distributed) combine to the same value.
    """
    return combine_digests({info.name: tensor_digest(info, source.load(info.name)) for info in source.tensor_infos()})


def tensor_digest(info: TensorInfo, tensor: torch.Tensor) -> str:
    """sha256 of one tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(f"{info.name}\0{info.dtype}\0{list(info.shape)}\0".encode())
    digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def combine_digests(digests: Mapping[str, str]) -> str:
    """The model's hash from its tensors' digests, in name order (whatever order they came in)."""
    combined = hashlib.sha256()
    for name in sorted(digests):
        combined.update(f"{name}\0{digests[name]}\n".encode())
    return combined.hexdigest()
