"""Pickled models read without running them give the numbers of their state dict.

Whole models saved with ``torch.save(model)`` (a transformers BERT, a CNN with an LSTM, a class
pickled by value whose module no longer exists, as mlflow.pytorch's pickle format writes it), a
TorchScript archive, a legacy non-zip file and a plainly pickled module: each layer table (names,
layer kinds, statuses, alphas to 1e-9) and fingerprint equal those of the same model's state dict
saved as safetensors. scikit-learn MLPs (pickle, cloudpickle, joblib, mlflow.sklearn) give one dense
row per ``coefs_[i]``, checked against numpy's float64 eigenvalues and the powerlaw package. Training
checkpoints whose state dict sits beside OmegaConf configs and custom optimizer objects are read.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import types
import warnings
from pathlib import Path

import cloudpickle
import joblib
import numpy as np
import powerlaw
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import gate
from gate.errors import GateInputError, UnsafePickleError

COMPARED = ["name", "layer_type", "tensor", "status", "N", "M"]


def scan(source, **options):
    return gate.scan(source, device="cpu", **options)


def reference_scan(state_dict: dict[str, torch.Tensor], directory: Path):
    path = directory / "state_dict.safetensors"
    save_file({name: tensor.detach().contiguous() for name, tensor in state_dict.items()}, path)
    return scan(path)


def assert_same_numbers(got, expected) -> None:
    """Same rows (by name), kinds, statuses and alphas to 1e-9, and the same weights fingerprint."""
    a = got.layers.sort_values("name").reset_index(drop=True)
    b = expected.layers.sort_values("name").reset_index(drop=True)
    assert a[COMPARED].equals(b[COMPARED]), a[COMPARED].compare(b[COMPARED])
    np.testing.assert_allclose(a["alpha"].to_numpy(float), b["alpha"].to_numpy(float), rtol=0, atol=1e-9)
    assert (a["status"] == "ok").sum() >= 1
    assert got.weights_sha256 == expected.weights_sha256


class CnnLstm(nn.Module):
    """Convolutions over an image, an LSTM over its rows, a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1))
        self.lstm = nn.LSTM(32 * 8, 48, num_layers=2, batch_first=True)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.features(x).permute(0, 2, 1, 3).flatten(2)  # [batch, height, channels*width]
        out, _ = self.lstm(rows)
        return self.head(out[:, -1])


@pytest.fixture(scope="module")
def cnn_lstm() -> CnnLstm:
    torch.manual_seed(3)
    model = CnnLstm()
    with torch.no_grad():
        model(torch.randn(4, 3, 8, 8))  # BatchNorm's running statistics move off their initial values
    return model.eval()


