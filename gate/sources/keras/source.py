"""Keras models read with h5py alone: ``.keras`` archives (Keras 3, ``mlflow.keras``), Keras 3 weights
files (``.weights.h5``) and legacy ``.h5`` files (Keras 2, Keras 3's ``model.save("x.h5")``).

Neither TensorFlow nor Keras is imported, and nothing in the model's config runs: config.json (or a
legacy file's ``model_config``) is parsed as JSON and only layer classes, names and nesting are read
(:mod:`gate.sources.keras.config`). Tensors are read one dataset at a time; a ``.keras`` archive's
``model.weights.h5`` is read in place inside the zip (Keras stores it uncompressed), so memory stays
at one tensor. Each tensor comes out in torch's orientation under a torch-style name
(:mod:`gate.sources.keras.roles`), in the model's layer order (:mod:`gate.sources.keras.layout`).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch

from gate.errors import GateInputError
from gate.sources.base import OPTIMIZER_STATE, TensorInfo, WeightSource
from gate.sources.keras.config import LayerNode, container, inferred_node, parse_model_config
from gate.sources.keras.layout import KerasVariable, keras3_variables, legacy_variables

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_WEIGHTS = "model.weights.h5"
_KERAS_CONFIG = "config.json"
_MAX_CONFIG_BYTES = 256 * 2**20  # a config of a few MB is large; more is not a Keras config
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field

SAVED_MODEL_REFUSAL = (
    "{path}: a TensorFlow SavedModel (saved_model.pb with a variables/ folder), which weightgate does not "
    "read: its variables are a TensorFlow checkpoint that only TensorFlow decodes, and loading the graph "
    "would run it. Save the model as .keras (model.save('model.keras'), what mlflow.keras writes by "
    "default) or export it to ONNX (tf2onnx), and scan that file."
)


def is_keras_archive(path: Path) -> bool:
    """A zip holding ``model.weights.h5``: a ``.keras`` file whatever its name."""
    try:
        with zipfile.ZipFile(path) as archive:
            return KERAS_WEIGHTS in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def is_hdf5(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(HDF5_MAGIC)) == HDF5_MAGIC


class KerasSource(WeightSource):
    """A Keras model file, tensor by tensor, in torch's names and layouts."""

    def __init__(self, path: Path) -> None:
        self.description = str(path)
        self._handles: list = []
        try:
            if zipfile.is_zipfile(path):
                file, config = self._open_archive(path)
                root = parse_model_config(config, f"{path}:{_KERAS_CONFIG}")
                variables = keras3_variables(file, root)
            elif path.suffix.lower() == ".keras":
                raise GateInputError(f"{path}: not a readable .keras archive (a .keras file is a zip archive; "
                                     "truncated or corrupt?)")
            else:
                file = self._keep(_open_h5(path, path))
                variables = _h5_variables(file, path)
        except BaseException:
            self.close()
            raise
        self._file = file
        self._variables: dict[str, KerasVariable] = {}
        self._infos: list[TensorInfo] = []
        for variable in variables:
            info = _tensor_info(variable, file[variable.dataset])
            if info.name in self._variables:  # two layers mapped to one torch name: keep both, under file paths
                variable = KerasVariable(variable.dataset.strip("/").replace("/", "."), variable.dataset,
                                         variable.module_type, variable.transform)
                info = _tensor_info(variable, file[variable.dataset])
            self._variables[info.name] = variable
            self._infos.append(info)
        if not any(info.module_type != OPTIMIZER_STATE for info in self._infos):
            self.close()
            raise GateInputError(f"{path}: a Keras file without model weights (no layer variables found)")

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        variable = self._variables[name]
        try:
            tensor = _read(self._file[variable.dataset])
        except (OSError, ValueError, KeyError) as err:
            raise GateInputError(f"{self.description}: cannot read Keras variable {variable.dataset}: {err}") from err
        return variable.transform(tensor).contiguous()

    def close(self) -> None:
        for handle in reversed(self._handles):
            handle.close()
        self._handles.clear()

    def _keep(self, handle):
        self._handles.append(handle)
        return handle

    def _open_archive(self, path: Path) -> tuple[h5py.File, object]:
        """``config.json`` (as JSON) and ``model.weights.h5`` (in place when stored uncompressed, as
        Keras writes it; else copied to a temporary file) of a ``.keras`` archive."""
        archive = self._keep(zipfile.ZipFile(path))
        names = archive.namelist()
        if KERAS_WEIGHTS not in names or _KERAS_CONFIG not in names:
            raise GateInputError(
                f"{path}: a zip archive, but not a Keras .keras file with {_KERAS_CONFIG} and {KERAS_WEIGHTS} "
                f"(it holds {', '.join(names[:6]) or 'nothing'}); weightgate reads .keras files with HDF5 weights "
                "(Keras's default weights_format)")
        config_info = archive.getinfo(_KERAS_CONFIG)
        if config_info.file_size > _MAX_CONFIG_BYTES:
            raise GateInputError(f"{path}: {_KERAS_CONFIG} is {config_info.file_size} bytes, too large for a model config")
        try:
            config = json.loads(archive.read(_KERAS_CONFIG))
        except (ValueError, UnicodeDecodeError) as err:
            raise GateInputError(f"{path}: {_KERAS_CONFIG} is not valid JSON: {err}") from err
        member = archive.getinfo(KERAS_WEIGHTS)
        if member.compress_type == zipfile.ZIP_STORED:
            stream = self._keep(_MemberWindow(path, member))
        else:
            stream = self._keep(tempfile.TemporaryFile(prefix="weightgate-keras-"))
            with archive.open(member) as source:
                shutil.copyfileobj(source, stream, 2**20)
            stream.seek(0)
        return self._keep(_open_h5(stream, f"{path}:{KERAS_WEIGHTS}")), config


