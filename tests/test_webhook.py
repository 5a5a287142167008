"""Webhook mode against a plain ``mlflow server`` (no plugin): signed deliveries are scanned, a
protected alias on an unapproved version is removed after the fact, forged deliveries refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from safetensors.torch import save_file

from mlflow_plugin.local_server import free_port, mlflow_server
from mlflow_plugin.webhook import verify_signature
from registry_helpers import register_file

SECRET = "webhook-signing-secret"


def wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("condition not reached in time")


def test_signature_check_matches_mlflow_delivery():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    now = str(int(time.time()))
    body = '{"entity": "model_version", "action": "created", "data": {}}'
    signature = _generate_hmac_signature(SECRET, "delivery-1", now, body)
    assert verify_signature(SECRET, "delivery-1", now, body.encode(), signature)
    assert not verify_signature("other-secret", "delivery-1", now, body.encode(), signature)
    assert not verify_signature(SECRET, "delivery-1", now, body.encode() + b" ", signature)
    stale = str(int(time.time()) - 3600)
    assert not verify_signature(SECRET, "delivery-1", stale, body.encode(), _generate_hmac_signature(SECRET, "delivery-1", stale, body))


def test_webhook_mode_end_to_end(tmp_path):
    from cryptography.fernet import Fernet
    from mlflow import MlflowClient

    server_env = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                  "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
                  "MLFLOW_DISABLE_TELEMETRY": "true"}
    with mlflow_server(tmp_path, env=server_env) as url:
        client = MlflowClient(url, url)
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-m", "gate", "webhook-receiver", "--tracking-uri", url,
                                     "--secret", SECRET, "--port", str(port), "--device", "cpu"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: _listening(port), timeout=60)
            client.create_webhook("weightgate", f"http://127.0.0.1:{port}/",
                                  events=["model_version.created", "model_version_alias.created"], secret=SECRET)
            weight = torch.randn(48, 48)
            weight[1, 1] = float("nan")
            save_file({"w.weight": weight}, tmp_path / "model.safetensors")
            version = register_file(client, "hooked", tmp_path / "model.safetensors")
            status = wait_for(lambda: client.get_model_version("hooked", version).tags.get("gate.status"))
            assert status == "blocked"
            client.set_registered_model_alias("hooked", "champion", version)  # accepted: no plugin here
            wait_for(lambda: "champion" not in client.get_registered_model("hooked").aliases)
            # The receiver removes the alias, then records why: wait for the record too.
            violation = wait_for(lambda: client.get_model_version("hooked", version).tags.get("gate.violation"))
            assert "champion" in violation and "removed by weightgate" in violation
            forged = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"{}", method="POST",
                                            headers={"X-MLflow-Signature": "v1,AAAA", "X-MLflow-Delivery-Id": "x",
                                                     "X-MLflow-Timestamp": str(int(time.time()))})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(forged, timeout=10)
            assert refused.value.code == 401
        finally:
            receiver.terminate()
            output = receiver.communicate(timeout=30)[0]
        assert "weightgate webhook receiver on" in output, output[-2000:]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
