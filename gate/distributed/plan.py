"""Which Ray task reads what: a scan plan made from the source's index, without reading weights.

A *part* is what one task reads: some tensors of one safetensors shard (read through a memory
map, so a task touches only its own tensors' bytes), one whole shard downloaded from the artifact
store, or, for formats without a per-file index (.pt, .onnx, .pt2 ...), the whole source. The
driver reads only headers (local safetensors) or the index and file sizes (MLflow URIs): weights
are read only by the tasks, each from shared storage or by its own download.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gate.errors import GateInputError
from gate.sources.base import TensorInfo, natural_key

DEFAULT_PART_BYTES = 1 << 30  # tensors of one shard grouped up to this many bytes per task
SAFETENSORS = "safetensors"  # part kinds: read the named tensors of one safetensors file
WHOLE_SOURCE = "source"  # open the location with gate.sources.open_source and read every tensor


@dataclass(frozen=True)
class Part:
    """One task's share of a scan.

    ``location`` is a local path (on storage every node sees) or an MLflow artifact URI of the file
    (``remote``: the task downloads it); ``tensors`` names the tensors to analyse, ``None`` for all
    of the file. ``nbytes`` is what the task reads, which sizes its memory request.
    """

    kind: str
    location: str
    remote: bool
    tensors: tuple[str, ...] | None
    nbytes: int


@dataclass(frozen=True)
class ScanPlan:
    """The parts of one scan, and what the merged result must account for.

    ``tensor_names``: every tensor of the model when the index names them (the merge checks that
    the parts reported each exactly once), ``None`` when only the tasks can tell.
    """

    description: str
    parts: tuple[Part, ...]
    tensor_names: frozenset[str] | None
    tracking_uri: str | None
    allow_pickle: bool


def plan_scan(source: str, *, tracking_uri: str | None = None, allow_pickle: bool = False,
              part_bytes: int = DEFAULT_PART_BYTES) -> ScanPlan:
    """Plan a distributed scan of a local path or an MLflow URI."""
    from gate.sources.mlflow_uri import is_mlflow_uri

    if part_bytes < 1:
        raise GateInputError(f"part_bytes must be a positive number of bytes, not {part_bytes}")
    if is_mlflow_uri(source):
        return _plan_mlflow(source, tracking_uri, allow_pickle)
    return _plan_local(Path(source).expanduser(), allow_pickle, part_bytes)


def tensor_bytes(info: TensorInfo) -> int:
    """Bytes of a tensor as stored (unknown dtype names count 8 bytes per element: an upper bound)."""
    dtype = getattr(torch, info.dtype, None)
    width = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 8
    numel = 1
    for size in info.shape:
        numel *= size
    return numel * width


def _plan_local(path: Path, allow_pickle: bool, part_bytes: int) -> ScanPlan:
    from gate.sources.local_files import open_local
    from gate.sources.safetensors_files import SafetensorsSource

    path = path.resolve()
    with open_local(path, allow_pickle) as weights:  # safetensors: headers only
        infos = weights.tensor_infos()
        description = weights.description
        if not isinstance(weights, SafetensorsSource):
            whole = Part(WHOLE_SOURCE, str(path), False, None, sum(map(tensor_bytes, infos)))
            return ScanPlan(description, (whole,), frozenset(i.name for i in infos), None, allow_pickle)
        shards = weights.shard_files()
    parts = []
    for shard, shard_infos in shards.items():
        parts += _group(str(shard), sorted(shard_infos, key=lambda i: natural_key(i.name)), part_bytes)
    return ScanPlan(description, tuple(parts), frozenset(i.name for i in infos), None, allow_pickle)


def _group(location: str, infos: list[TensorInfo], part_bytes: int) -> list[Part]:
    """Consecutive tensors of one shard, up to ``part_bytes`` per part (a larger tensor alone)."""
    parts: list[Part] = []
    names: list[str] = []
    size = 0
    for info in infos:
        nbytes = tensor_bytes(info)
        if names and size + nbytes > part_bytes:
            parts.append(Part(SAFETENSORS, location, False, tuple(names), size))
            names, size = [], 0
        names.append(info.name)
        size += nbytes
    if names:
        parts.append(Part(SAFETENSORS, location, False, tuple(names), size))
    return parts


def _plan_mlflow(uri: str, tracking_uri: str | None, allow_pickle: bool) -> ScanPlan:
    """Shards found in the artifacts' listing become one part each (a task downloads its shard);
    anything else is one part that downloads the whole model, as a single-process scan does."""
    from mlflow.exceptions import MlflowException

    from gate.mlflow_connection import resolve_tracking_uri, unreachable_cause, unreachable_error
    from gate.sources.mlflow_uri import _model_location

    tracking_uri = resolve_tracking_uri(tracking_uri, uri)
    try:
        location = _model_location(uri, tracking_uri) if uri.startswith("models:/") else uri
        folder = _weights_folder(location, tracking_uri)
        parts, names = _safetensors_parts(folder, tracking_uri) if folder else ((), None)
    except MlflowException as err:
        cause = unreachable_cause(err)
        if cause is not None:
            raise unreachable_error(tracking_uri, uri, cause) from err
        raise GateInputError(f"{uri}: MLflow could not resolve this model: {err.message}") from err
    if not parts:
        parts = (Part(WHOLE_SOURCE, uri, True, None, 0),)
    return ScanPlan(uri, tuple(parts), names, tracking_uri, allow_pickle)


def _weights_folder(location: str, tracking_uri: str | None) -> str | None:
    """The artifact folder holding the weights, as :func:`gate.sources.local_files._open_directory`
    finds it: an MLmodel's flavor folder, or the one subfolder of a folder without weight files."""
    from mlflow.artifacts import download_artifacts, list_artifacts

    from gate.sources.mlflow_model_dir import mlflow_model_weights_dir

    folder = location.rstrip("/")
    for _ in range(4):  # MLmodel -> flavor folder -> single subfolder: a few levels at most
        listing = list_artifacts(artifact_uri=folder, tracking_uri=tracking_uri)
        if not listing:
            return None  # a file, or nothing: the whole-source part handles (or reports) it
        names = {posixpath.basename(f.path): f for f in listing}
        if "MLmodel" in names:
            with tempfile.TemporaryDirectory(prefix="weightgate-plan-") as scratch:
                download_artifacts(artifact_uri=f"{folder}/MLmodel", dst_path=scratch, tracking_uri=tracking_uri)
                inner = mlflow_model_weights_dir(Path(scratch)).relative_to(Path(scratch)).as_posix()
            if inner != ".":
                folder = f"{folder}/{inner}"
                continue
        if any(name.endswith(".safetensors") or name.endswith(".safetensors.index.json") for name in names):
            return folder
        files = [f for f in listing if not f.is_dir]
        dirs = [f for f in listing if f.is_dir and not posixpath.basename(f.path).startswith(".")]
        if files or len(dirs) != 1:
            return None
        folder = f"{folder}/{posixpath.basename(dirs[0].path)}"
    return None


