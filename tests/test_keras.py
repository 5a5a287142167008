"""Keras models read without TensorFlow or Keras: real files written by Keras 3 (torch backend) as
``.keras``, legacy ``.h5``, ``.weights.h5`` and an ``mlflow.keras`` model directory, scanned against a
torch twin holding the same weights, copied in by hand (transposed, permuted and gate-reordered here,
not by the reader); the reader imports neither Keras nor TensorFlow and runs nothing from config.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import gate
from gate.errors import GateInputError
from gate.layers.kinds import NON_MATRIX_KINDS
from gate.sources.keras.source import KerasSource

REPO = Path(__file__).resolve().parent.parent
FORMATS = ("model.keras", "model.h5", "mlflow_model")


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory) -> Path:
    """Keras and mlflow.keras write the files in a subprocess (about a minute): tests using it are slow."""
    out = tmp_path_factory.mktemp("keras")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    subprocess.run([sys.executable, str(REPO / "tests" / "keras_writer.py"), str(out)], check=True, env=env,
                   timeout=900)
    return out


@pytest.fixture(scope="module")
def weights(keras_dir) -> dict[str, np.ndarray]:
    with np.load(keras_dir / "weights.npz") as data:
        return {key: data[key] for key in data.files}


def _gates(kernel: np.ndarray, keras_to_torch: tuple[int, ...]) -> np.ndarray:
    """A Keras [in, G*units] kernel as torch's [G*units, in] with the gate blocks in torch's order."""
    blocks = np.split(kernel, len(keras_to_torch), axis=-1)
    return np.concatenate([blocks[k] for k in keras_to_torch], axis=-1).T


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    """[kh, kw, in, m] -> torch's grouped Conv2d weight [in*m, 1, kh, kw], filter j of channel c at c*m + j."""
    kh, kw, channels, multiplier = kernel.shape
    out = np.empty((channels * multiplier, 1, kh, kw), kernel.dtype)
    for c in range(channels):
        for j in range(multiplier):
            out[c * multiplier + j, 0] = kernel[:, :, c, j]
    return out


LSTM_ORDER, GRU_ORDER = (0, 1, 2, 3), (1, 0, 2)  # Keras i,f,c,o = torch i,f,g,o; Keras z,r,h -> torch r,z,n


