"""scikit-learn estimators in skops files (``skops.io.dump``, mlflow.sklearn's default format), read from
``schema.json`` and the ``.npy`` members without skops' loader: the same rows and numbers as the
estimator's own ``coefs_`` (numpy float64 eigenvalues), the pickled reader's names inside a pipeline,
a clear refusal for estimators without weight matrices, and hostile or broken files refused without
importing anything they name."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import skops.io
import torch

import gate
from gate.errors import GateInputError


@pytest.fixture(scope="module")
def digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged after 30 epochs: its weights are what matter here
        return MLPClassifier(hidden_layer_sizes=(96, 48), max_iter=30, random_state=0).fit(x / 16, y)


def scan(source, **options):
    return gate.scan(source, device="cpu", **options)


def assert_reads_the_coefs(result, mlp, prefix: str = "") -> None:
    """One dense row per coefs_[i], [in, out], whose spectrum is numpy's float64 one of that matrix."""
    layers = result.layers.set_index("name")
    assert list(layers.index) == [f"{prefix}coefs_.{i}" for i in range(len(mlp.coefs_))]
    assert list(layers["shape"]) == [list(c.shape) for c in mlp.coefs_]
    assert set(layers["layer_type"]) == {"dense"} and set(layers["status"]) == {"ok"}
    for i, coef in enumerate(mlp.coefs_):
        evals = np.sort(np.linalg.eigvalsh(coef.T @ coef if coef.shape[0] >= coef.shape[1] else coef @ coef.T))
        np.testing.assert_allclose(result.spectra[f"{prefix}coefs_.{i}"], np.clip(evals, 0, None),
                                   rtol=0, atol=1e-9 * evals.max())


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_skops_dump_of_an_mlp(tmp_path, digits_mlp):
    path = tmp_path / "mlp.skops"
    skops.io.dump(digits_mlp, path)
    result = scan(path, keep_spectra=True)
    assert_reads_the_coefs(result, digits_mlp)
    as_state_dict = scan({f"coefs_.{i}": torch.from_numpy(c) for i, c in enumerate(digits_mlp.coefs_)}
                         | {f"intercepts_.{i}": torch.from_numpy(b) for i, b in enumerate(digits_mlp.intercepts_)})
    assert result.weights_sha256 == as_state_dict.weights_sha256  # the intercepts are read too
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "estimator.skops").write_bytes(path.read_bytes())
    assert scan(tmp_path / "folder").weights_sha256 == result.weights_sha256  # a folder's .skops file


def test_mlp_inside_a_pipeline_is_named_by_its_path(tmp_path, digits_mlp):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    path = tmp_path / "pipeline.skops"
    skops.io.dump(make_pipeline(StandardScaler(), digits_mlp), path)
    assert_reads_the_coefs(scan(path, keep_spectra=True), digits_mlp, prefix="steps.1.1.")


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_mlflow_sklearn_default_format_is_read(tmp_path, digits_mlp):
    """mlflow.sklearn.save_model writes skops unless told otherwise (MLflow 3); the MLmodel folder
    scans like the estimator itself, and the same as its cloudpickle twin."""
    import mlflow.sklearn

    optimizer = "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"  # skops asks to trust it
    mlflow.sklearn.save_model(digits_mlp, tmp_path / "skops", skops_trusted_types=[optimizer])
    assert (tmp_path / "skops" / "model.skops").is_file()
    result = scan(tmp_path / "skops", keep_spectra=True)
    assert_reads_the_coefs(result, digits_mlp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(digits_mlp, tmp_path / "cloudpickle", serialization_format="cloudpickle")
    twin = scan(tmp_path / "cloudpickle")
    assert result.weights_sha256 == twin.weights_sha256
    np.testing.assert_allclose(result.layers["alpha"].to_numpy(float), twin.layers["alpha"].to_numpy(float),
                               rtol=0, atol=1e-12)


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_estimator_without_weight_matrices_is_refused_naming_it(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(np.eye(6), np.arange(6) % 2)
    path = tmp_path / "forest.skops"
    skops.io.dump(forest, path)
    proc = subprocess.run([sys.executable, "-m", "gate", "scan", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert f"{path}: sklearn.ensemble._forest.RandomForestClassifier has no weight matrices weightgate reads" \
        in proc.stderr
    assert "Traceback" not in proc.stderr


def _write_skops(path, schema: dict, arrays: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
        for name, array in arrays.items():
            with archive.open(name, "w") as member:
                np.save(member, array, allow_pickle=True)


def _node(cls: str, module: str, loader: str, **fields) -> dict:
    return {"__class__": cls, "__module__": module, "__loader__": loader, **fields}


def test_hostile_and_broken_files_are_refused_without_importing_anything(tmp_path):
    """The classes a schema names are never imported: an MLP of a module that does not exist is read,
    an object array (which only pickle could read) is skipped with its reason, and missing parts are
    errors naming the file."""
    canary = "weightgate_canary_never_imported"
    coefs = _node("list", "builtins", "ListNode", content=[
        _node("ndarray", "numpy", "NdArrayNode", type="numpy", file="w0.npy"),
        _node("ndarray", "numpy", "NdArrayNode", type="numpy", file="w1.npy")])
    state = _node("dict", "builtins", "DictNode", content={"coefs_": coefs, "hook": _node(
        "system", "os", "FunctionNode", content={"module_path": "os", "function": "system"})})
    schema = _node("Boom", canary, "ObjectNode", content=state, protocol=2)
    weights = np.random.default_rng(0).standard_normal((64, 32))
    _write_skops(tmp_path / "hostile.skops", schema, {"w0.npy": weights, "w1.npy": np.array([object()] * 3)})
    result = scan(tmp_path / "hostile.skops")
    assert canary not in sys.modules
    rows = result.layers.set_index("name")
    assert rows.loc["coefs_.0", "status"] == "ok" and rows.loc["coefs_.0", "shape"] == [64, 32]
    assert rows.loc["coefs_.1", "status"] == "skipped"
    assert rows.loc["coefs_.1", "reason"] == "coefs_.1 is stored with dtype object, not as a float array"

    _write_skops(tmp_path / "missing.skops", schema, {"w0.npy": weights})
    with pytest.raises(GateInputError, match="names w1.npy, which is not in the archive"):
        scan(tmp_path / "missing.skops")
    _write_skops(tmp_path / "claims.skops", schema, {"w1.npy": weights})
    with zipfile.ZipFile(tmp_path / "claims.skops", "a") as archive, archive.open("w0.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (100_000, 100_000)})  # 80 GB claimed, none stored
    with pytest.raises(GateInputError, match=r"w0.npy declares a \[100000, 100000\] float64 array but holds"):
        scan(tmp_path / "claims.skops")
    with zipfile.ZipFile(tmp_path / "no_schema.skops", "w") as archive:
        archive.writestr("w0.npy", b"")
    with pytest.raises(GateInputError, match="not a skops file"):
        scan(tmp_path / "no_schema.skops")
    (tmp_path / "truncated.skops").write_bytes((tmp_path / "hostile.skops").read_bytes()[:100])
    with pytest.raises(GateInputError, match="truncated.skops: cannot read this skops file"):
        scan(tmp_path / "truncated.skops")
    with zipfile.ZipFile(tmp_path / "deep.skops", "w") as archive:
        archive.writestr("schema.json", "[" * 100_000 + "]" * 100_000)  # nested past json's recursion limit
    with pytest.raises(GateInputError, match="deep.skops: cannot read this skops file"):
        scan(tmp_path / "deep.skops")
