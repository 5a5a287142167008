"""A model registry as a team ran it before weightgate: run by MLflow 2.x's own Python (its own
virtualenv, see tests/test_adoption.py) against an MLflow 2.x server, with each flavor's defaults
of that release.

- ``ranker``: mlflow.pytorch models, which 2.x saves as a whole-model pickle (``data/model.pth``,
  ``torch.save(model)`` with cloudpickle: this script's class is pickled by value, as a notebook's
  would be). The layers hold two trained matrices of all-MiniLM-L6-v2. v1 healthy (Staging),
  v2 with a NaN weight (Production), v3 healthy (never promoted).
- ``churn``: an mlflow.sklearn MLPClassifier trained on scikit-learn's digits (cloudpickled
  ``model.pkl``), holding the alias ``champion``.
- ``encoder``: all-MiniLM-L6-v2 itself through mlflow.transformers (``save_pretrained`` files:
  safetensors), in Production with the alias ``prod``.

Usage: ``python mlflow2_registry.py TRACKING_URI MINILM_DIR OUT_JSON``; OUT_JSON lists every
version with its stage and aliases as the 2.x server reports them.
"""

from __future__ import annotations

import json
import sys
import warnings

import mlflow
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file


class Ranker(torch.nn.Module):
    """Two 384 x 384 layers; a class of this script, so cloudpickle stores it by value."""

    def __init__(self, query: torch.Tensor, output: torch.Tensor) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(384, 384)
        self.fc2 = torch.nn.Linear(384, 384)
        with torch.no_grad():
            self.fc1.weight.copy_(query)
            self.fc2.weight.copy_(output)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def log_rankers(minilm_dir: str) -> None:
    weights = load_file(f"{minilm_dir}/model.safetensors")
    query = weights["encoder.layer.0.attention.self.query.weight"]
    output = weights["encoder.layer.0.attention.output.dense.weight"]
    broken = query.clone()
    broken[3, 3] = float("nan")
    for model in (Ranker(query, output), Ranker(broken, output), Ranker(query, output)):
        with mlflow.start_run():
            mlflow.pytorch.log_model(model, "model", registered_model_name="ranker", pip_requirements=["torch"])


def log_churn() -> None:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    classifier = MLPClassifier(hidden_layer_sizes=(128,), max_iter=200, random_state=0).fit(digits.data, digits.target)
    with mlflow.start_run():
        mlflow.sklearn.log_model(classifier, "model", registered_model_name="churn", pip_requirements=["scikit-learn"])


def log_encoder(minilm_dir: str) -> None:
    from transformers import AutoModel, AutoTokenizer

    components = {"model": AutoModel.from_pretrained(minilm_dir), "tokenizer": AutoTokenizer.from_pretrained(minilm_dir)}
    with mlflow.start_run():
        mlflow.transformers.log_model(components, "model", task="feature-extraction", registered_model_name="encoder",
                                      pip_requirements=["transformers", "torch"])  # no inference: offline


def main(tracking_uri: str, minilm_dir: str, out_json: str) -> None:
    mlflow.set_tracking_uri(tracking_uri)
    warnings.simplefilter("ignore")
    log_rankers(minilm_dir)
    log_churn()
    log_encoder(minilm_dir)
    client = MlflowClient()
    client.transition_model_version_stage("ranker", "1", "Staging")
    client.transition_model_version_stage("ranker", "2", "Production")
    client.transition_model_version_stage("encoder", "1", "Production")
    client.set_registered_model_alias("churn", "champion", "1")
    client.set_registered_model_alias("encoder", "prod", "1")
    # MLflow 2's version search leaves aliases out: each version is read on its own.
    found = [client.get_model_version(v.name, v.version) for v in client.search_model_versions()]
    versions = [{"name": v.name, "version": int(v.version), "stage": v.current_stage, "source": v.source,
                 "aliases": sorted(v.aliases)} for v in found]
    with open(out_json, "w") as out:
        json.dump({"mlflow": mlflow.__version__, "versions": versions}, out, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
