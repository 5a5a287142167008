"""MLflow model folders whose flavor weightgate cannot read, or whose weights are elsewhere: each is refused
with a message naming the flavors and what would make the model readable (exit 2, no traceback); a
pyfunc model that carries its weights as artifacts is read from them. tests/test_flavors.py runs every
flavor MLflow's own log_model writes through a real server and worker."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import gate
from gate.errors import GateInputError


def mlmodel(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(text)
    return folder


def refusal(source: Path) -> str:
    with pytest.raises(GateInputError) as refused:
        gate.scan(source, device="cpu")
    return str(refused.value)


def test_a_flavor_weightgate_does_not_read_is_named(tmp_path):
    folder = mlmodel(tmp_path / "xgb", "flavors:\n  python_function:\n    loader_module: mlflow.xgboost\n"
                                       "  xgboost:\n    data: model.xgb\n")
    (folder / "model.xgb").write_bytes(b"binf")
    proc = subprocess.run([sys.executable, "-m", "gate", "scan", str(folder)], capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "Traceback" not in proc.stderr
    assert f"{folder}: an MLflow model with the flavors python_function, xgboost, which weightgate does not read" \
        in proc.stderr
    assert "pytorch, transformers, sentence_transformers, onnx, keras, sklearn" in proc.stderr
    assert "export it to ONNX (mlflow.onnx.log_model)" in proc.stderr


def test_transformers_logged_as_a_hub_reference_says_so(tmp_path):
    folder = mlmodel(tmp_path / "ref", "flavors:\n  transformers:\n    source_model_name: org/model\n"
                                       "    source_model_revision: 0123abc\n    task: fill-mask\n")
    message = refusal(folder)
    assert message.startswith(f"{folder}: an MLflow model with the flavor transformers logged with "
                              "save_pretrained=False")
    assert "org/model@0123abc" in message and "save_pretrained=True" in message


def test_missing_weights_folder_names_it(tmp_path):
    folder = mlmodel(tmp_path / "torch", "flavors:\n  pytorch:\n    model_data: data\n    pytorch_version: '2.5'\n")
    assert refusal(folder) == (f"{folder}: an MLflow model with the flavor pytorch, but its weights folder data/ "
                               "is not there; register the complete model directory that log_model wrote")


def test_mlmodel_that_is_not_a_mapping_of_flavors(tmp_path):
    folder = mlmodel(tmp_path / "odd", "- just\n- a list\n")
    assert refusal(folder) == f"{folder / 'MLmodel'}: not an MLmodel file (no 'flavors' mapping)"
    folder = mlmodel(tmp_path / "broken", "flavors: [unclosed\n")
    assert refusal(folder).startswith(f"{folder / 'MLmodel'}: unreadable MLmodel file")


def test_pyfunc_reads_its_weight_artifacts_and_refuses_without_them(tmp_path):
    import mlflow.pyfunc

    torch.manual_seed(0)
    matrix = torch.randn(96, 48, dtype=torch.float64)
    save_file({"encoder.weight": matrix}, str(tmp_path / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice to add type hints to predict

        class Wrapper(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input):
                return model_input

        mlflow.pyfunc.save_model(str(tmp_path / "with"), python_model=Wrapper(), pip_requirements=["mlflow"],
                                 artifacts={"weights": str(tmp_path / "model.safetensors")})
        mlflow.pyfunc.save_model(str(tmp_path / "without"), python_model=Wrapper(), pip_requirements=["mlflow"])
    result = gate.scan(tmp_path / "with", device="cpu", keep_spectra=True)
    assert result.layers["name"].tolist() == ["encoder"]
    evals = np.linalg.eigvalsh(matrix.numpy().T @ matrix.numpy())
    np.testing.assert_allclose(np.sort(result.spectra["encoder"]), evals, rtol=0, atol=1e-9 * evals.max())
    message = refusal(tmp_path / "without")
    assert message.startswith(f"{tmp_path / 'without'}: pyfunc model with no weight files (flavor python_function, "
                              "python_model python_model.pkl): log the model with a flavor that stores its weights")
    assert "artifacts=" in message and "does not unpickle a python_model" in message