def twin_values(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Keras variables as the torch twin's state dict: a single Keras recurrent bias is torch's
    ``bias_ih`` with a zero ``bias_hh`` (the same sum); a GRU's two bias rows (reset_after, Keras 3's
    default and torch's GRU formula) are ``bias_ih`` and ``bias_hh``."""
    def gru_bias(row: int) -> np.ndarray:
        return _gates(w["gru/gru_cell/bias"][row][None, :], GRU_ORDER)[:, 0]

    return {
        "emb.weight": w["emb/embeddings"],
        "c1.weight": w["c1/kernel"].transpose(2, 1, 0), "c1.bias": w["c1/bias"],
        "td.weight": w["td/dense/kernel"].T, "td.bias": w["td/dense/bias"],
        "c2.weight": w["c2/kernel"].transpose(3, 2, 0, 1), "c2.bias": w["c2/bias"],
        "lstm.weight_ih_l0": _gates(w["lstm/lstm_cell/kernel"], LSTM_ORDER),
        "lstm.weight_hh_l0": _gates(w["lstm/lstm_cell/recurrent_kernel"], LSTM_ORDER),
        "lstm.bias_ih_l0": w["lstm/lstm_cell/bias"], "lstm.bias_hh_l0": np.zeros(80, np.float32),
        "bn.weight": w["bn/gamma"], "bn.bias": w["bn/beta"],
        "bn.running_mean": w["bn/moving_mean"], "bn.running_var": w["bn/moving_variance"],
        "bi.weight_ih_l0": _gates(w["bi/forward_lstm/lstm_cell/kernel"], LSTM_ORDER),
        "bi.weight_hh_l0": _gates(w["bi/forward_lstm/lstm_cell/recurrent_kernel"], LSTM_ORDER),
        "bi.bias_ih_l0": w["bi/forward_lstm/lstm_cell/bias"], "bi.bias_hh_l0": np.zeros(48, np.float32),
        "bi.weight_ih_l0_reverse": _gates(w["bi/backward_lstm/lstm_cell/kernel"], LSTM_ORDER),
        "bi.weight_hh_l0_reverse": _gates(w["bi/backward_lstm/lstm_cell/recurrent_kernel"], LSTM_ORDER),
        "bi.bias_ih_l0_reverse": w["bi/backward_lstm/lstm_cell/bias"], "bi.bias_hh_l0_reverse": np.zeros(48, np.float32),
        "dw.weight": _depthwise(w["dw/kernel"]), "dw.bias": w["dw/bias"],
        "rnn.weight_ih_l0": w["rnn/simple_rnn_cell/kernel"].T,
        "rnn.weight_hh_l0": w["rnn/simple_rnn_cell/recurrent_kernel"].T,
        "rnn.bias_ih_l0": w["rnn/simple_rnn_cell/bias"], "rnn.bias_hh_l0": np.zeros(16, np.float32),
        "sep.depthwise.weight": _depthwise(w["sep/depthwise_kernel"]),
        "sep.pointwise.weight": w["sep/pointwise_kernel"].transpose(3, 2, 0, 1), "sep.pointwise.bias": w["sep/bias"],
        "gru.weight_ih_l0": _gates(w["gru/gru_cell/kernel"], GRU_ORDER),
        "gru.weight_hh_l0": _gates(w["gru/gru_cell/recurrent_kernel"], GRU_ORDER),
        "gru.bias_ih_l0": gru_bias(0), "gru.bias_hh_l0": gru_bias(1),
        "ct.weight": w["ct/kernel"].transpose(3, 2, 0, 1), "ct.bias": w["ct/bias"],
        "c3.weight": w["c3/kernel"].transpose(4, 3, 0, 1, 2), "c3.bias": w["c3/bias"],
        "block.inner_a.weight": w["block/inner_a/kernel"].T, "block.inner_a.bias": w["block/inner_a/bias"],
        "block.inner_b.weight": w["block/inner_b/kernel"].T, "block.inner_b.bias": w["block/inner_b/bias"],
        "head.weight": w["head/kernel"].T, "head.bias": w["head/bias"],
        "ln.weight": w["ln/gamma"], "ln.bias": w["ln/beta"],
    }


def torch_twin(w: dict[str, np.ndarray]) -> nn.Module:
    """The writer's Keras model as torch modules, registered in Keras's layer order, with its weights."""
    twin = nn.Module()
    twin.emb = nn.Embedding(200, 32)
    twin.c1 = nn.Conv1d(32, 24, 3)
    twin.td = nn.Linear(24, 24)
    twin.c2 = nn.Conv2d(8, 16, 3)
    twin.lstm = nn.LSTM(24, 20, batch_first=True)
    twin.bn = nn.BatchNorm2d(16)
    twin.bi = nn.LSTM(20, 12, batch_first=True, bidirectional=True)
    twin.dw = nn.Conv2d(16, 32, 3, groups=16)
    twin.rnn = nn.RNN(24, 16, batch_first=True)
    twin.sep = nn.Module()
    twin.sep.depthwise = nn.Conv2d(32, 32, 3, groups=32, bias=False)
    twin.sep.pointwise = nn.Conv2d(32, 24, 1)
    twin.gru = nn.GRU(16, 16, batch_first=True)
    twin.ct = nn.ConvTranspose2d(24, 12, 3)
    twin.c3 = nn.Conv3d(4, 8, 2)
    twin.block = nn.Sequential(OrderedDict(inner_a=nn.Linear(16, 48), inner_b=nn.Linear(48, 32)))
    twin.head = nn.Linear(52, 10)
    twin.ln = nn.LayerNorm(10)
    values = twin_values(w)
    state = twin.state_dict()
    with torch.no_grad():
        for name, value in values.items():
            assert state[name].shape == value.shape, name
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return twin


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)


# Layer -> the twin's computation on a Keras-shaped input (batch first, channels last).
TWIN_FORWARD = {
    "c1": lambda t, x: _channels_last(nn.functional.conv1d(_channels_first(x), t.c1.weight, t.c1.bias, padding=1)),
    "td": lambda t, x: t.td(x),
    "lstm": lambda t, x: t.lstm(x)[0],
    "bi": lambda t, x: t.bi(x)[0],
    "rnn": lambda t, x: t.rnn(x)[0],
    "gru": lambda t, x: t.gru(x)[0][:, -1],
    "c2": lambda t, x: _channels_last(t.c2(_channels_first(x))),
    "dw": lambda t, x: _channels_last(t.dw(_channels_first(x))),
    "sep": lambda t, x: _channels_last(t.sep.pointwise(t.sep.depthwise(_channels_first(x)))),
    "ct": lambda t, x: _channels_last(t.ct(_channels_first(x))),
    "c3": lambda t, x: _channels_last(t.c3(_channels_first(x))),
    "block": lambda t, x: t.block.inner_b(torch.relu(t.block.inner_a(x))),
    "head": lambda t, x: t.head(x),
}


