"""Scan options declared once (gate/options.py): every option's refusal, checked by every entry
point before anything is read, and the device resolved in one place.

The refusal tests are parametrized over the table itself (each constraint supplies a value it
refuses, as scikit-learn's generate_invalid_param_val does), so an option added to ScanOptions is
tested without touching this file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import gate
from gate.cli.app import main
from gate.errors import GateInputError, InvalidOptionError
from gate.options import SCAN_OPTIONS, Boolean, Choices, Interval, OrNone, ScanOptions, resolve_device
from gate.sources.base import TensorInfo, WeightSource

ROWS = sorted(SCAN_OPTIONS)
GPUS = torch.cuda.device_count()
MISSING_GPU = f"cuda:{GPUS}"  # one index past the GPUs this machine has (cuda:0 on a CPU machine)


class RecordingSource(WeightSource):
    """A real two-matrix model that records every read: a refused option must leave it unread."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.tensors = {"enc.weight": torch.randn(48, 24, generator=generator),
                        "dec.weight": torch.randn(24, 48, generator=generator)}
        self.description = "recording source"
        self.reads: list[str] = []

    def tensor_infos(self) -> list[TensorInfo]:
        self.reads.append("tensor_infos")
        return [TensorInfo(name, tuple(t.shape), "float32") for name, t in self.tensors.items()]

    def load(self, name: str) -> torch.Tensor:
        self.reads.append(name)
        return self.tensors[name]


# What each option allows, written out by hand: the table's words must say this.
ALLOWED_TEXT = {
    "device": "auto, cpu, cuda or cuda:N (N: a GPU's index)",
    "precision": "one of 'auto', 'float64', 'float32'",
    "strategy": "one of 'auto', 'pool', 'batched'",
    "conv2d_method": "one of 'pooled', 'per_slice'",
    "min_evals": "a whole number >= 1",
    "max_evals": "a whole number >= 1, or None",
    "max_N": "a whole number >= 1, or None",
    "seed": "a whole number in [0, 4294967295]",
    "train_accuracy": "a number in [0, 1], or None",
    **{name: "True or False" for name in ("mp_fit", "randomize", "benford", "fingerprint", "tail_estimators",
                                          "keep_spectra")},
}


def test_every_option_is_described_and_its_default_allowed():
    assert set(ALLOWED_TEXT) == set(SCAN_OPTIONS)
    for name, spec in SCAN_OPTIONS.items():
        assert str(spec.allowed) == ALLOWED_TEXT[name], name
        assert spec.allowed.is_satisfied_by(spec.default), name
        assert spec.help, name
    assert ScanOptions() == ScanOptions.of()


@pytest.mark.parametrize("name", ROWS)
def test_each_refused_value_names_the_option_the_value_and_what_is_allowed(name):
    refused = SCAN_OPTIONS[name].allowed.refused_example()
    with pytest.raises(InvalidOptionError) as caught:
        ScanOptions.of(**{name: refused})
    assert str(caught.value) == f"{name} must be {ALLOWED_TEXT[name]}; got {refused!r}"
    assert isinstance(caught.value, GateInputError)  # the CLI's exit 2


@pytest.mark.parametrize("name", ROWS)
def test_each_refused_value_leaves_the_source_unread(name):
    refused = {name: SCAN_OPTIONS[name].allowed.refused_example()}
    source = RecordingSource()
    with pytest.raises(InvalidOptionError, match=f"^{name} must be"):
        gate.scan(source, **refused)
    assert source.reads == []


def test_constraints_against_hand_cases():
    whole = Interval(int, 1)
    assert whole.is_satisfied_by(1) and whole.is_satisfied_by(np.int64(3))
    assert not whole.is_satisfied_by(True) and not whole.is_satisfied_by(2.0) and not whole.is_satisfied_by(0)
    fraction = OrNone(Interval(float, 0, 1))
    assert fraction.is_satisfied_by(None) and fraction.is_satisfied_by(1) and fraction.is_satisfied_by(0.5)
    assert not fraction.is_satisfied_by(float("nan")) and not fraction.is_satisfied_by(1.01)
    positive = Interval(float, 0, low_open=True)
    assert str(positive) == "a number > 0" and not positive.is_satisfied_by(0) and positive.is_satisfied_by(1e-9)
    assert not Boolean().is_satisfied_by(1) and not Choices(("a",)).is_satisfied_by(["a"])
    assert not SCAN_OPTIONS["device"].allowed.is_satisfied_by("cuda:") and not SCAN_OPTIONS["device"].allowed \
        .is_satisfied_by("CUDA")


def test_unknown_option_is_refused_by_name():
    with pytest.raises(InvalidOptionError, match=r"unknown scan option\(s\) \['mpfit'\]; valid: \['benford',"):
        gate.scan(RecordingSource(), mpfit=True)


def test_keyword_calls_and_a_typed_options_object_scan_alike():
    """The public API keeps its keyword form; ScanOptions is the same scan, and keywords change it."""
    by_keywords = gate.scan(RecordingSource(), device="cpu", mp_fit=True, fingerprint=False)
    typed = ScanOptions(device="cpu", mp_fit=True)
    by_object = gate.scan(RecordingSource(), typed, fingerprint=False)
    assert by_keywords.options == by_object.options and by_keywords.options["mp_fit"] is True
    assert by_keywords.layers["alpha"].tolist() == by_object.layers["alpha"].tolist()
    assert "mp_softrank" in by_object.layers.columns


