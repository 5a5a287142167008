"""Bad input is expected input: per-layer problems are reported and the scan goes on; unreadable
files stop with exit status 2, a message naming the file and the problem, and nothing on stdout.

The command line runs in-process (click's CliRunner); the exit status and streams of a real process
are checked where the process boundary is the point (test_exit_status_and_streams_as_a_shell_sees_them)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

import gate
from gate.cli.app import main


def run_cli(*args: str) -> Result:
    """``weightgate ARGS`` in this process: exit_code, stdout and stderr apart."""
    return CliRunner().invoke(main, list(args))


def assert_input_error(result: Result) -> None:
    """Exit 2, nothing on stdout, one ``weightgate: error: ...`` line on stderr."""
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert result.stderr.startswith("weightgate: error: ") and result.stderr.count("\n") == 1, result.stderr


@pytest.fixture
def three_layers() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(64, 32), "b.weight": torch.randn(32, 32), "c.weight": torch.randn(48, 16)}


def test_nan_and_inf_layers_are_reported_and_scan_goes_on(three_layers):
    three_layers["a.weight"][3, 4] = float("nan")
    three_layers["b.weight"][0, 0] = float("inf")
    layers = gate.scan(three_layers, device="cpu").layers.set_index("name")
    assert layers.loc["a", "status"] == "nonfinite"
    assert layers.loc["a", "reason"] == "1 of 2048 weights are NaN or infinite"
    assert layers.loc["b", "status"] == "nonfinite"
    assert layers.loc["c", "status"] == "ok" and layers.loc["c", "alpha"] > 1


def test_all_zero_and_constant_matrices_are_degenerate(three_layers):
    three_layers["a.weight"].zero_()
    three_layers["b.weight"] = torch.eye(32)  # all eigenvalues equal: no power-law tail
    result = gate.scan(three_layers, device="cpu")
    layers = result.layers.set_index("name")
    assert (layers.loc["a", "status"], layers.loc["a", "reason"]) == ("degenerate", "all weights are zero")
    assert layers.loc["b", "status"] == "degenerate"
    assert result.summary["num_degenerate"] == 2 and result.summary["num_analysed"] == 1


def test_huge_bfloat16_weights_fall_back_to_a_float64_gram(three_layers):
    """bfloat16 holds values whose squares overflow float32: the layer is still analysed, in float64,
    with the spectrum of the same weights (scipy's SVD as the reference)."""
    import numpy as np
    import scipy.linalg

    huge = {name: (w * 1e20).to(torch.bfloat16) for name, w in three_layers.items()}
    layers = gate.scan(huge, device="cpu", benford=False).layers.set_index("name")
    assert list(layers["status"]) == ["ok", "ok", "ok"]
    assert list(layers["solve_precision"]) == ["float64"] * 3
    reference = scipy.linalg.svdvals(huge["a.weight"].double().numpy()).max() ** 2
    assert layers.loc["a", "lambda_max"] == pytest.approx(reference, rel=1e-10)
    assert np.isfinite(layers["alpha"]).all()
    shuffled = gate.scan(huge, device="cpu", benford=False, mp_fit=True, randomize=True).layers
    assert np.isfinite(shuffled["max_rand_eval"]).all()  # the shuffled float32 Grams overflow as well


def test_summary_counts_nonfinite_layers(three_layers):
    three_layers["c.weight"][:] = float("nan")
    summary = gate.scan(three_layers, device="cpu").summary
    assert (summary["num_analysed"], summary["num_nonfinite"]) == (2, 1)


def test_json_output_has_null_for_missing_metrics(tmp_path, three_layers):
    three_layers["a.weight"][0, 0] = float("nan")
    path = tmp_path / "m.safetensors"
    save_file(three_layers, path)
    result = run_cli("scan", str(path), "--format", "json")
    assert result.exit_code == 0, result.output

    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads(result.stdout, parse_constant=reject)
    row = next(r for r in document["layers"] if r["name"] == "a")
    assert (row["status"], row["alpha"], row["shape"]) == ("nonfinite", None, [64, 32])


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    broken = path.with_name("truncated" + path.suffix)
    broken.write_bytes(data[: len(data) // 2])
    return broken


@pytest.mark.slow  # exports a torch.export archive and an ONNX graph
@pytest.mark.parametrize("kind", ["safetensors", "pt", "pt2", "onnx"])
def test_truncated_files_exit_2_naming_the_file(tmp_path, three_layers, kind):
    if kind == "safetensors":
        path = tmp_path / "m.safetensors"
        save_file(three_layers, path)
    elif kind == "pt":
        path = tmp_path / "m.pt"
        torch.save(three_layers, path)
    elif kind == "pt2":
        import mlflow.pytorch
        import numpy as np

        mlflow.pytorch.save_model(torch.nn.Linear(32, 16), tmp_path / "mm", input_example=np.zeros((1, 32), np.float32))
        path = tmp_path / "mm" / "data" / "model.pt2"
    else:
        import onnx
        from onnx import helper, numpy_helper

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32])],
            initializer=[numpy_helper.from_array(three_layers["a.weight"].numpy(), "w")],
        )
        path = tmp_path / "m.onnx"
        onnx.save(helper.make_model(graph), path)
    broken = _truncate(path)
    result = run_cli("scan", str(broken), "--format", "json")
    assert_input_error(result)
    assert str(broken) in result.stderr
    assert "truncated" in result.stderr or "corrupt" in result.stderr


