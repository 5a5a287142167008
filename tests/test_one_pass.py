"""One read of the weights: check, scan and compare load every tensor of each model exactly once
(counted through a wrapping source), and a scan split into partial scans merges to the same result."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import gate
from gate.sources import TensorInfo, WeightSource, open_source


class CountingSource(WeightSource):
    """A real source (here safetensors files) whose loads are counted in bytes and per tensor."""

    def __init__(self, inner: WeightSource) -> None:
        self._inner = inner
        self.description = inner.description
        self.bytes_read = 0
        self.loads: dict[str, int] = {}

    def tensor_infos(self) -> list[TensorInfo]:
        return self._inner.tensor_infos()

    def load(self, name: str) -> torch.Tensor:
        tensor = self._inner.load(name)
        self.bytes_read += tensor.numel() * tensor.element_size()
        self.loads[name] = self.loads.get(name, 0) + 1
        return tensor

    def close(self) -> None:
        self._inner.close()

    @property
    def stored_bytes(self) -> int:
        """Every tensor's bytes once, from the file header (shapes and dtypes), not from loads."""
        sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8}
        return sum(int(np.prod(info.shape, dtype=np.int64)) * sizes[info.dtype] for info in self.tensor_infos())


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Two versions of a small model (B = A perturbed) and A's initialisation, as safetensors files."""
    from tests.conftest import SmallNet

    folder = tmp_path_factory.mktemp("one-pass")
    state = {k: v.detach().clone().contiguous() for k, v in SmallNet().state_dict().items()}
    generator = torch.Generator().manual_seed(4)
    versions = {
        "a": state,
        "b": {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
              for k, v in state.items()},
        "init": {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in state.items()},
    }
    paths = {}
    for name, tensors in versions.items():
        paths[name] = folder / f"{name}.safetensors"
        save_file(tensors, paths[name])
    return paths


def _counting(path) -> CountingSource:
    return CountingSource(open_source(path))


def test_scan_reads_each_tensor_once_and_fingerprints_it(model_files):
    from gate.scanning.fingerprint import weights_sha256

    source = _counting(model_files["a"])
    result = gate.scan(source, device="cpu", mp_fit=True, randomize=True)
    assert source.bytes_read == source.stored_bytes > 0
    assert set(source.loads.values()) == {1} and len(source.loads) == len(source.tensor_infos())
    # The scan's fingerprint equals the standalone one (which reads everything once more) and the
    # documented construction by hand: sha256 over per-tensor sha256 digests, in name order.
    assert result.weights_sha256 == weights_sha256(open_source(model_files["a"]))
    plain = open_source(model_files["a"])
    by_hand = hashlib.sha256()
    for info in sorted(plain.tensor_infos(), key=lambda i: i.name):
        tensor = plain.load(info.name)
        part = hashlib.sha256(f"{info.name}\0{info.dtype}\0{list(info.shape)}\0".encode())
        part.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        by_hand.update(part.digest())
    assert result.weights_sha256 == by_hand.hexdigest()


def test_check_reads_the_model_and_its_baseline_once_each(model_files):
    from gate.check import check

    source, baseline = _counting(model_files["a"]), _counting(model_files["b"])
    result = check(source, baseline=baseline, device="cpu")
    assert source.bytes_read == source.stored_bytes
    assert baseline.bytes_read == baseline.stored_bytes
    assert result.decision.weights_sha256 == result.scan.weights_sha256
    assert result.decision.baseline_weights_sha256 != result.decision.weights_sha256


def test_compare_reads_each_side_once(model_files):
    from gate.compare import compare

    a, b, init = (_counting(model_files[k]) for k in ("a", "b", "init"))
    result = compare(a, b, init=init, device="cpu")
    for source in (a, b):
        assert source.bytes_read == source.stored_bytes, source.description
    # init is read only for the distances of the matrices it shares with A (not its vectors).
    assert init.bytes_read <= init.stored_bytes and set(init.loads.values()) == {1}
    # The distances from that one pass, against numpy float64 on the stored tensors.
    layers = result.layers.set_index("name")
    wa = open_source(model_files["a"]).load("fc1.weight").double().numpy()
    wb = open_source(model_files["b"]).load("fc1.weight").double().numpy()
    assert layers.loc["fc1", "euclidean_distance"] == pytest.approx(np.linalg.norm(wa - wb), rel=1e-6)
    assert layers.loc["fc1", "relative_distance"] == pytest.approx(np.linalg.norm(wa - wb) / np.linalg.norm(wb), rel=1e-6)


def test_partial_scans_of_disjoint_tensor_groups_merge_to_the_whole_scan(model_files):
    """The seam for distributed scans: any split of the tensors, analysed separately and merged
    (in any order), gives the same layer table, Benford summary and fingerprint as one scan."""
    from gate.layers.plan import PlanOptions
    from gate.layers.planner import plan_layers
    from gate.options import ScanOptions
    from gate.scanning.pipeline import analyse_tensors, merge_partials

    whole = gate.scan(model_files["a"], device="cpu")
    options = ScanOptions(device="cpu")
    device = torch.device("cpu")
    source = open_source(model_files["a"])
    infos = source.tensor_infos()
    plans = plan_layers(infos, PlanOptions.of(options))
    names = [info.name for info in infos]
    parts = [analyse_tensors(source, plans, names[i::3], options, device) for i in range(3)]
    merged = merge_partials(parts[::-1], source.description, infos, options, device, 0.0)
    assert merged.weights_sha256 == whole.weights_sha256
    columns = [c for c in whole.layers.columns if c not in ("reason",)]
    pd.testing.assert_frame_equal(merged.layers[columns], whole.layers[columns])
    for key in ("mlh", "benford_digit_counts", "alpha", "stable_rank", "num_analysed"):
        assert merged.summary[key] == whole.summary[key], key
    with pytest.raises(ValueError, match="do not cover"):
        merge_partials(parts[:2], source.description, infos, options, device, 0.0)


def test_scan_without_fingerprint_hashes_nothing_and_reports_the_same_layers(model_files, monkeypatch):
    """``fingerprint=False`` (the training tracker, rank) skips the hash and nothing else: the
    digest function is counted where the scanner calls it."""
    import json

    from click.testing import CliRunner

    import gate.scanning.tensor_pass
    from gate.cli.app import main

    digested: list[str] = []
    real_digest = gate.scanning.tensor_pass.tensor_digest
    monkeypatch.setattr(gate.scanning.tensor_pass, "tensor_digest", lambda name, tensor: digested.append(name) or
                        real_digest(name, tensor))
    source = _counting(model_files["a"])
    whole = gate.scan(model_files["a"], device="cpu")
    assert sorted(digested) == sorted(info.name for info in source.tensor_infos())
    digested.clear()
    unhashed = gate.scan(source, device="cpu", fingerprint=False)
    assert digested == [] and unhashed.weights_sha256 is None
    assert source.bytes_read == source.stored_bytes  # every tensor still read, once
    columns = [c for c in whole.layers.columns if c != "reason"]
    pd.testing.assert_frame_equal(unhashed.layers[columns], whole.layers[columns])
    assert unhashed.summary["mlh"] == whole.summary["mlh"]
    printed = CliRunner().invoke(main, ["scan", str(model_files["a"]), "--no-fingerprint", "--format", "json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output)["weights_sha256"] is None and digested == []
