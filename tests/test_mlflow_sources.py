"""MLflow model URIs against a real ``mlflow server`` process: registry versions, aliases, logged
model ids, run artifacts, and mlflow.pytorch's pickle format read without running it."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import gate


@pytest.fixture(scope="module")
def registry(mlflow_tracking_uri, tmp_path_factory):
    """Registers a pt2 model (version 1, alias champion), a pickled one, and logs a run artifact."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(mlflow_tracking_uri)
    mlflow.set_registry_uri(mlflow_tracking_uri)
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 24))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run() as run:
            pt2_info = mlflow.pytorch.log_model(model, name="model", registered_model_name="mlp",
                                                input_example=np.zeros((2, 40), np.float32))
            mlflow.pytorch.log_model(model, name="pickled", registered_model_name="mlp-pickled",
                                     serialization_format="pickle")
            weights = tmp_path_factory.mktemp("weights") / "model.safetensors"
            save_file(model.state_dict(), weights)
            mlflow.log_artifact(str(weights), artifact_path="weights")
    MlflowClient().set_registered_model_alias("mlp", "champion", "1")
    expected = gate.scan(model, device="cpu").layers.set_index("name")["alpha"]
    return {"model_id": pt2_info.model_id, "run_id": run.info.run_id, "expected": expected,
            "uri": mlflow_tracking_uri}


@pytest.mark.parametrize("uri_template", [
    "models:/mlp/1", "models:/mlp@champion", "models:/{model_id}", "runs:/{run_id}/weights/model.safetensors",
])
def test_mlflow_uris_resolve_to_the_same_weights(registry, uri_template):
    uri = uri_template.format(**registry)
    result = gate.scan(uri, device="cpu", tracking_uri=registry["uri"])
    got = result.layers.set_index("name")["alpha"]
    assert result.source == uri
    assert list(got.index) == ["0", "2"]
    np.testing.assert_allclose(got.loc[["0", "2"]], registry["expected"].loc[["0", "2"]], rtol=1e-12)


def test_pickled_mlflow_model_is_read_without_running_it(registry):
    """mlflow.pytorch's pickle format (data/model.pth, torch.save with cloudpickle): the same alphas as the
    live model, by default; --allow-pickle changes nothing for a file whose weights the safe reader finds."""
    cli = [sys.executable, "-m", "gate", "scan", "models:/mlp-pickled/1", "--tracking-uri", registry["uri"],
           "--format", "json"]
    for extra in ([], ["--allow-pickle"]):
        proc = subprocess.run(cli + extra, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        alphas = {row["name"]: row["alpha"] for row in json.loads(proc.stdout)["layers"]}
        assert sorted(alphas) == ["0", "2"]
        for name in ("0", "2"):
            assert alphas[name] == pytest.approx(registry["expected"].loc[name], rel=1e-12)


def test_unknown_model_is_a_clear_error(registry):
    with pytest.raises(gate.errors.GateInputError, match="models:/does-not-exist/1"):
        gate.scan("models:/does-not-exist/1", tracking_uri=registry["uri"])


def test_tracking_uri_is_used_without_changing_the_process_default(registry, tmp_path):
    """``tracking_uri=`` reaches the download only: a notebook's or worker's own MLflow settings stay."""
    import mlflow

    elsewhere = (tmp_path / "elsewhere").as_uri()
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(elsewhere)
    mlflow.set_registry_uri(elsewhere)
    try:
        result = gate.scan("models:/mlp@champion", device="cpu", tracking_uri=registry["uri"])
        assert list(result.layers["name"]) == ["0", "2"]
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (elsewhere, elsewhere)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


@pytest.mark.slow
def test_transformers_flavor_model_is_read_from_its_weight_files(registry, minilm_dir):
    """mlflow.transformers stores save_pretrained output (safetensors) inside the MLflow model: the
    registered version must give the same 39 layers and alphas as the Hugging Face folder itself."""
    import mlflow
    import mlflow.transformers
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(minilm_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run():
            mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="hf",
                                          task="feature-extraction", registered_model_name="minilm-hf",
                                          pip_requirements=["transformers", "torch"])  # no inference: offline
    from_registry = gate.scan("models:/minilm-hf/1", device="cpu", benford=False, tracking_uri=registry["uri"])
    direct = gate.scan(minilm_dir, device="cpu", benford=False)
    ours = from_registry.layers[from_registry.layers["status"] == "ok"].set_index("name")["alpha"]
    expected = direct.layers[direct.layers["status"] == "ok"].set_index("name")["alpha"]
    assert len(ours) == 39
    assert sorted(ours.index) == sorted(expected.index)
    np.testing.assert_allclose(ours.loc[expected.index], expected, rtol=1e-12)