def test_missing_empty_and_unknown_files_exit_2(tmp_path):
    result = run_cli("scan", str(tmp_path / "nope.safetensors"))
    assert_input_error(result)
    assert "no such file" in result.stderr
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    result = run_cli("scan", str(empty))
    assert result.exit_code == 2 and "empty" in result.stderr
    junk = tmp_path / "weights.xyz"
    noise = bytearray(random.Random(7).randbytes(4096))
    noise[8:9] = b"{"  # looks like a safetensors JSON header, but the length before it does not fit the file
    junk.write_bytes(bytes(noise))
    result = run_cli("scan", str(junk))
    assert result.exit_code == 2 and "unknown model file format" in result.stderr, result.stderr
    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(b"hello, not a checkpoint" * 10)
    result = run_cli("scan", str(garbage_pt))
    assert result.exit_code == 2 and "not a PyTorch checkpoint" in result.stderr
    no_weights = tmp_path / "emptydir"
    no_weights.mkdir()
    result = run_cli("scan", str(no_weights))
    assert result.exit_code == 2 and "no model weights found" in result.stderr


def test_pickled_whole_module_is_read_safely_and_allow_pickle_loads_the_rest(tmp_path):
    """A whole-module pickle is read without running it (same rows as its state dict); a file whose
    weights the safe reader does not find (a tensor inside an object it keeps inert) is refused,
    naming what the file wanted to create, unless --allow-pickle, which loads it fully (trusted)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    path = tmp_path / "whole_model.pt"
    torch.save(model, path)
    result = run_cli("scan", str(path), "--format", "csv")
    assert result.exit_code == 0, result.output
    state_dict = tmp_path / "state_dict.safetensors"
    save_file(model.state_dict(), state_dict)
    assert result.stdout == run_cli("scan", str(state_dict), "--format", "csv").stdout.replace(str(state_dict), str(path))

    hidden = tmp_path / "hidden.pt"
    torch.save(HoldsTensors(model[0].weight.detach()), hidden)
    result = run_cli("scan", str(hidden))
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert result.stderr.startswith("weightgate: error: ")
    assert "--allow-pickle" in result.stderr and "arbitrary code" in result.stderr and "found no weights" in result.stderr
    assert "test_bad_input.HoldsTensors" in result.stderr  # names what it wanted to create
    result = run_cli("scan", str(hidden), "--allow-pickle", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split(",")[1] == "weight"  # the trusted load's {"weight": ...}


class HoldsTensors(Mapping):
    """A read-only mapping of one tensor: a trusted load sees a state dict; the safe reader sees an
    object of an unknown class (pickled by reference to this test module) whose contents it does not read."""

    def __init__(self, weight: torch.Tensor) -> None:
        self._tensors = {"weight": weight}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def test_pickle_payload_never_runs(tmp_path):
    """A file whose unpickling would create a file on disk: the weight beside it is read, the payload
    is never run (tests/test_pickle_security.py tries every other opcode path)."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.randn(16, 16), "x": Payload()}, path)
    result = run_cli("scan", str(path), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split(",")[1] == "weight"
    assert not marker.exists()


def test_bad_options_exit_2():
    result = run_cli("scan", "whatever.pt", "--format", "xml")
    assert result.exit_code == 2 and "xml" in result.stderr and result.stdout == ""
    missing_gpu = f"cuda:{torch.cuda.device_count()}"  # cuda:0 on a machine without a GPU
    result = run_cli("scan", "whatever.pt", "--device", missing_gpu)
    assert_input_error(result)
    assert f"device {missing_gpu!r} was requested" in result.stderr
    if not torch.cuda.is_available():
        result = run_cli("scan", "whatever.pt", "--device", "cuda")
        assert_input_error(result)
        assert "no CUDA GPU" in result.stderr


def test_exit_status_and_streams_as_a_shell_sees_them(tmp_path):
    """The process boundary: a real ``python -m gate`` exits 2 with the message alone on stderr, for
    an input error raised by a command and for a value click refuses while parsing."""
    proc = subprocess.run([sys.executable, "-m", "gate", "scan", str(tmp_path / "nope.safetensors")],
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"weightgate: error: {tmp_path / 'nope.safetensors'}: no such file or directory\n"
    proc = subprocess.run([sys.executable, "-m", "gate", "scan", "m.safetensors", "--precision", "half"],
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "Invalid value for '--precision': 'half' is not one of 'auto', 'float64', 'float32'" in proc.stderr


@pytest.mark.parametrize("command, option", [
    ("scan", ("--device", "gpu0")), ("scan", ("--precision", "float16")), ("scan", ("--conv2d-method", "sliced")),
    ("check", ("--device", "cuda:x")), ("report", ("--device", "tpu")),
])
def test_invalid_options_exit_2_before_any_download(command, option, tmp_path):
    """The source is an MLflow URI on a port nothing listens on: reaching it would fail differently
    (and slowly); the bad option is refused first."""
    extra = ["--out", str(tmp_path / "out")] if command == "report" else []
    result = run_cli(command, "models:/never-downloaded/1", "--tracking-uri", "http://127.0.0.1:9", *option, *extra)
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert option[1] in result.stderr and option[0] in result.stderr
    assert not (tmp_path / "out").exists()


def test_api_validates_options_before_opening_the_source():
    from gate.check import check
    from gate.errors import GateInputError

    unreachable = "models:/never-downloaded/1"
    with pytest.raises(GateInputError, match="device must be auto, cpu, cuda or cuda:N .*; got 'gpu'"):
        check(unreachable, device="gpu", tracking_uri="http://127.0.0.1:9")
    with pytest.raises(GateInputError, match="half"):
        gate.scan(unreachable, precision="half", tracking_uri="http://127.0.0.1:9")
    with pytest.raises(GateInputError, match="min_evals must be a whole number"):
        gate.scan(unreachable, min_evals=0, tracking_uri="http://127.0.0.1:9")
    if not torch.cuda.is_available():
        with pytest.raises(GateInputError, match="no CUDA GPU"):
            check(unreachable, device="cuda", tracking_uri="http://127.0.0.1:9")
