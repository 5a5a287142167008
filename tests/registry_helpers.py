"""Registering a weights file as a model version, as the integration tests all need."""

from __future__ import annotations

from pathlib import Path


def register_file(client, model: str, weights_file: Path) -> str:
    """Log ``weights_file`` in a new run and register that artifact as a new version of ``model``."""
    from mlflow.exceptions import MlflowException

    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    client.log_artifact(run.info.run_id, str(weights_file), "weights")
    try:
        client.create_registered_model(model)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(model, f"{run.info.artifact_uri}/weights", run_id=run.info.run_id).version


def two_minilm_matrices(minilm_dir: Path) -> dict:
    """Two trained 384 x 384 matrices of all-MiniLM-L6-v2: a small model the shipped policy approves."""
    from safetensors.torch import load_file

    full = load_file(str(minilm_dir / "model.safetensors"))
    return {key: full[key].clone() for key in ("encoder.layer.0.attention.self.query.weight",
                                               "encoder.layer.0.attention.output.dense.weight")}


def decision_of(url: str, name: str, version) -> dict:
    """The server plugin's decision row of a version (``/weightgate/api/decision``): what the gate
    decided and why, which the version's four ``gate.*`` tags only summarise."""
    import json
    import urllib.request
    from urllib.parse import urlencode

    query = urlencode({"name": name, "version": str(version)})
    with urllib.request.urlopen(f"{url}/weightgate/api/decision?{query}", timeout=120) as response:
        return json.loads(response.read())


def run_params(client, version_tags: dict) -> dict:
    """The params of the decision run a version's ``gate.decision_run`` tag names (webhook mode keeps
    the decision's details there)."""
    return client.get_run(version_tags["gate.decision_run"]).data.params