def test_whole_bert_reads_like_its_state_dict(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    model = BertModel(config)
    torch.save(model, tmp_path / "bert.pt")
    got = scan(tmp_path / "bert.pt")
    assert_same_numbers(got, reference_scan(model.state_dict(), tmp_path))
    layers = got.layers.set_index("name")
    assert layers.loc["embeddings.word_embeddings", "layer_type"] == "embedding"
    assert layers.loc["encoder.layer.0.attention.self.query", "layer_type"] == "dense"


@pytest.mark.parametrize("format_", ["zip", "legacy", "plain pickle"])
def test_whole_cnn_lstm_reads_like_its_state_dict(tmp_path, cnn_lstm, format_):
    path = tmp_path / ("model.pkl" if format_ == "plain pickle" else "model.pt")
    if format_ == "plain pickle":  # storages then travel as legacy torch files inside the pickle's bytes
        path.write_bytes(pickle.dumps(cnn_lstm, protocol=2))
    else:
        torch.save(cnn_lstm, path, _use_new_zipfile_serialization=format_ == "zip")
    got = scan(path)
    assert_same_numbers(got, reference_scan(cnn_lstm.state_dict(), tmp_path))
    layers = got.layers.set_index("name")
    assert layers.loc["features.3", "layer_type"] == "conv2d"
    assert layers.loc["lstm.weight_hh_l1.i", "layer_type"] == "recurrent"


def test_torchscript_archive_reads_like_its_state_dict(tmp_path, cnn_lstm):
    scripted = torch.jit.script(cnn_lstm)
    torch.jit.save(scripted, tmp_path / "scripted.pt")
    assert_same_numbers(scan(tmp_path / "scripted.pt"), reference_scan(scripted.state_dict(), tmp_path))


def _throwaway_module(name: str) -> types.ModuleType:
    """A notebook's ``__main__``: a model class in a module that will not exist when the file is read."""
    module = types.ModuleType(name)
    exec("import torch\n"
         "class NotebookNet(torch.nn.Module):\n"
         "    def __init__(self):\n"
         "        super().__init__()\n"
         "        self.body = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.Tanh(), torch.nn.Linear(64, 32))\n"
         "        self.register_buffer('scale', torch.linspace(0.5, 1.5, 32))\n"
         "        self.register_buffer('cache', torch.zeros(8), persistent=False)\n"
         "    def forward(self, x):\n"
         "        return self.body(x) * self.scale\n", module.__dict__)
    return module


@pytest.mark.slow
def test_class_pickled_by_value_reads_after_its_module_is_gone(tmp_path):
    """mlflow.pytorch's pickle format (torch.save with cloudpickle) of a class defined in a notebook,
    scanned by a fresh weightgate process in which that class does not exist."""
    import mlflow.pytorch

    module = _throwaway_module("notebook_cell_7")
    sys.modules[module.__name__] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        torch.manual_seed(1)
        model = module.NotebookNet()
        torch.save(model, tmp_path / "notebook.pt", pickle_module=cloudpickle)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlflow.pytorch.save_model(model, tmp_path / "mlflow_model", serialization_format="pickle")
        state_dict = model.state_dict()
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[module.__name__]
    assert "cache" not in state_dict  # non-persistent: not a weight of the state dict, nor of the scan
    expected = reference_scan(state_dict, tmp_path)
    for source in (tmp_path / "notebook.pt", tmp_path / "mlflow_model"):
        proc = subprocess.run([sys.executable, "-m", "gate", "scan", str(source), "--format", "json"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        rows = {row["name"]: row for row in json.loads(proc.stdout)["layers"]}
        assert sorted(rows) == sorted(expected.layers["name"])
        for _, row in expected.layers.iterrows():
            assert rows[row["name"]]["layer_type"] == row["layer_type"]
            assert rows[row["name"]]["alpha"] == pytest.approx(row["alpha"], abs=1e-9, nan_ok=True)
        assert json.loads(proc.stdout)["weights_sha256"] == expected.weights_sha256


# --- scikit-learn ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged after 30 epochs: its weights are what matter here
        return MLPClassifier(hidden_layer_sizes=(96, 48), max_iter=30, random_state=0).fit(x / 16, y)


def reference_alpha(matrix: np.ndarray, xmin: float) -> tuple[np.ndarray, float]:
    """float64 eigenvalues of W^T W (numpy) and the powerlaw package's alpha at the scan's xmin."""
    evals = np.sort(np.clip(np.linalg.eigvalsh(matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1]
                                               else matrix @ matrix.T), 0, None))
    fit = powerlaw.Power_Law(xmin=xmin * (1 - 1e-9), data=evals[evals > 1e-5], parameter_ranges={"alpha": [1, 50]},
                             verbose=False)
    return evals, fit.alpha


def save_estimator(estimator, path: Path, how: str | int) -> Path:
    if str(how).startswith("joblib"):  # "joblib", or "joblib-<compressor>"
        joblib.dump(estimator, path, compress=(how.split("-")[1], 3) if "-" in how else 0)
    elif how == "cloudpickle":
        path.write_bytes(cloudpickle.dumps(estimator))  # protocol 5: arrays in-band through _frombuffer
    else:
        path.write_bytes(pickle.dumps(estimator, protocol=how))  # protocols 2-4: arrays through _reconstruct
    return path


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
@pytest.mark.parametrize("how", ["joblib", "joblib-zlib", "joblib-xz", "cloudpickle", 2, 4])
def test_sklearn_mlp_coefs_are_dense_rows(tmp_path, digits_mlp, how):
    path = save_estimator(digits_mlp, tmp_path / ("mlp.joblib" if str(how).startswith("joblib") else "model.pkl"), how)
    result = scan(path, keep_spectra=True)
    layers = result.layers.set_index("name")
    assert list(layers.index) == ["coefs_.0", "coefs_.1", "coefs_.2"]
    assert list(layers["shape"]) == [[64, 96], [96, 48], [48, 10]]  # [in, out], as scikit-learn stores them
    assert set(layers["layer_type"]) == {"dense"}
    as_state_dict = scan({f"coefs_.{i}": torch.from_numpy(c) for i, c in enumerate(digits_mlp.coefs_)}
                         | {f"intercepts_.{i}": torch.from_numpy(b) for i, b in enumerate(digits_mlp.intercepts_)})
    assert_same_numbers(result, as_state_dict)
    row = layers.loc["coefs_.1"]
    evals, alpha = reference_alpha(digits_mlp.coefs_[1], row["xmin"])
    np.testing.assert_allclose(result.spectra["coefs_.1"], evals, rtol=0, atol=1e-9 * evals.max())
    assert row["alpha"] == pytest.approx(alpha, abs=1e-6)


@pytest.mark.slow
def test_sklearn_pipeline_and_mlflow_model(tmp_path, digits_mlp):
    import mlflow.sklearn
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), digits_mlp)
    names = scan(save_estimator(pipeline, tmp_path / "pipeline.pkl", 4)).layers["name"].tolist()
    assert names == ["steps.1.1.coefs_.0", "steps.1.1.coefs_.1", "steps.1.1.coefs_.2"]
    expected = scan(save_estimator(digits_mlp, tmp_path / "model.pkl", 4))
    for serialization in ("cloudpickle", "pickle"):
        mlflow.sklearn.save_model(digits_mlp, tmp_path / serialization, serialization_format=serialization)
        assert_same_numbers(scan(tmp_path / serialization), expected)


