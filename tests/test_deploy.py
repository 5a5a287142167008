"""deploy/: the container-free topology end to end (Debian PostgreSQL + server with the gate + a
background worker on loopback), and the compose file and Kubernetes manifests validated by their
own tools."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from deploy.local.mlflow_server import free_port

from registry_helpers import register_file

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def topology(action: str, state: Path, port: int) -> dict:
    proc = subprocess.run([sys.executable, str(DEPLOY / "local" / "topology.py"), action, "--state", str(state),
                           "--port", str(port)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def wait_for_status(client, name: str, version: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_model_version(name, version).tags.get("gate.status")
        if status not in (None, "pending"):
            return status
        time.sleep(1)
    raise AssertionError(f"{name} v{version} still pending after {timeout} s")


@pytest.mark.server
def test_local_topology_end_to_end(tmp_path, minilm_dir):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    block = {k: v for k, v in load_file(str(minilm_dir / "model.safetensors")).items() if k.startswith("encoder.layer.0.")}
    save_file(block, str(tmp_path / "healthy.safetensors"))
    block["encoder.layer.0.intermediate.dense.weight"] = block["encoder.layer.0.intermediate.dense.weight"].clone()
    block["encoder.layer.0.intermediate.dense.weight"][0, 0] = float("inf")
    save_file(block, str(tmp_path / "broken.safetensors"))
    # As root, PostgreSQL runs as the postgres user, which must reach the state folder: not under
    # pytest's private tmp_path.
    state, port = Path(tempfile.mkdtemp(prefix="weightgate-topology-")), free_port()
    state.chmod(0o755)
    up = topology("up", state, port)
    try:
        assert up["backend"].startswith("postgresql://")
        client = MlflowClient(up["url"], up["url"])

        healthy = register_file(client, "deployed", tmp_path / "healthy.safetensors")
        broken = register_file(client, "deployed", tmp_path / "broken.safetensors")
        assert wait_for_status(client, "deployed", healthy) == "approved"  # the background worker scanned it
        assert wait_for_status(client, "deployed", broken) == "blocked"
        with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
            client.set_registered_model_alias("deployed", "champion", broken)
        client.set_registered_model_alias("deployed", "champion", healthy)
        restarted = topology("restart-server", state, port)
        client = MlflowClient(restarted["url"], restarted["url"])
        assert client.get_registered_model("deployed").aliases == {"champion": healthy}
        assert client.get_model_version("deployed", broken).tags["gate.status"] == "blocked"
        with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
            client.set_registered_model_alias("deployed", "production", broken)
    finally:
        topology("down", state, port)
        shutil.rmtree(state, ignore_errors=True)


def _compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("no compose client: run deploy/local/install-test-deps.sh (make test does)")


def test_compose_file_is_valid(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text((DEPLOY / ".env.example").read_text())
    proc = subprocess.run([*_compose_command(), "-p", "weightgate", "--env-file", str(env_file), "-f",
                           str(DEPLOY / "compose.yaml"), "--profile", "ray", "config"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rendered = yaml.safe_load(proc.stdout)
    ray_services = {"ray-head", "ray-node", "worker-ray"}  # the Ray cluster option, only with --profile ray
    assert set(rendered["services"]) == {"postgres", "minio", "minio-bucket", "mlflow", "worker"} | ray_services
    assert all(rendered["services"][name]["profiles"] == ["ray"] for name in ray_services)
    assert "--executor ray" in " ".join(rendered["services"]["worker-ray"]["command"])
    assert rendered["services"]["worker-ray"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    worker = rendered["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert rendered["services"]["mlflow"]["environment"]["WEIGHTGATE_APP"] == "weightgate-basic-auth"
    missing = subprocess.run([*_compose_command(), "-p", "weightgate", "-f", str(DEPLOY / "compose.yaml"), "config"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr  # secrets are required


def test_kubernetes_manifests_render():
    if not shutil.which("kubectl"):
        pytest.fail("kubectl is needed to render deploy/k8s (kustomize)")
    proc = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    documents = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents)
    assert ("Deployment", "weightgate-worker") in kinds and ("StatefulSet", "postgres") in kinds
    worker = next(d for d in documents if d["metadata"]["name"] == "weightgate-worker")
    assert worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert all(d["metadata"].get("namespace", "weightgate") == "weightgate" for d in documents)


def test_kubernetes_ray_overlay_adds_a_raycluster():
    if not shutil.which("kubectl"):
        pytest.fail("kubectl is needed to render deploy/k8s-ray (kustomize)")
    proc = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s-ray")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    documents = [d for d in yaml.safe_load_all(proc.stdout) if d]
    [cluster] = [d for d in documents if d["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["namespace"] == "weightgate"
    [gpu_group] = cluster["spec"]["workerGroupSpecs"]
    assert gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    driver = next(d for d in documents if d["metadata"]["name"] == "weightgate-worker-ray")
    assert "--executor ray" in driver["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert ("Deployment", "weightgate-worker") in {(d["kind"], d["metadata"]["name"]) for d in documents}  # the base