@pytest.mark.slow
def test_the_twin_computes_what_keras_computes(keras_dir, weights):
    """The twin's hand conversions (transposes, depthwise channel order, gate order) are right: each of
    its layers gives Keras's own output on the writer's probe inputs."""
    twin = torch_twin(weights).eval()
    with np.load(keras_dir / "probes.npz") as probes, torch.no_grad():
        for layer, forward in TWIN_FORWARD.items():
            got = forward(twin, torch.from_numpy(probes[f"{layer}/in"])).numpy()
            np.testing.assert_allclose(got, probes[f"{layer}/out"], rtol=1e-4, atol=1e-5, err_msg=layer)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*FORMATS, "model.weights.h5"])
def test_every_tensor_reads_as_the_twins(keras_dir, weights, name):
    """Exact values, not only spectra (which cannot see a row permutation such as a depthwise kernel's
    channel order); the twin's extra zero bias_hh of single-bias Keras cells aside."""
    expected = twin_values(weights)
    with gate.sources.open_source(keras_dir / name) as source:
        infos = [info for info in source.tensor_infos() if info.module_type != "optimizer_state"]
        for info in infos:
            assert torch.equal(source.load(info.name), torch.from_numpy(np.ascontiguousarray(expected[info.name]))), info.name
    zero_biases = {n for n in expected if n.endswith(("bias_hh_l0", "bias_hh_l0_reverse")) and not n.startswith("gru")}
    assert {info.name for info in infos} == set(expected) - zero_biases


@pytest.fixture(scope="module")
def twin_scan(weights):
    return gate.scan(torch_twin(weights), device="cpu")


def _rows(result, by_name: bool = False) -> list[tuple]:
    layers = result.layers.sort_values("name") if by_name else result.layers
    return [(row["name"], row["layer_type"], tuple(row["shape"]), row["status"]) for _, row in layers.iterrows()]


