"""``weightgate scan`` output formats, checked against the Python API's numbers (in-process, with
click's CliRunner), and the ``python -m gate`` and ``weightgate`` entry points as a shell runs them."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

import gate
from gate.cli.app import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("cli") / "model.safetensors"
    save_file({"enc.weight": torch.randn(96, 48), "dec.weight": torch.randn(48, 96), "enc.bias": torch.randn(96),
               "small.weight": torch.randn(4, 4)}, path)
    return path


def scan_cli(*args: str) -> Result:
    result = CliRunner().invoke(main, ["scan", *args])
    assert result.exit_code == 0, result.output
    return result


def test_json_format(checkpoint):
    result = scan_cli(str(checkpoint), "--format", "json", "--device", "cpu")
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    document = json.loads(result.stdout)
    assert document["source"] == str(checkpoint)
    assert set(document) >= {"source", "summary", "layers"}
    rows = {row["name"]: row for row in document["layers"]}
    assert set(rows) == {"dec", "enc", "small"}
    assert rows["enc"]["shape"] == [96, 48] and rows["enc"]["status"] == "ok"
    assert rows["small"]["status"] == "skipped" and "min_evals" in rows["small"]["reason"]
    expected = gate.scan(checkpoint, device="cpu").layers.set_index("name")
    assert rows["enc"]["alpha"] == pytest.approx(expected.loc["enc", "alpha"], rel=1e-12)
    assert document["summary"]["num_analysed"] == 2 and document["summary"]["num_skipped"] == 1


def test_csv_format(checkpoint):
    result = scan_cli(str(checkpoint), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["name"] for r in rows] == ["dec", "enc", "small"]
    assert rows[1]["shape"] == "96x48"
    assert float(rows[1]["alpha"]) > 1


def test_table_format_and_full_metrics(checkpoint):
    result = scan_cli(str(checkpoint), "--mp-fit", "--randomize", "--seed", "3")
    lines = result.stdout.splitlines()
    assert lines[0] == f"source: {checkpoint}"
    assert lines[1].split()[:4] == ["name", "layer_type", "shape", "status"]
    assert any(line.startswith("enc ") and " ok " in line for line in lines)
    assert any(line.startswith("mp_softrank: ") for line in lines)


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
@pytest.mark.parametrize("entry_point", [[sys.executable, "-m", "gate"], [str(Path(sys.executable).parent / "weightgate")]])
def test_entry_points_run_scan_as_a_shell_does(checkpoint, entry_point):
    """The process boundary: the module and the console script pyproject.toml declares, exit status
    and streams as a shell sees them."""
    proc = subprocess.run([*entry_point, "scan", str(checkpoint), "--format", "json", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout)["summary"]["num_analysed"] == 2
    version = subprocess.run([*entry_point, "--version"], capture_output=True, text=True, timeout=300)
    assert version.returncode == 0 and version.stdout.startswith("weightgate, version ")
