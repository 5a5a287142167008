"""A content hash of a model's weights, independent of file format, tensor order and sharding.

Each tensor gets its own digest, sha256 over its name, dtype, shape and bytes; the model's hash is
sha256 over the tensor digests in name order. The tensor digests are computed during the scan's one
pass over the weights (gate.scanning.pipeline), in any order and on any machine (one shard, one worker), and
combined afterwards. The same weights saved as safetensors, a state dict or a pt2 archive hash
alike, so a decision recorded for one copy applies to the others; any changed value changes the
hash. (Before weightgate 0.2 the hash was one sha256 over all tensors in a row: the values differ.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from gate.sources.base import WeightSource, dtype_name


def tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    """sha256 of one tensor's name, dtype, shape and bytes (the tensor is read on the CPU)."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{name}\0{dtype_name(data.dtype)}\0{list(data.shape)}\0".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy())  # hashlib releases the GIL on large buffers
    return digest.digest()


def combine(digests: Mapping[str, bytes]) -> str:
    """The model's hash from the digests of all its tensors (by name; order-independent)."""
    total = hashlib.sha256()
    for name in sorted(digests):
        total.update(digests[name])
    return total.hexdigest()


def weights_sha256(source: WeightSource) -> str:
    """The hash of every tensor of ``source``, read once here (a scan computes the same value as
    ``ScanResult.weights_sha256`` without a second read)."""
    return combine({info.name: tensor_digest(info.name, source.load(info.name)) for info in source.tensor_infos()})
