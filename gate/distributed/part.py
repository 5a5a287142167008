"""What a Ray task does with its part: open its own files, analyse its tensors, return a small result.

Runs on any node, with no Ray import: the executor wraps :func:`analyse_part` in a remote function,
and tests call it directly. The weights never travel: a local part is read from storage every node
mounts, a remote one is downloaded by the task into a private folder that is removed when it ends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gate.distributed.plan import SAFETENSORS, Part
from gate.errors import GateInputError
from gate.layers.plan import LayerPlan, PlanOptions
from gate.layers.planner import plan_layers
from gate.options import ScanOptions, resolve_device
from gate.scanning.tensor_pass import PartialScan
from gate.sources.base import TensorInfo, WeightSource


@dataclass
class PartResult:
    """A part's tensors (as its file describes them), the layer plans it analysed (numbered within
    its file) and the scanner's partial result for them; the merge renumbers the plans globally."""

    description: str
    infos: list[TensorInfo]
    plans: list[LayerPlan]
    partial: PartialScan


def analyse_part(part: Part, options: ScanOptions, *, tracking_uri: str | None = None,
                 allow_pickle: bool = False) -> PartResult:
    """One pass over the part's tensors, on the device of ``options`` as this node has it."""
    from gate.scanning.pipeline import analyse_tensors

    device = resolve_device(options.device)  # before the part is read: this node may lack the GPU asked for
    with open_part(part, tracking_uri, allow_pickle) as weights:
        infos = weights.tensor_infos()
        names = set(part.tensors) if part.tensors is not None else {info.name for info in infos}
        # Planned over the whole file, so that a layer that looks at its neighbours (recurrent gates) sees them.
        plans = [plan for plan in plan_layers(infos, PlanOptions.of(options)) if plan.tensor_name in names]
        mine = [info for info in infos if info.name in names]
        if len(mine) != len(names):
            raise GateInputError(f"{part.location}: the plan names tensors this file does not hold: "
                                 f"{sorted(names - {info.name for info in mine})[:10]}")
        partial = analyse_tensors(weights, plans, [info.name for info in mine], options, device)
        return PartResult(weights.description, mine, plans, partial)


@contextmanager
def open_part(part: Part, tracking_uri: str | None, allow_pickle: bool) -> Iterator[WeightSource]:
    """The part's weights as a source, downloaded first when the part is remote."""
    from gate.sources import open_source
    from gate.sources.safetensors_files import SafetensorsSource

    if part.kind == SAFETENSORS and part.remote:
        scratch = Path(tempfile.mkdtemp(prefix="weightgate-part-"))
        try:
            local = _download(part.location, scratch, tracking_uri)
            with SafetensorsSource([local], part.location) as weights:
                yield weights
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    elif part.kind == SAFETENSORS:
        with SafetensorsSource([Path(part.location)], part.location) as weights:
            yield weights
    else:
        with open_source(part.location, allow_pickle=allow_pickle, tracking_uri=tracking_uri) as weights:
            yield weights


def _download(uri: str, scratch: Path, tracking_uri: str | None) -> Path:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        return Path(download_artifacts(artifact_uri=uri, dst_path=str(scratch), tracking_uri=tracking_uri))
    except MlflowException as err:
        raise GateInputError(f"{uri}: a Ray task could not download this shard: {err.message}") from err