def _assert_same_scan(result, twin, by_name: bool = False) -> None:
    assert _rows(result, by_name) == _rows(twin, by_name)
    ours = result.layers.sort_values("name") if by_name else result.layers
    theirs = twin.layers.sort_values("name") if by_name else twin.layers
    np.testing.assert_allclose(ours["alpha"].to_numpy(float), theirs["alpha"].to_numpy(float), rtol=0, atol=1e-9)
    assert result.summary["mlh"] == pytest.approx(twin.summary["mlh"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS)
def test_scan_matches_the_torch_twin(keras_dir, twin_scan, name):
    result = gate.scan(keras_dir / name, device="cpu")
    _assert_same_scan(result, twin_scan)
    assert result.summary["num_analysed"] >= 20  # the comparison covers analysed layers, not just skipped ones
    kinds = set(result.layers["layer_type"])
    assert {"dense", "conv1d", "conv2d", "conv3d", "recurrent", "embedding"} <= kinds


@pytest.mark.slow
def test_bare_weights_file_reads_the_same_layers(keras_dir, twin_scan):
    """save_weights' file has no config: classes come from the group names, layer names from each
    vars group's name attribute; the order is the file's, so rows are compared by name."""
    _assert_same_scan(gate.scan(keras_dir / "model.weights.h5", device="cpu"), twin_scan, by_name=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_tensors_come_in_the_models_layer_order(keras_dir, name):
    order = json.loads((keras_dir / "layers.json").read_text())
    with KerasSource(keras_dir / name) as source:
        owners = [info.name.split(".", 1)[0] for info in source.tensor_infos() if info.module_type != "optimizer_state"]
    assert list(dict.fromkeys(owners)) == [layer for layer in order if layer in owners]


def _datasets(path: Path) -> list[str]:
    names: list[str] = []
    with h5py.File(path) as file:
        file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_every_variable_is_accounted_for(keras_dir, weights, tmp_path, name):
    """Each dataset of the file is a tensor (the GRU's [2, 3*units] bias two), and the summary counts
    each one: rows, vectors, or optimizer state (Adam: step, learning rate, and two moments per
    trainable variable; BatchNormalization's moving statistics are not trainable)."""
    path = keras_dir / name
    if name.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            archive.extract("model.weights.h5", tmp_path)
        path = tmp_path / "model.weights.h5"
    datasets = _datasets(path)
    result = gate.scan(keras_dir / name, device="cpu")
    summary = result.summary
    assert summary["num_tensors"] == len(datasets) + 1
    counted = sum(summary[f"num_{kind}"] for kind in NON_MATRIX_KINDS)
    assert summary["num_matrix_tensors"] + counted == summary["num_tensors"]
    trainable = len(weights) - 2
    assert summary["num_optimizer_state"] == 2 + 2 * trainable
    assert summary["num_vector"] == sum(1 for key, value in weights.items() if value.ndim == 1) + 2  # GRU bias rows


@pytest.mark.slow
def test_the_reader_imports_neither_keras_nor_tensorflow(keras_dir):
    script = (
        "import sys, gate\n"
        f"for name in {[str(keras_dir / name) for name in (*FORMATS, 'model.weights.h5')]!r}:\n"
        "    gate.scan(name, device='cpu')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'tf_keras'))\n"
        "print('loaded:', loaded)\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loaded: []" in run.stdout


@pytest.mark.slow
def test_config_modules_are_never_imported_or_called(keras_dir, tmp_path):
    """A config.json naming a planted module and os.system: scanning imports and calls neither, and
    the weights read exactly as from the genuine archive."""
    marker = tmp_path / "ran"
    (tmp_path / "planted_payload.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    with zipfile.ZipFile(keras_dir / "model.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    for layer in config["config"]["layers"]:
        layer["module"] = "planted_payload"
        layer["registered_name"] = "planted_payload>Layer"
    config["config"]["layers"].append({"module": "os", "class_name": "system", "registered_name": "os>system",
                                       "config": {"name": "system", "command": f"touch {marker}"}})
    config["module"], config["registered_name"] = "os", "os>system"
    members["config.json"] = json.dumps(config).encode()
    planted = tmp_path / "planted.keras"
    with zipfile.ZipFile(planted, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    script = (
        "import os, sys, gate\n"
        "def refuse(*args): raise SystemExit(f'os.system called with {args}')\n"
        "os.system = refuse\n"
        f"planted = gate.scan({str(planted)!r}, device='cpu')\n"
        f"genuine = gate.scan({str(keras_dir / 'model.keras')!r}, device='cpu')\n"
        "assert planted.layers[['name', 'alpha']].equals(genuine.layers[['name', 'alpha']])\n"
        "assert 'planted_payload' not in sys.modules\n"
        "print('clean')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "clean" in run.stdout
    assert not marker.exists()


@pytest.mark.slow
def test_a_recompressed_archive_reads_the_same(keras_dir, twin_scan, tmp_path):
    """Keras stores model.weights.h5 uncompressed (read in place); a deflated copy is read through a
    temporary file."""
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(keras_dir / "model.keras") as source, \
            zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
    _assert_same_scan(gate.scan(deflated, device="cpu"), twin_scan)


@pytest.mark.slow
def test_files_without_the_keras_suffix_are_recognised_by_content(keras_dir, twin_scan, tmp_path):
    for name, alias in (("model.keras", "archive.bin.upload"), ("model.h5", "legacy.upload")):
        (tmp_path / alias).write_bytes((keras_dir / name).read_bytes())
        _assert_same_scan(gate.scan(tmp_path / alias, device="cpu"), twin_scan)


@pytest.mark.slow
def test_bfloat16_weights_read_as_stored(keras_dir):
    """Keras 3 writes bfloat16 as 2-byte opaque HDF5 values (with a dtype attribute in .keras weights,
    without one in legacy .h5)."""
    kernel = torch.from_numpy(np.load(keras_dir / "bf16_kernel.npy")).to(torch.bfloat16)
    for name in ("bf16.keras", "bf16.h5"):
        with gate.sources.open_source(keras_dir / name) as source:
            info = next(info for info in source.tensor_infos() if info.name == "low.weight")
            assert (info.dtype, info.shape) == ("bfloat16", (32, 16))
            assert torch.equal(source.load("low.weight"), kernel.T)
        assert gate.scan(keras_dir / name, device="cpu").layers.set_index("name").loc["low", "status"] == "ok"


def _rewrite_archive(source: Path, target: Path, workdir: Path, edit) -> None:
    """A copy of a .keras archive whose model.weights.h5 went through ``edit(h5py.File)``."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    weights = workdir / "model.weights.h5"
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "r+") as file:
        edit(file)
    members["model.weights.h5"] = weights.read_bytes()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.slow
def test_tf_keras_2_13_container_name_reads_the_same(keras_dir, twin_scan, tmp_path):
    """tf.keras 2.13-2.15 .keras files list layers under ``_layer_checkpoint_dependencies`` where Keras 3
    writes ``layers`` (Keras 3 maps one to the other when loading: keras/src/saving/saving_lib.py). The
    same file with its groups renamed so reads the same."""
    def rename(file: h5py.File) -> None:
        groups: list[str] = []
        file.visit(lambda name: groups.append(name) if name.rsplit("/", 1)[-1] == "layers" else None)
        for name in sorted(groups, key=len, reverse=True):  # innermost first: outer renames move them
            parent = name.rsplit("/", 1)[0] if "/" in name else "/"
            file[parent].move(name.rsplit("/", 1)[-1], "_layer_checkpoint_dependencies")

    renamed = tmp_path / "tf_keras.keras"
    _rewrite_archive(keras_dir / "model.keras", renamed, tmp_path, rename)
    with h5py.File(tmp_path / "model.weights.h5") as file:
        assert "layers" not in file and "_layer_checkpoint_dependencies/sequential/_layer_checkpoint_dependencies" in file
    _assert_same_scan(gate.scan(renamed, device="cpu"), twin_scan)


@pytest.mark.slow
def test_keras_2_legacy_names_read_the_same(keras_dir, twin_scan, tmp_path):
    """Keras 2's legacy .h5 names variables as TensorFlow did (``kernel:0``), stores the name lists as
    bytes, and names a nested model's variables by the inner layer alone (``inner_a/kernel:0``). Keras 3's
    legacy file rewritten so reads the same."""
    keras2 = tmp_path / "keras2.h5"
    keras2.write_bytes((keras_dir / "model.h5").read_bytes())
    with h5py.File(keras2, "r+") as file:
        weights = file["model_weights"]
        weights.attrs["layer_names"] = np.array([name.encode() for name in weights.attrs["layer_names"]])
        for layer in weights.attrs["layer_names"]:
            group = weights[layer.decode()]
            renamed = []
            for old in group.attrs["weight_names"]:
                new = (old.split("/", 1)[1] if old.startswith("block/") else old) + ":0"
                group.move(old, new)
                renamed.append(new.encode())
            if renamed:
                group.attrs["weight_names"] = np.array(renamed)
    _assert_same_scan(gate.scan(keras2, device="cpu"), twin_scan)


def test_a_savedmodel_is_refused_with_what_to_do(tmp_path):
    """TensorFlow's SavedModel layout (saved_model.pb, variables/), alone or as an MLflow flavor's folder."""
    def saved_model(folder: Path) -> Path:
        (folder / "variables").mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
        (folder / "variables" / "variables.index").write_bytes(b"\x00")
        return folder

    exported = tmp_path / "exported"  # mlflow.keras.save_model(..., save_exported_model=True)
    saved_model(exported / "data" / "model")
    (exported / "data" / "keras_module.txt").write_text("keras")
    (exported / "MLmodel").write_text("flavors:\n  keras:\n    data: data\n    keras_backend: tensorflow\n"
                                      "    save_exported_model: true\n")
    tf_module = tmp_path / "tf_module"  # mlflow.tensorflow.save_model of a tf.Module
    saved_model(tf_module / "tf2model")
    (tf_module / "MLmodel").write_text("flavors:\n  tensorflow:\n    saved_model_dir: tf2model\n"
                                       "    model_type: tf2-module\n")
    for given, named, flavor in ((saved_model(tmp_path / "plain"), tmp_path / "plain", None),
                                 (tmp_path / "plain" / "saved_model.pb", tmp_path / "plain", None),
                                 (exported, exported / "data" / "model", "keras"),
                                 (tf_module, tf_module / "tf2model", "tensorflow")):
        with pytest.raises(GateInputError) as refused:
            gate.scan(given, device="cpu")
        message = str(refused.value)
        # An MLflow model's folder is named first, with its flavor (gate/sources/mlflow_model_dir.py).
        prefix = f"{given}: an MLflow model with the flavor {flavor}: " if flavor else ""
        assert message.startswith(f"{prefix}{named}: a TensorFlow SavedModel"), message
        assert ".keras" in message and "ONNX" in message


def test_files_that_are_not_keras_models_get_clear_errors(tmp_path):
    with h5py.File(tmp_path / "data.h5", "w") as file:
        file["table"] = np.arange(6.0)
    (tmp_path / "truncated.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)
    with zipfile.ZipFile(tmp_path / "npz_weights.keras", "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.npz", b"")
    with zipfile.ZipFile(tmp_path / "bad_config.keras", "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("model.weights.h5", b"")
    (tmp_path / "truncated.keras").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    expected = {"data.h5": "not one Keras wrote", "truncated.h5": "not a readable HDF5 file",
                "truncated.keras": "not a readable .keras archive",
                "npz_weights.keras": "not a Keras .keras file with config.json and model.weights.h5",
                "bad_config.keras": "config.json is not valid JSON"}
    for name, words in expected.items():
        with pytest.raises(GateInputError, match=words) as refused:
            gate.scan(tmp_path / name, device="cpu")
        assert str(refused.value).startswith(str(tmp_path / name))


@pytest.mark.slow
def test_weights_only_legacy_file_reads_what_names_tell(keras_dir, twin_scan, tmp_path):
    """Keras 2's ``save_weights("x.h5")`` layout (``layer_names`` at the root, no config): a class comes
    only from a default name (``gru``, ``forward_lstm``, ``simple_rnn_cell``), so those layers read as the
    twin's, and a kernel of more than two dimensions whose class no name gives is skipped, not guessed."""
    weights_only = tmp_path / "weights_only.h5"
    with h5py.File(keras_dir / "model.h5") as source, h5py.File(weights_only, "w") as target:
        model_weights = source["model_weights"]
        for key, value in model_weights.attrs.items():
            target.attrs[key] = value
        for name in model_weights:
            model_weights.copy(name, target)
    result = gate.scan(weights_only, device="cpu")
    ours = result.layers.set_index("name")
    twin = twin_scan.layers.set_index("name")
    recurrent = [name for name in twin.index if name.split(".")[0] in ("lstm", "bi", "rnn", "gru")]
    assert len(recurrent) == 4 * 2 + 4 * 4 + 2 + 3 * 2
    pd_columns = ["layer_type", "status", "alpha"]
    assert ours.loc[recurrent, pd_columns].equals(twin.loc[recurrent, pd_columns])
    for name in ("c1", "c2", "ct", "c3", "dw", "sep"):
        rows = ours[ours["tensor"].str.startswith(f"{name}.")]
        assert len(rows) and (rows["status"] == "skipped").all(), name
        assert rows["reason"].str.contains("layout .* is unknown").all(), rows["reason"].tolist()


@pytest.mark.slow
def test_a_subclassed_models_layers_are_found_by_their_groups(keras_dir):
    """A subclassed model's config lists no layers; its layers are the weights file's groups with
    variables, named by attribute (``conv``, ``blocks/dense_1``), their classes from Keras's default names."""
    with np.load(keras_dir / "subclassed.npz") as kernels:
        expected = {"conv.weight": kernels["conv"].transpose(3, 2, 0, 1), "blocks.dense.weight": kernels["block0"].T,
                    "blocks.dense_1.weight": kernels["block1"].T}
    with gate.sources.open_source(keras_dir / "subclassed.keras") as source:
        infos = {info.name: info for info in source.tensor_infos()}
        assert set(infos) == {*expected, "conv.bias", "blocks.dense.bias", "blocks.dense_1.bias"}
        for name, value in expected.items():
            assert torch.equal(source.load(name), torch.from_numpy(np.ascontiguousarray(value))), name
    layers = gate.scan(keras_dir / "subclassed.keras", device="cpu").layers
    assert list(zip(layers["name"], layers["layer_type"], layers["status"])) == [
        ("blocks.dense", "dense", "ok"), ("blocks.dense_1", "dense", "ok"), ("conv", "conv2d", "ok")]
