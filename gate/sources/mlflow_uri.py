"""MLflow model URIs (``models:/name/1``, ``models:/name@alias``, ``models:/m-<id>``, ``runs:/<id>/path``).

Artifacts are downloaded to a private temporary folder, which is removed when the source closes;
the weights are then read by the local-file readers, never by unpickling an MLflow model.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from gate.errors import GateInputError
from gate.sources.base import WeightSource
from gate.sources.composite import CompositeSource

MLFLOW_URI = re.compile(r"^(models|runs|mlflow-artifacts):/")


def is_mlflow_uri(text: str) -> bool:
    return bool(MLFLOW_URI.match(text))


def open_mlflow_uri(uri: str, allow_pickle: bool = False, tracking_uri: str | None = None) -> WeightSource:
    """Download the artifacts behind ``uri`` and open the weights found there."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from gate.sources.local_files import open_local

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    workdir = Path(tempfile.mkdtemp(prefix="weightgate-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(workdir)))
        inner = open_local(local, allow_pickle)
    except MlflowException as err:
        shutil.rmtree(workdir, ignore_errors=True)
        raise GateInputError(f"{uri}: MLflow could not resolve this model: {err.message}") from err
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return CompositeSource([inner], uri, on_close=lambda: shutil.rmtree(workdir, ignore_errors=True))
