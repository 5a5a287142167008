"""Turn a local path (file or directory) into a :class:`WeightSource`, by format."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from gate.errors import GateInputError
from gate.sources.base import WeightSource
from gate.sources.composite import CompositeSource
from gate.sources.gguf_file import GgufSource
from gate.sources.keras.source import SAVED_MODEL_REFUSAL, KerasSource, is_hdf5, is_keras_archive
from gate.sources.mlflow_model_dir import MLMODEL, MlflowModelDir, mlflow_model_weights_dir
from gate.sources.pickled.source import open_pickle_file
from gate.sources.pt2_archive import Pt2ArchiveSource
from gate.sources.quantization.config import read_quantization_config
from gate.sources.quantized import dequantizing
from gate.sources.safetensors_files import SafetensorsSource
from gate.sources.skops_file import open_skops_file
from gate.sources.torch_files import open_torch_file

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")  # .weights.h5 ends in .h5
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
SUPPORTED = (".safetensors, model.safetensors.index.json, .pt/.pth/.bin/.ckpt, .pt2, .onnx, .gguf, "
             ".keras/.h5/.weights.h5 (Keras), .pkl/.joblib (scikit-learn MLPs, pickled torch modules), "
             ".skops (scikit-learn MLPs), or a model directory")
# A TensorFlow SavedModel's graph file: refused with a message saying what to do instead.
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

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
    "*.gguf",
    "*.keras",
    "*.h5",
    "*.hdf5",
    "*.skops",
    "*.joblib",
    "*.pkl",
)


def open_local(path: Path, allow_pickle: bool = False) -> WeightSource:
    """Open a file or directory; errors name the path and what was expected. Quantized weights
    read as their dequantized float values (``quantization_config`` from config.json beside them)."""
    source = _open_local(path, allow_pickle)
    config_dir = path if path.is_dir() else path.parent
    return dequantizing(source, read_quantization_config(_weights_dir(config_dir)))


def _open_local(path: Path, allow_pickle: bool = False) -> WeightSource:
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
    if suffix == ".gguf":
        return GgufSource(path)
    if suffix in KERAS_SUFFIXES:
        return KerasSource(path)
    if name in _SAVED_MODEL_FILES:
        raise GateInputError(SAVED_MODEL_REFUSAL.format(path=path.parent))
    if suffix in TORCH_SUFFIXES:
        return open_torch_file(path, allow_pickle)
    if suffix in PICKLE_SUFFIXES:
        return open_pickle_file(path)
    if suffix == ".skops":
        return open_skops_file(path)
    return _open_by_content(path, allow_pickle)


def _open_by_content(path: Path, allow_pickle: bool) -> WeightSource:
    """Files with an unexpected name: recognise the format from the first bytes."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("model_weights_config.json") for n in archive.namelist()):
                return Pt2ArchiveSource(path)
        if is_keras_archive(path):
            return KerasSource(path)
        return open_torch_file(path, allow_pickle)
    if is_hdf5(path):
        return KerasSource(path)
    if head[:1] == b"\x80":  # a pickle stream (protocol 2+): a legacy torch file, a plain or joblib pickle
        return open_torch_file(path, allow_pickle)
    if head[:4] == b"GGUF":
        return GgufSource(path)
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return SafetensorsSource([path], str(path))  # u64 header length, then the JSON header
    raise GateInputError(f"{path}: unknown model file format; weightgate reads {SUPPORTED}")


def _open_bin_index(index_path: Path, allow_pickle: bool) -> WeightSource:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GateInputError(f"{index_path}: not a valid checkpoint index (expected JSON with 'weight_map'): {err}") from err
    shards = [index_path.parent / shard for shard in dict.fromkeys(weight_map.values())]
    return CompositeSource([_open_local(s, allow_pickle) for s in shards], str(index_path))


def _open_directory(directory: Path, allow_pickle: bool) -> WeightSource:
    # Late: gate.sources.lora imports gate.sources.base, which runs this package's __init__ first; imported at
    # the top, this module would find gate.sources.lora half-initialised whenever gate.sources.lora is imported first.
    from gate.sources.lora import ADAPTER_CONFIG, LoraSource

    if (directory / ADAPTER_CONFIG).is_file():  # a PEFT adapter: its updates, not its factors
        return LoraSource(directory, _open_adapter_weights(directory, allow_pickle))
    if (directory / MLMODEL).is_file():
        return _open_mlflow_model(MlflowModelDir.read(directory), allow_pickle)
    return _open_weight_files(directory, allow_pickle)


def _open_mlflow_model(model: MlflowModelDir, allow_pickle: bool) -> WeightSource:
    """The weights of the model's flavor; an error reading them names the model's flavors."""
    weights = model.weights()
    try:
        if weights == model.path:  # e.g. mlflow.onnx's model.onnx beside MLmodel, named by no key
            return _open_weight_files(weights, allow_pickle)
        return _open_local(weights, allow_pickle)
    except GateInputError as err:
        raise type(err)(f"{model.path}: {model.described()}: {err}") from err


def _open_weight_files(directory: Path, allow_pickle: bool) -> WeightSource:
    """A folder of weight files, found by name (:data:`_DIRECTORY_CANDIDATES`)."""
    if any((directory / name).is_file() for name in _SAVED_MODEL_FILES):
        raise GateInputError(SAVED_MODEL_REFUSAL.format(path=directory))
    for pattern in _DIRECTORY_CANDIDATES:
        matches = sorted(p for p in directory.glob(pattern) if p.is_file())
        if not matches:
            continue
        if len(matches) == 1 or pattern.endswith(".json"):
            return _open_local(matches[0], allow_pickle)
        if pattern == "*.safetensors":
            return SafetensorsSource(matches, str(directory))
        return CompositeSource([_open_local(m, allow_pickle) for m in matches], str(directory))
    subdirs = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1:  # e.g. an MLflow model's data/ folder or a single exported model
        return _open_directory(subdirs[0], allow_pickle)
    raise GateInputError(f"{directory}: no model weights found in this directory; expected {SUPPORTED}")


def _weights_dir(directory: Path) -> Path:
    """Where config.json sits: an MLflow model's weights folder, or the directory itself."""
    if (directory / MLMODEL).is_file():
        return mlflow_model_weights_dir(directory)
    return directory


def _open_adapter_weights(directory: Path, allow_pickle: bool) -> WeightSource:
    from gate.sources.lora import ADAPTER_CONFIG

    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (directory / name).is_file():
            return _open_local(directory / name, allow_pickle)
    raise GateInputError(f"{directory}: has {ADAPTER_CONFIG} but no adapter_model.safetensors or adapter_model.bin")