def test_estimator_without_weight_matrices_is_a_clear_error(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(np.eye(6), np.arange(6) % 2)
    path = save_estimator(forest, tmp_path / "forest.joblib", "joblib")
    with pytest.raises(GateInputError, match="sklearn.ensemble._forest.RandomForestClassifier has no weight matrices"):
        scan(path)
    proc = subprocess.run([sys.executable, "-m", "gate", "scan", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "RandomForestClassifier has no weight matrices weightgate reads" in proc.stderr


# --- training checkpoints ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class OptimConfig:
    """A Hydra-style structured config (OmegaConf builds the DictConfig from this dataclass)."""

    lr: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)


@dataclasses.dataclass
class TrainConfig:
    width: int = 48
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)


class WarmupPolicy:
    """A custom object kept in the optimizer's param group (saved in the checkpoint's optimizer states)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps


@pytest.mark.slow
def test_lightning_checkpoint_with_omegaconf_and_custom_optimizer_objects(tmp_path):
    """A real Trainer.save_checkpoint: hyper_parameters an OmegaConf DictConfig (from a structured
    config, as Hydra makes them), a custom object in the optimizer state, the config again beside it."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    config = OmegaConf.structured(TrainConfig)

    class Module(pl.LightningModule):
        def __init__(self, cfg) -> None:
            super().__init__()
            self.save_hyperparameters(cfg)
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(24, cfg.width), nn.ReLU(), nn.Linear(cfg.width, 12))

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.optim.lr)
            optimizer.param_groups[0]["warmup"] = WarmupPolicy(10)
            return optimizer

        def on_save_checkpoint(self, checkpoint) -> None:
            checkpoint["hydra_config"] = config

    module = Module(config)
    x = torch.randn(32, 24, generator=torch.Generator().manual_seed(2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :12].argmax(1)), batch_size=8)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, loader)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    with pytest.raises(pickle.UnpicklingError):  # what the gate refused before: weights_only rejects it
        torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert_same_numbers(scan(tmp_path / "last.ckpt"), reference_scan(module.state_dict(), tmp_path))

    no_weights = tmp_path / "config_only.ckpt"  # the refusal that remains: objects, and no weights among them
    torch.save({"hyper_parameters": config, "optimizer": WarmupPolicy(3)}, no_weights)
    with pytest.raises(UnsafePickleError) as refused:
        scan(no_weights)
    message = str(refused.value)
    assert "found no weights" in message and "omegaconf.dictconfig.DictConfig" in message
    assert "whole model" not in message


def test_tensor_the_reader_does_not_rebuild_is_a_skipped_row(tmp_path):
    """A quantized tensor (torch._utils._rebuild_qtensor, outside the allowlist) beside a float one: the
    float one is analysed, the quantized one is a skipped row saying how it was stored, not dropped."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantize_per_tensor
        quantized = torch.quantize_per_tensor(torch.randn(64, 32), 0.1, 0, torch.qint8)
    torch.save({"dense": torch.randn(64, 32), "quantized": quantized}, tmp_path / "mixed.pt")
    layers = scan(tmp_path / "mixed.pt").layers.set_index("name")
    assert layers.loc["dense", "status"] == "ok"
    assert layers.loc["quantized", "status"] == "skipped"
    assert "torch._utils._rebuild_qtensor" in layers.loc["quantized", "reason"]
