"""``--app-name weightgate-basic-auth``: MLflow's basic-auth authenticates first, then the gate
enforces; a basic-auth admin may override without the override credential; the gate page shows a
non-admin only the models basic-auth lets them read, and runs the chain check for admins only."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request

import pytest
import torch
from safetensors.torch import save_file

from deploy.local.mlflow_server import mlflow_server

from registry_helpers import register_file

pytestmark = pytest.mark.server  # every test here runs against real servers

ADMIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "weightgate-admin-pw1"}
ENV = {"WEIGHTGATE_WORKER_TOKEN": "worker-secret", "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN["MLFLOW_TRACKING_PASSWORD"],
       "MLFLOW_DISABLE_TELEMETRY": "true",
       "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}


def test_gate_composes_with_basic_auth(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    for key, value in ADMIN.items():
        monkeypatch.setenv(key, value)
    with mlflow_server(tmp_path, ("--app-name", "weightgate-basic-auth"), env=ENV) as url:
        anonymous = urllib.request.Request(f"{url}/api/2.0/mlflow/registered-models/search")
        try:
            urllib.request.urlopen(anonymous, timeout=30)
            raise AssertionError("an unauthenticated request was served")
        except urllib.error.HTTPError as err:
            assert err.code == 401
        client = MlflowClient(url, url)
        torch.manual_seed(0)
        weight = torch.randn(64, 64)
        weight[0, 0] = float("nan")
        save_file({"w.weight": weight}, tmp_path / "model.safetensors")
        version = client.get_model_version("guarded", register_file(client, "guarded", tmp_path / "model.safetensors"))
        assert version.tags["gate.status"] == "pending"
        try:
            client.set_registered_model_alias("guarded", "champion", version.version)
            raise AssertionError("a pending version was promoted")
        except MlflowException as err:
            assert "waiting for its weightgate scan" in err.message
        worker = subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once", "--device",
                                 "cpu"], capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
        assert worker.returncode == 0, worker.stderr[-2000:]
        tags = client.get_model_version("guarded", version.version).tags
        assert tags["gate.status"] == "blocked", tags.get("gate.reason")  # NaN weight
        token = base64.b64encode(f"{ADMIN['MLFLOW_TRACKING_USERNAME']}:{ADMIN['MLFLOW_TRACKING_PASSWORD']}".encode())
        request = urllib.request.Request(
            f"{url}/api/2.0/weightgate/override", method="POST",
            data=json.dumps({"name": "guarded", "version": version.version, "reason": "admin decision"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Basic {token.decode()}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["by"] == "basic-auth-admin:admin"
        client.set_registered_model_alias("guarded", "champion", version.version)

        from mlflow.server.auth.client import AuthServiceClient

        register_file(client, "visible", tmp_path / "model.safetensors")
        users = AuthServiceClient(url)  # as the admin (MLFLOW_TRACKING_USERNAME)
        users.create_user("viewer", "viewer-password-1234")
        users.grant_user_permission("viewer", "registered_model", "guarded", "DENY")
        viewer = ("viewer", "viewer-password-1234")
        status, ledger = _get(f"{url}/weightgate/api/ledger", viewer)
        assert status == 200 and {row["model"] for row in json.loads(ledger)["entries"]} == {"visible"}
        status, page = _get(f"{url}/weightgate/", viewer)
        assert status == 200 and "visible" in page and "guarded" not in page
        assert _get(f"{url}/weightgate/model?name=guarded", viewer)[0] == 404
        status, refused = _get(f"{url}/weightgate/api/ledger/verify", viewer)
        assert status == 403 and json.loads(refused)["error_code"] == "PERMISSION_DENIED"
        admin = (ADMIN["MLFLOW_TRACKING_USERNAME"], ADMIN["MLFLOW_TRACKING_PASSWORD"])
        status, verified = _get(f"{url}/weightgate/api/ledger/verify", admin)
        assert status == 200 and json.loads(verified)["ok"] is True
        status, page = _get(f"{url}/weightgate/", admin)
        assert "visible" in page and "guarded" in page
        assert _get(f"{url}/weightgate/", None)[0] == 401


def _get(url: str, user: tuple[str, str] | None) -> tuple[int, str]:
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(user).encode()).decode()} if user else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