def _h5_variables(file: h5py.File, path: Path) -> list[KerasVariable]:
    """A bare HDF5 file: a legacy Keras model or weights file, or a Keras 3 weights file."""
    model_config = file.attrs.get("model_config")
    if model_config is not None:
        text = model_config.decode() if isinstance(model_config, bytes) else str(model_config)
        try:
            config = json.loads(text)
        except ValueError as err:
            raise GateInputError(f"{path}: the model_config attribute is not valid JSON: {err}") from err
        return legacy_variables(file, parse_model_config(config, f"{path}:model_config"))
    if "model_weights" in file or "layer_names" in file.attrs:
        return legacy_variables(file, None)
    if container(file) is not None or "vars" in file:
        root = inferred_node("", file)
        return keras3_variables(file, root if root.children is not None else LayerNode("", "", {}, children=[]))
    raise GateInputError(
        f"{path}: an HDF5 file, but not one Keras wrote (no model_weights group, layer_names attribute or "
        f"layers group; top-level entries: {', '.join(list(file)[:6]) or 'none'}). weightgate reads .keras "
        "archives, Keras .weights.h5 files and legacy Keras .h5 models")


def _open_h5(target, where: object) -> h5py.File:
    try:
        return h5py.File(target, "r")
    except OSError as err:
        raise GateInputError(f"{where}: not a readable HDF5 file (truncated or corrupt?): {err}") from err


def _tensor_info(variable: KerasVariable, dataset: h5py.Dataset) -> TensorInfo:
    dtype = _dtype_name(dataset)
    shape = tuple(int(d) for d in variable.transform(torch.empty(dataset.shape, device="meta")).shape)
    if variable.is_optimizer_state:
        return TensorInfo(variable.name, shape, dtype, OPTIMIZER_STATE)
    floating = dtype in ("float16", "bfloat16", "float32", "float64")
    reason = None
    if not floating and len(shape) >= 2:
        reason = (f"{dtype} variable of a Keras {variable.module_type or 'layer'}, not float weights (Keras's "
                  "quantized layers store int8/int4 kernels with separate scales, which weightgate does not apply)")
    elif variable.module_type is None and len(shape) >= 3:
        reason = (f"Keras variable {variable.dataset} of a layer whose class neither the model config nor a "
                  "default layer name gives: its layout (which axes are inputs, outputs and kernel) is unknown")
    return TensorInfo(variable.name, shape, dtype, variable.module_type, skip_reason=reason)


def _dtype_name(dataset: h5py.Dataset) -> str:
    """Keras stores bfloat16 (``ml_dtypes.bfloat16``) as 2-byte opaque values, with a ``dtype`` attribute
    saying so in Keras 3 weights files and without one in legacy .h5 files; no other Keras dtype is a
    2-byte opaque value (float8 types take one byte, int4 is stored in int8)."""
    if dataset.attrs.get("dtype") in ("bfloat16", b"bfloat16") or (dataset.dtype.kind == "V" and dataset.dtype.itemsize == 2):
        return "bfloat16"
    return str(dataset.dtype) if dataset.dtype.kind in "fiub" else f"opaque {dataset.dtype}"


def _read(dataset: h5py.Dataset) -> torch.Tensor:
    array = np.array(dataset[()])  # 0-D datasets come back as numpy scalars
    if _dtype_name(dataset) == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    if array.dtype.kind not in "fiub":  # other opaque values: their bytes, for the fingerprint (no row reads them)
        return torch.from_numpy(array.view(np.uint8))
    return torch.from_numpy(array)


class _MemberWindow(io.RawIOBase):
    """An uncompressed zip member read in place, seekable: h5py reads the weights file without a copy
    (zipfile's own member stream rereads from the start on every backward seek)."""

    def __init__(self, path: Path, member: zipfile.ZipInfo) -> None:
        self._file = path.open("rb")
        self._file.seek(member.header_offset)
        header = self._file.read(_LOCAL_HEADER)
        if header[:4] != b"PK\x03\x04":
            self._file.close()
            raise GateInputError(f"{path}: corrupt zip archive (bad local header for {member.filename})")
        name_length = int.from_bytes(header[26:28], "little")
        extra_length = int.from_bytes(header[28:30], "little")
        self._start = member.header_offset + _LOCAL_HEADER + name_length + extra_length
        self._size = member.file_size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._position))
        self._file.seek(self._start + self._position)
        read = self._file.readinto(memoryview(buffer)[:count])
        self._position += read
        return read

    def close(self) -> None:
        self._file.close()
        super().close()
