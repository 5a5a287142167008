"""``weightgate rank``: ordering by each metric against orders known by hand, the JSON/CSV/table
outputs, and every version of a registered model on a real ``mlflow server``."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from gate.cli.app import main
from gate.metrics.benford import BENFORD

from registry_helpers import register_file

SCALES = (4.0, 1.0, 2.0)  # the order given on the command line


def hand_mlh(state: dict[str, torch.Tensor]) -> float:
    values = np.concatenate([t.double().numpy().ravel() for t in state.values()])
    digits = np.array([int(f"{abs(v):.17e}"[0]) for v in values if v != 0])
    return float(np.corrcoef(np.bincount(digits, minlength=10)[1:] / len(digits), BENFORD)[0, 1])


@pytest.fixture(scope="module")
def scaled_models(tmp_path_factory):
    """One heavy-tailed base model and copies scaled by 2 and 4: exact in float32, so every layer's
    eigenvalues scale by 4 and 16 and its alpha stays the same. Then alpha_weighted (alpha *
    log10 lambda_max) and log_alpha_norm (log10 sum lambda^alpha) grow by 2 alpha log10(c):
    the unscaled copy is best, the x4 copy worst, by hand."""
    folder = tmp_path_factory.mktemp("rank")
    generator = torch.Generator().manual_seed(5)
    base = {"enc.weight": torch.distributions.StudentT(3.0).sample((96, 48)) * 0.1,
            "dec.weight": torch.randn(48, 96, generator=generator) * 0.2}
    paths, states = {}, {}
    for scale in SCALES:
        states[scale] = {k: v * scale for k, v in base.items()}
        paths[scale] = folder / f"x{scale:g}.safetensors"
        save_file(states[scale], str(paths[scale]))
    return paths, states


def invoke(*args: str):
    result = CliRunner().invoke(main, ["rank", *args], catch_exceptions=False)
    return result


def test_order_by_alpha_hat_and_log_alpha_norm_follows_the_scaling(scaled_models):
    paths, _ = scaled_models
    result = invoke(*[str(paths[s]) for s in SCALES], "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["by"] == "alpha_weighted" and document["better"] == "lower"
    rows = document["versions"]
    assert [r["source"] for r in rows] == [str(paths[1.0]), str(paths[2.0]), str(paths[4.0])]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["rank_log_alpha_norm"] for r in rows] == [1, 2, 3]
    assert rows[0]["alpha"] == pytest.approx(rows[2]["alpha"], rel=1e-9)  # alpha is scale-free
    # the hand formula: each layer's alpha_weighted grows by alpha * log10(16) from x1 to x4
    assert rows[2]["alpha_weighted"] - rows[0]["alpha_weighted"] == pytest.approx(
        rows[0]["alpha"] * math.log10(16), rel=1e-6)
    assert rows[2]["log_alpha_norm"] - rows[0]["log_alpha_norm"] == pytest.approx(
        rows[0]["alpha"] * math.log10(16), rel=1e-6)


def test_order_by_mlh_matches_hand_computed_mlh_and_csv(scaled_models):
    paths, states = scaled_models
    result = invoke(*[str(paths[s]) for s in SCALES], "--by", "mlh", "--format", "csv", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    expected = sorted(SCALES, key=lambda s: -hand_mlh(states[s]))
    assert [r["source"] for r in rows] == [str(paths[s]) for s in expected]
    for row, scale in zip(rows, expected):
        assert float(row["mlh"]) == pytest.approx(hand_mlh(states[scale]), abs=1e-12)
    assert [int(r["rank"]) for r in rows] == [int(r["rank_mlh"]) for r in rows] == [1, 2, 3]


def test_table_and_bad_input(scaled_models, tmp_path):
    paths, _ = scaled_models
    result = invoke(str(paths[2.0]), str(paths[1.0]), "--device", "cpu")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "ranked by alpha_weighted (lower is better), best first"
    assert lines[1].split()[:3] == ["rank", "source", "alpha_weighted"]
    assert lines[3].split()[:2] == ["1", str(paths[1.0])]
    missing = invoke(str(tmp_path / "absent.safetensors"))
    assert missing.exit_code == 2 and "absent.safetensors" in missing.output


def test_unusable_weights_go_last_with_the_reason(scaled_models, tmp_path):
    """A NaN (or all-zero) layer drops out of the means, which then flatter the model (issue 26: a model
    with NaN weights ranked first); such models come after every rankable one, unranked, with the reason."""
    paths, states = scaled_models
    broken = {k: v.clone() for k, v in states[4.0].items()}
    broken["dec.weight"][0, 0] = float("nan")
    save_file(broken, str(tmp_path / "nan.safetensors"))
    zeroed = {k: v.clone() for k, v in states[4.0].items()}
    zeroed["dec.weight"].zero_()
    save_file(zeroed, str(tmp_path / "zero.safetensors"))
    result = invoke(str(tmp_path / "nan.safetensors"), str(paths[2.0]), str(tmp_path / "zero.safetensors"),
                    str(paths[1.0]), "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["versions"]
    assert [r["source"] for r in rows] == [str(paths[1.0]), str(paths[2.0]), str(tmp_path / "nan.safetensors"),
                                           str(tmp_path / "zero.safetensors")]
    assert [r["reason"] for r in rows] == ["", "", "1 layer with NaN/Inf weights", "1 all-zero layer"]
    assert [r["rank_alpha_weighted"] for r in rows] == [1, 2, None, None] and [r["rank"] for r in rows] == [1, 2, 3, 4]
    table = invoke(str(tmp_path / "nan.safetensors"), str(paths[1.0]), "--device", "cpu")
    last = table.stdout.splitlines()[4]
    assert last.split()[:2] == ["2", str(tmp_path / "nan.safetensors")] and last.endswith("1 layer with NaN/Inf weights")


def test_all_versions_of_a_registered_model(scaled_models, mlflow_tracking_uri):
    from mlflow import MlflowClient

    from gate.vocabulary import STATUS

    paths, _ = scaled_models
    client = MlflowClient(mlflow_tracking_uri, mlflow_tracking_uri)
    versions = {scale: register_file(client, "ranked", paths[scale]) for scale in SCALES}
    client.set_model_version_tag("ranked", versions[4.0], STATUS, "approved")
    result = invoke("models:/ranked", "--tracking-uri", mlflow_tracking_uri, "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["versions"]
    assert [r["source"] for r in rows] == [f"models:/ranked/{versions[s]}" for s in (1.0, 2.0, 4.0)]
    assert [r["gate_status"] for r in rows] == ["none", "none", "approved"]
    # a blocked version goes last, whatever its weights predict; the table shows gate.status
    client.set_model_version_tag("ranked", versions[1.0], STATUS, "blocked")
    result = invoke("models:/ranked", "--tracking-uri", mlflow_tracking_uri, "--format", "json", "--device", "cpu")
    rows = json.loads(result.stdout)["versions"]
    assert [r["source"] for r in rows] == [f"models:/ranked/{versions[s]}" for s in (2.0, 4.0, 1.0)]
    assert rows[-1]["reason"] == "gate.status is blocked" and rows[-1]["rank_alpha_weighted"] is None
    table = invoke("models:/ranked", "--tracking-uri", mlflow_tracking_uri, "--device", "cpu")
    assert table.stdout.splitlines()[1].split() == ["rank", "source", "alpha_weighted", "alpha", "log_alpha_norm", "mlh",
                                                    "num_analysed", "gate_status", "note"]
    unknown = invoke("models:/no-such-model", "--tracking-uri", mlflow_tracking_uri)
    assert unknown.exit_code == 2 and "no-such-model" in unknown.output