def _safetensors_parts(folder: str, tracking_uri: str | None) -> tuple[tuple[Part, ...], frozenset[str] | None]:
    """One part per shard: from ``model.safetensors.index.json`` when present, else every
    ``.safetensors`` file of the folder (as the local directory reader takes them)."""
    from mlflow.artifacts import download_artifacts, list_artifacts

    listing = {posixpath.basename(f.path): f for f in list_artifacts(artifact_uri=folder, tracking_uri=tracking_uri)
               if not f.is_dir}
    if "model.safetensors.index.json" in listing:
        with tempfile.TemporaryDirectory(prefix="weightgate-plan-") as scratch:
            index = Path(download_artifacts(artifact_uri=f"{folder}/model.safetensors.index.json", dst_path=scratch,
                                            tracking_uri=tracking_uri))
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as err:
                raise GateInputError(f"{folder}/model.safetensors.index.json: not a valid safetensors index "
                                     f"(expected JSON with a 'weight_map'): {err}") from err
        shard_names = list(dict.fromkeys(weight_map.values()))
        missing = [name for name in shard_names if name not in listing]
        if missing:
            raise GateInputError(f"{folder}: shard files listed in the index are missing: {', '.join(missing)}")
        names: frozenset[str] | None = frozenset(weight_map)
    else:
        shard_names = sorted(name for name in listing if name.endswith(".safetensors"))
        names = None
    parts = tuple(Part(SAFETENSORS, f"{folder}/{name}", True, None, int(listing[name].file_size or 0))
                  for name in shard_names)
    return parts, names