def test_every_entry_point_checks_before_reading():
    from gate.check import check
    from gate.compare import compare
    from gate.distributed.executor import scan_on_ray
    from gate.rank import rank

    a, b = RecordingSource(), RecordingSource()
    with pytest.raises(InvalidOptionError, match="^device must be .*; got 'gpu'"):
        check(a, device="gpu", baseline=b)
    with pytest.raises(InvalidOptionError, match="^train_accuracy must be a number in"):
        check(a, train_accuracy=87.5)
    with pytest.raises(InvalidOptionError, match="^device must be"):
        compare(a, b, device="gpu")
    with pytest.raises(InvalidOptionError, match=r"^changed_threshold must be a number > 0; got 0"):
        compare(a, b, changed_threshold=0, device="cpu")
    with pytest.raises(InvalidOptionError, match="^device must be"):
        rank([a, b], device="gpu")
    with pytest.raises(InvalidOptionError, match="^by must be one of 'alpha_weighted'"):
        rank([a, b], "accuracy")
    # The Ray executor checks before Ray is imported or a file is planned.
    with pytest.raises(InvalidOptionError, match="^min_evals must be"):
        scan_on_ray("/no/such/model.safetensors", min_evals=0)
    assert a.reads == [] and b.reads == []


def test_a_missing_gpu_is_named_as_asked():
    with pytest.raises(GateInputError) as caught:
        resolve_device(MISSING_GPU)
    have = "no CUDA GPU" if GPUS == 0 else f"{GPUS} CUDA GPU"
    assert f"device {MISSING_GPU!r} was requested, but torch sees {have}" in str(caught.value)
    # The Ray executor asks about its cluster's GPUs with the same function and words.
    with pytest.raises(GateInputError, match=r"^device 'cuda:7' was requested, but the Ray cluster has 2 CUDA GPUs "
                                             r"\(cuda:0 to cuda:1\); use device cpu, auto or cuda:0$"):
        resolve_device("cuda:7", gpus=2, where="the Ray cluster has")
    assert resolve_device("cuda:1", gpus=2, where="the Ray cluster has") == torch.device("cuda:1")
    assert resolve_device("auto", gpus=0) == torch.device("cpu")
    assert resolve_device("cpu").type == "cpu"
    source = RecordingSource()
    with pytest.raises(GateInputError, match=MISSING_GPU):
        gate.scan(source, device=MISSING_GPU)
    assert source.reads == []


def test_worker_settings_and_training_tracker_check_their_device():
    from gate.training.tracker import WeightMetricsTracker
    from mlflow_plugin.service.worker import WorkerSettings

    with pytest.raises(InvalidOptionError, match="^device must be"):
        WorkerSettings("http://127.0.0.1:9", device="gpu")
    with pytest.raises(GateInputError, match=f"device '{MISSING_GPU}' was requested"):
        WorkerSettings("http://127.0.0.1:9", device=MISSING_GPU)
    # Scanning on Ray: whether the GPU exists is the cluster's matter, the name is still checked.
    assert WorkerSettings("http://127.0.0.1:9", device=MISSING_GPU, ray_address="auto").device == MISSING_GPU
    with pytest.raises(InvalidOptionError, match="^device must be"):
        WorkerSettings("http://127.0.0.1:9", device="gpu", ray_address="auto")
    with pytest.raises(GateInputError, match=f"device '{MISSING_GPU}' was requested"):
        WeightMetricsTracker(torch.nn.Linear(8, 8), sink=None, device=MISSING_GPU)


def _scan_flags() -> dict[str, str]:
    """Scan option -> its flag on `weightgate scan`, for the options that take a value."""
    from gate.cli.model_commands import scan

    return {param.name: param.opts[0] for param in scan.params
            if param.name in SCAN_OPTIONS and not isinstance(SCAN_OPTIONS[param.name].allowed, Boolean)}


@pytest.mark.parametrize("name", sorted(_scan_flags()))
def test_cli_refuses_each_value_naming_the_flag(name, tmp_path):
    flag = _scan_flags()[name]
    refused = str(SCAN_OPTIONS[name].allowed.refused_example())
    model = tmp_path / "m.safetensors"
    save_file(RecordingSource().tensors, str(model))
    result = CliRunner().invoke(main, ["scan", str(model), flag, refused])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert f"Invalid value for '{flag}'" in result.stderr and refused in result.stderr


def test_cli_options_carry_the_table_help_and_defaults():
    from gate.cli.model_commands import scan

    params = {param.name: param for param in scan.params}
    for name, spec in SCAN_OPTIONS.items():
        if name in params:
            assert params[name].help == spec.help and params[name].default == spec.default, name
    assert set(params) >= {"device", "precision", "min_evals", "max_evals", "conv2d_method", "seed", "mp_fit",
                           "randomize", "benford", "fingerprint", "train_accuracy", "tail_estimators"}


def test_cli_missing_gpu_exits_2_naming_it(tmp_path):
    model = tmp_path / "m.safetensors"
    save_file(RecordingSource().tensors, str(model))
    for command in (["scan", str(model)], ["check", str(model)], ["compare", str(model), str(model)],
                    ["rank", str(model)], ["report", str(model), "--out", str(tmp_path / "out")]):
        result = CliRunner().invoke(main, [*command, "--device", MISSING_GPU])
        assert (result.exit_code, result.stdout) == (2, ""), (command, result.output)
        assert result.stderr.startswith(f"weightgate: error: device {MISSING_GPU!r} was requested"), result.stderr
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["worker", "--tracking-uri", "http://127.0.0.1:9", "--once",
                                       "--device", MISSING_GPU])
    assert result.exit_code == 2 and f"device {MISSING_GPU!r} was requested" in result.stderr
