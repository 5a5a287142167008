"""Webhook mode against a plain ``mlflow server`` (no plugin): signed deliveries are scanned, a
protected alias on an unapproved version is removed after the fact, forged deliveries refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from safetensors.torch import save_file

from deploy.local.mlflow_server import free_port, mlflow_server
from mlflow_plugin.service.webhook import verify_signature

from registry_helpers import register_file, two_minilm_matrices

SECRET = "webhook-signing-secret"


def wait_for(predicate, timeout: float = 600.0):
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


@pytest.mark.server
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
            wait_for(lambda: _listening(port))
            client.create_webhook("weightgate", f"http://127.0.0.1:{port}/", secret=SECRET,
                                  events=["model_version.created", "model_version_alias.created",
                                          "model_version_tag.set"])
            weight = torch.randn(48, 48)
            weight[1, 1] = float("nan")
            save_file({"w.weight": weight}, tmp_path / "model.safetensors")
            version = register_file(client, "hooked", tmp_path / "model.safetensors")
            status = wait_for(lambda: client.get_model_version("hooked", version).tags.get("gate.status"))
            assert status == "blocked"
            tags = client.get_model_version("hooked", version).tags
            assert set(tags) == {"gate.status", "gate.summary", "gate.page", "gate.decision_run"}
            assert tags["gate.page"].startswith(f"{url}/#/experiments/") and tags["gate.page"].endswith("report.html")
            assert "no-nonfinite-layers" in client.get_run(tags["gate.decision_run"]).data.tags["weightgate.reason"]
            client.set_registered_model_alias("hooked", "champion", version)  # accepted: no plugin here
            wait_for(lambda: "champion" not in client.get_registered_model("hooked").aliases)
            # The receiver removes the alias, then records why: wait for the record too.
            violation = wait_for(lambda: client.get_run(tags["gate.decision_run"]).data.tags.get("weightgate.violation"))
            assert "champion" in violation and "removed by weightgate" in violation
            summary = client.get_model_version("hooked", version).tags["gate.summary"]
            assert summary.startswith("blocked: ") and "protected alias 'champion' removed at" in summary
            forged = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"{}", method="POST",
                                            headers={"X-MLflow-Signature": "v1,AAAA", "X-MLflow-Delivery-Id": "x",
                                                     "X-MLflow-Timestamp": str(int(time.time()))})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(forged, timeout=120)
            assert refused.value.code == 401
        finally:
            receiver.terminate()
            output = receiver.communicate(timeout=300)[0]
        assert "weightgate webhook receiver on" in output, output[-2000:]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _signed(body: dict, delivery: str = "d-1", age: int = 0) -> dict:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    text = json.dumps(body)
    now = str(int(time.time()) - age)
    return {"data": text, "content_type": "application/json",
            "headers": {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": now,
                        "X-MLflow-Signature": _generate_hmac_signature(SECRET, delivery, now, text)}}


@pytest.mark.server
def test_receiver_isolates_events_and_refuses_what_it_cannot_take(tmp_path, monkeypatch, minilm_dir, caplog):
    """In-process receiver (Flask test client) against a real plain server: each answer code, a
    queue that is full answers 503 (MLflow delivers again), a failing event does not stop the next,
    and a repeated delivery of a decided version is not scanned twice.

    Every wait is on an event: the scan reaching its checkpoint, the receiver's queue drained
    (EventLoop.wait_until_idle), never on the thread having moved on by some time."""
    from mlflow import MlflowClient

    from mlflow_plugin.service.webhook import WebhookGate, create_receiver
    from mlflow_plugin.service.worker import WorkerSettings

    save_file(two_minilm_matrices(minilm_dir), tmp_path / "model.safetensors")
    monkeypatch.setenv("WEIGHTGATE_PAUSE_AT", "scanning")
    monkeypatch.setenv("WEIGHTGATE_PAUSE_DIR", str(tmp_path))
    with mlflow_server(tmp_path, env={"MLFLOW_DISABLE_TELEMETRY": "true"}) as url:
        client = MlflowClient(url, url)
        first = register_file(client, "queued", tmp_path / "model.safetensors")
        second = register_file(client, "queued", tmp_path / "model.safetensors")
        gate = WebhookGate(WorkerSettings(url, device="cpu"))
        app = create_receiver(gate, SECRET, capacity=1)
        events, receiver = app.extensions["weightgate_events"], app.test_client()

        def created(version: str, delivery: str):
            return receiver.post("/", **_signed({"entity": "model_version", "action": "created",
                                                 "data": {"name": "queued", "version": version}}, delivery))

        assert receiver.post("/", data="{}", headers={"X-MLflow-Signature": "v1,AAAA"}).status_code == 401
        assert receiver.post("/", **_signed({"entity": "model_version"})).status_code == 400
        missing = receiver.post("/", **_signed({"entity": "model_version", "action": "created", "data": {"name": "x"}}))
        assert missing.status_code == 400 and "version" in missing.get_json()["message"]
        assert missing.get_json()["error_code"] == "INVALID_PARAMETER_VALUE"
        ignored = receiver.post("/", **_signed({"entity": "registered_model", "action": "created", "data": {}}))
        assert ignored.status_code == 200 and ignored.get_json()["accepted"] is False

        assert created(first, "a").status_code == 200
        wait_for(lambda: (tmp_path / "scanning.reached").exists())  # the event thread is busy with it
        assert receiver.post("/", **_signed({"entity": "model_version", "action": "created",
                                             "data": {"name": "ghost", "version": "1"}}, "b")).status_code == 200
        refused = created(first, "c")
        assert refused.status_code == 503  # queue (capacity 1) is full: MLflow will retry
        assert refused.get_json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        (tmp_path / "scanning.release").touch()
        assert events.wait_until_idle(timeout=600)  # "a" decided, then the "ghost" event "b" handled
        assert client.get_model_version("queued", first).tags.get("gate.status") == "approved"
        ghost = [r for r in caplog.records if r.levelname == "ERROR" and "(delivery b) failed" in r.getMessage()]
        assert len(ghost) == 1  # the failing event was logged with its delivery, and the loop went on
        assert created(first, "d").status_code == 200  # a repeated delivery: accepted, not rescanned
        assert events.wait_until_idle(timeout=600)  # capacity 1: "d" handled, the queue has room
        assert created(second, "e").status_code == 200  # after the failed "ghost" event
        assert wait_for(lambda: client.get_model_version("queued", second).tags.get("gate.status")) == "approved"
        assert receiver.get("/healthz").get_json()["events_thread"] is True
        experiment = client.get_experiment_by_name("weightgate")
        runs = client.search_runs([experiment.experiment_id], "tags.`weightgate.model` = 'queued'")
        assert sorted(r.data.tags["weightgate.version"] for r in runs) == sorted([first, second])


@pytest.mark.server
def test_deliveries_are_taken_once_and_stale_ones_refused(tmp_path, minilm_dir):
    """MLflow delivers again when an answer is lost: the same delivery id is acknowledged, not queued
    twice. A delivery signed more than 300 s ago is a replay (401); one signed 299 s ago is not."""
    from mlflow import MlflowClient

    from mlflow_plugin.service.webhook import WebhookGate, create_receiver
    from mlflow_plugin.service.worker import WorkerSettings

    save_file(two_minilm_matrices(minilm_dir), tmp_path / "model.safetensors")
    with mlflow_server(tmp_path, env={"MLFLOW_DISABLE_TELEMETRY": "true"}) as url:
        client = MlflowClient(url, url)
        version = register_file(client, "once", tmp_path / "model.safetensors")
        app = create_receiver(WebhookGate(WorkerSettings(url, device="cpu")), SECRET)
        events, receiver = app.extensions["weightgate_events"], app.test_client()
        body = {"entity": "model_version", "action": "created", "data": {"name": "once", "version": version}}
        first = receiver.post("/", **_signed(body, "delivery-7"))
        again = receiver.post("/", **_signed(body, "delivery-7"))
        assert first.status_code == again.status_code == 200
        assert first.get_json() == {"accepted": True}
        assert again.get_json() == {"accepted": False, "reason": "delivery already accepted"}
        assert receiver.post("/", **_signed(body, "delivery-8", age=301)).status_code == 401
        assert receiver.post("/", **_signed(body, "delivery-9", age=299)).status_code == 200
        assert events.wait_until_idle(timeout=600)
        assert client.get_model_version("once", version).tags["gate.status"] == "approved"
        runs = client.search_runs([client.get_experiment_by_name("weightgate").experiment_id],
                                  "tags.`weightgate.model` = 'once'")
        assert len(runs) == 1  # delivery-9 found it decided; delivery-7's repeat never reached the queue


@pytest.mark.server
def test_a_lost_delivery_is_found_within_a_minute(tmp_path, minilm_dir, caplog):
    """No webhook is registered at all, so every delivery is lost: the receiver's reconciliation
    (every 30 s) finds the new version, queues it, and it is decided."""
    import logging

    from mlflow import MlflowClient

    from mlflow_plugin.service.webhook import WebhookGate, create_receiver
    from mlflow_plugin.service.worker import WorkerSettings

    caplog.set_level(logging.INFO, logger="mlflow_plugin")
    save_file(two_minilm_matrices(minilm_dir), tmp_path / "model.safetensors")
    with mlflow_server(tmp_path, env={"MLFLOW_DISABLE_TELEMETRY": "true"}) as url:
        client = MlflowClient(url, url)
        app = create_receiver(WebhookGate(WorkerSettings(url, device="cpu")), SECRET, reconcile_seconds=30)
        reconciler = app.extensions["weightgate_reconciler"]
        try:
            version = register_file(client, "lost", tmp_path / "model.safetensors")
            created_ms = client.get_model_version("lost", version).creation_timestamp
            assert wait_for(lambda: client.get_model_version("lost", version).tags.get("gate.status")
                            not in (None, "pending")) is True
        finally:
            reconciler.stop()
        found = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "reconciled"
                 and r.fields["model"] == "lost"]
        assert found and found[0].fields["version"] == int(version)
        assert found[0].created * 1000 - created_ms <= 60_000  # queued within a minute of its registration
        assert client.get_model_version("lost", version).tags["gate.status"] == "approved"
