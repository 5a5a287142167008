"""A content hash of a model's weights, independent of file format and tensor order on disk."""

from __future__ import annotations

import hashlib

import torch

from gate.sources.base import WeightSource


def weights_sha256(source: WeightSource) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order.

    The same weights saved as safetensors, a state dict or a pt2 archive hash alike, so a decision
    recorded for one copy applies to the others; any changed value changes the hash.
    """
    digest = hashlib.sha256()
    for info in sorted(source.tensor_infos(), key=lambda i: i.name):
        tensor = source.load(info.name).detach().to("cpu").contiguous()
        digest.update(f"{info.name}\0{info.dtype}\0{list(info.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
