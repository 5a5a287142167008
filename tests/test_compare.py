"""``weightgate compare``: distances checked against numpy hand computations on real checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import gate
from gate.cli.app import main
from gate.compare import compare


@pytest.fixture
def pair(tmp_path):
    torch.manual_seed(0)
    base = {"enc.weight": torch.randn(64, 32), "mid.weight": torch.randn(48, 48), "dec.weight": torch.randn(32, 64),
            "enc.bias": torch.randn(64)}
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["enc.weight"] += 0.01 * torch.randn(64, 32)
    tuned["mid.weight"] = torch.randn(48, 48)  # re-initialised
    save_file(base, tmp_path / "base.safetensors")
    save_file(tuned, tmp_path / "tuned.safetensors")
    return tmp_path / "tuned.safetensors", tmp_path / "base.safetensors", tuned, base


def test_distances_match_hand_computation(pair):
    a_path, b_path, a, b = pair
    result = compare(a_path, b_path, device="cpu")
    rows = result.layers.set_index("name")
    for name in ("enc", "mid", "dec"):
        A, B = a[f"{name}.weight"].double().numpy(), b[f"{name}.weight"].double().numpy()
        distance = np.linalg.norm(A - B)
        assert rows.loc[name, "euclidean_distance"] == pytest.approx(distance, rel=1e-6, abs=1e-12)
        assert rows.loc[name, "relative_distance"] == pytest.approx(distance / np.linalg.norm(B), rel=1e-6, abs=1e-12)
        cosine = (A * B).sum() / (np.linalg.norm(A) * np.linalg.norm(B))
        assert rows.loc[name, "cosine_similarity"] == pytest.approx(cosine, rel=1e-6)
    all_a = np.concatenate([a[f"{n}.weight"].double().numpy().ravel() for n in ("enc", "mid", "dec")])
    all_b = np.concatenate([b[f"{n}.weight"].double().numpy().ravel() for n in ("enc", "mid", "dec")])
    assert result.summary["total_euclidean_distance"] == pytest.approx(np.linalg.norm(all_a - all_b), rel=1e-6)
    assert result.summary["total_relative_distance"] == pytest.approx(
        np.linalg.norm(all_a - all_b) / np.linalg.norm(all_b), rel=1e-6)
    assert rows.loc["dec", "euclidean_distance"] == 0.0
    assert result.summary["identical"] is False
    assert result.summary["changed_layers"] == ["mid"]
    assert result.summary["reinitialized_layers"] == ["mid"]
    scan_a = gate.scan(a_path, device="cpu").layers.set_index("name")
    scan_b = gate.scan(b_path, device="cpu").layers.set_index("name")
    assert rows.loc["mid", "delta_alpha"] == pytest.approx(scan_a.loc["mid", "alpha"] - scan_b.loc["mid", "alpha"])
    assert rows.loc["enc", "delta_mlh"] == pytest.approx(scan_a.loc["enc", "mlh"] - scan_b.loc["enc", "mlh"])


def test_identical_copy_is_flagged(pair):
    _, b_path, _, _ = pair
    result = compare(b_path, b_path, device="cpu")
    assert result.summary["identical"] is True
    assert result.summary["total_euclidean_distance"] == 0.0
    np.testing.assert_allclose(result.layers["cosine_similarity"], 1.0, rtol=1e-12)


def test_unmatched_layers_and_init_distance(tmp_path, pair):
    a_path, b_path, a, b = pair
    torch.manual_seed(9)
    init = {k: torch.randn_like(v) for k, v in a.items()}
    save_file(init, tmp_path / "init.safetensors")
    other = dict(b)
    other["extra.weight"] = torch.randn(16, 16)
    other["dec.weight"] = torch.randn(32, 32)
    save_file(other, tmp_path / "other.safetensors")
    result = compare(a_path, tmp_path / "other.safetensors", init=tmp_path / "init.safetensors", device="cpu")
    assert result.summary["only_in_b"] == ["extra"]
    assert result.summary["shape_mismatch"] == ["dec"]
    assert set(result.layers["name"]) == {"enc", "mid"}
    rows = result.layers.set_index("name")
    expected = np.linalg.norm(a["enc.weight"].double().numpy() - init["enc.weight"].double().numpy())
    assert rows.loc["enc", "init_distance"] == pytest.approx(expected, rel=1e-6)


def test_nonfinite_layer_has_no_distance(tmp_path, pair):
    _, b_path, _, b = pair
    broken = dict(b)
    broken["enc.weight"] = b["enc.weight"].clone()
    broken["enc.weight"][0, 0] = float("nan")
    save_file(broken, tmp_path / "broken.safetensors")
    result = compare(tmp_path / "broken.safetensors", b_path, device="cpu")
    rows = result.layers.set_index("name")
    assert rows.loc["enc", "status"] == "nonfinite" and np.isnan(rows.loc["enc", "euclidean_distance"])
    assert result.summary["nonfinite_layers"] == ["enc"]
    by_name = {row["name"]: row for row in json.loads(result.to_json())["layers"]}
    assert by_name["enc"]["euclidean_distance"] is None


def test_cli_json_and_csv(pair):
    a_path, b_path, _, _ = pair
    result = CliRunner().invoke(main, ["compare", str(a_path), str(b_path), "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["a"] == str(a_path) and document["summary"]["changed_layers"] == ["mid"]
    result = CliRunner().invoke(main, ["compare", str(a_path), str(b_path), "--format", "csv", "--threshold", "0.001"])
    assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith("name,shape,status,euclidean_distance")
    missing = CliRunner().invoke(main, ["compare", str(a_path), "/no/such.safetensors"])
    assert missing.exit_code == 2 and "/no/such.safetensors" in missing.stderr and missing.stdout == ""
