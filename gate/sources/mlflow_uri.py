"""MLflow model URIs (``models:/name/1``, ``models:/name@alias``, ``models:/m-<id>``, ``runs:/<id>/path``).

Artifacts are downloaded to a private temporary folder, which is removed when the source closes;
the weights are then read by the local-file readers, never by unpickling an MLflow model. The server
is the one the caller named (:func:`gate.mlflow_connection.resolve_tracking_uri`), and one
that cannot be reached is an input error naming it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from gate.errors import GateInputError
from gate.mlflow_connection import resolve_tracking_uri, unreachable_cause, unreachable_error
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

    tracking_uri = resolve_tracking_uri(tracking_uri, uri)
    workdir = Path(tempfile.mkdtemp(prefix="weightgate-"))
    local = workdir
    try:
        # The URIs go to these calls only: mlflow.set_tracking_uri would change the whole process
        # (e.g. the worker's or a notebook's own MLflow client).
        location = _model_location(uri, tracking_uri) if uri.startswith("models:/") else uri
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(workdir),
                                                         tracking_uri=tracking_uri, registry_uri=tracking_uri))
        inner = open_local(local, allow_pickle)
    except MlflowException as err:
        shutil.rmtree(workdir, ignore_errors=True)
        cause = unreachable_cause(err)
        if cause is not None:
            raise unreachable_error(tracking_uri, uri, cause) from err
        raise GateInputError(f"{uri}: MLflow could not resolve this model: {err.message}") from err
    except GateInputError as err:  # e.g. a refused pickle: name what the user gave, not our temporary copy
        shutil.rmtree(workdir, ignore_errors=True)
        message = str(err).replace(str(local), uri)  # open_local names only paths below ``local``
        raise type(err)(message if message.startswith(uri) else f"{uri}: {message}") from err
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    composite = CompositeSource([inner], uri, on_close=lambda: shutil.rmtree(workdir, ignore_errors=True))
    composite.model_config = inner.model_config
    return composite


def _model_location(uri: str, tracking_uri: str | None) -> str:
    """Where a ``models:/`` URI's files are stored, resolved with an explicit client.

    MLflow 3.17's ``download_artifacts(tracking_uri=...)`` resolves ``models:/`` URIs with the
    process-wide registry and tracking URIs and ignores the ones passed in; runs:/ and storage URIs
    do honour them.
    """
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    tracking_uri = resolve_tracking_uri(tracking_uri, uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    identifiers = get_model_name_and_version(client, uri)
    if len(identifiers) == 1:  # models:/m-<id>, a logged model
        return client.get_logged_model(identifiers[0]).artifact_location
    name, version = identifiers
    return client.get_model_version_download_uri(name, version)
