"""Turn a local path (file or directory) into a :class:`WeightSource`, by format."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import yaml

from gate.errors import GateInputError
from gate.sources.base import WeightSource
from gate.sources.composite import CompositeSource
from gate.sources.pt2_archive import Pt2ArchiveSource
from gate.sources.safetensors_files import SafetensorsSource
from gate.sources.torch_files import open_torch_file

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUPPORTED = ".safetensors, model.safetensors.index.json, .pt/.pth/.bin/.ckpt, .pt2, .onnx, or a model directory"

# Files looked for in a model directory, best first: the first kind present is used.
_DIRECTORY_CANDIDATES = (
    "model.safetensors.index.json",
    "*.safetensors",
    "pytorch_model.bin.index.json",
    "*.pt2",
    "pytorch_model*.bin",
    "*.pth",
    "*.pt",
    "*.onnx",
)


def open_local(path: Path, allow_pickle: bool = False) -> WeightSource:
    """Open a file or directory; errors name the path and what was expected."""
    if not path.exists():
        raise GateInputError(f"{path}: no such file or directory")
    if path.is_dir():
        return _open_directory(path, allow_pickle)
    if path.stat().st_size == 0:
        raise GateInputError(f"{path}: the file is empty")
    name = path.name
    if name.endswith(".safetensors.index.json"):
        return SafetensorsSource.from_index(path)
    if name.endswith(".bin.index.json"):
        return _open_bin_index(path, allow_pickle)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsSource([path], str(path))
    if suffix == ".pt2":
        return Pt2ArchiveSource(path)
    if suffix == ".onnx":
        from gate.sources.onnx_file import OnnxSource  # onnx imports for seconds: only for .onnx files

        return OnnxSource(path)
    if suffix in TORCH_SUFFIXES:
        return open_torch_file(path, allow_pickle)
    return _open_by_content(path, allow_pickle)


def _open_by_content(path: Path, allow_pickle: bool) -> WeightSource:
    """Files with an unexpected name: recognise the format from the first bytes."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("model_weights_config.json") for n in archive.namelist()):
                return Pt2ArchiveSource(path)
        return open_torch_file(path, allow_pickle)
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return SafetensorsSource([path], str(path))  # u64 header length, then the JSON header
    raise GateInputError(f"{path}: unknown model file format; weightgate reads {SUPPORTED}")


def _open_bin_index(index_path: Path, allow_pickle: bool) -> WeightSource:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GateInputError(f"{index_path}: not a valid checkpoint index (expected JSON with 'weight_map'): {err}") from err
    shards = [index_path.parent / shard for shard in dict.fromkeys(weight_map.values())]
    return CompositeSource([open_local(s, allow_pickle) for s in shards], str(index_path))


def _open_directory(directory: Path, allow_pickle: bool) -> WeightSource:
    if (directory / "MLmodel").is_file():
        weights_dir = mlflow_model_weights_dir(directory)
        if weights_dir != directory:
            return _open_directory(weights_dir, allow_pickle)
    for pattern in _DIRECTORY_CANDIDATES:
        matches = sorted(p for p in directory.glob(pattern) if p.is_file())
        if not matches:
            continue
        if len(matches) == 1 or pattern.endswith(".json"):
            return open_local(matches[0], allow_pickle)
        if pattern == "*.safetensors":
            return SafetensorsSource(matches, str(directory))
        return CompositeSource([open_local(m, allow_pickle) for m in matches], str(directory))
    subdirs = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1:  # e.g. an MLflow model's data/ folder or a single exported model
        return _open_directory(subdirs[0], allow_pickle)
    raise GateInputError(f"{directory}: no model weights found in this directory; expected {SUPPORTED}")


def mlflow_model_weights_dir(model_dir: Path) -> Path:
    """The folder holding the weights of an MLflow model directory, from its ``MLmodel`` flavors."""
    try:
        flavors = yaml.safe_load((model_dir / "MLmodel").read_text()).get("flavors", {})
    except (OSError, yaml.YAMLError, AttributeError) as err:
        raise GateInputError(f"{model_dir / 'MLmodel'}: unreadable MLmodel file: {err}") from err
    if "pytorch" in flavors:
        return model_dir / flavors["pytorch"].get("model_data", "data")
    if "transformers" in flavors:
        return model_dir / flavors["transformers"].get("model_binary", "model")
    if "onnx" in flavors:
        return model_dir
    return model_dir
