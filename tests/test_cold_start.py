"""Cold start: `weightgate scan` of a safetensors file imports only what that source and command
need, and `weightgate --help` imports no engine at all. Evidence is the interpreter's own import
log (``python -X importtime``) of a real subprocess; no timing is asserted (bench/bench_cold_start.py
measures the times)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

# scipy.linalg: solves go through the OpenBLAS numpy's wheel already loaded (gate.solver.lapack).
HEAVY_FOR_A_SCAN = ("onnx", "mlflow", "great_expectations", "matplotlib", "transformers", "sklearn", "powerlaw",
                    "scipy.stats", "scipy.linalg", "jinja2", "ray")


def _imported(arguments: list[str]) -> set[str]:
    """Top-level and dotted module names the command imported, from its -X importtime log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "gate", *arguments], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "gate.cli.app" in names  # the log is really there
    return names


def test_scan_of_a_safetensors_file_imports_no_optional_stack(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({"fc.weight": torch.randn(32, 16), "fc.bias": torch.randn(32)}, path)
    imported = _imported(["scan", str(path), "--format", "json"])
    assert "gate.scanning.pipeline" in imported and "safetensors" in imported
    assert not {name for name in imported if name.split(".")[0] in HEAVY_FOR_A_SCAN or name in HEAVY_FOR_A_SCAN}


def test_help_imports_no_engine():
    imported = _imported(["--help"])
    assert not {"torch", "numpy", "pandas", "gate.scanning.pipeline", "mlflow"} & imported
