"""``weightgate webhook-receiver``: the gate for MLflow servers that cannot load a plugin.

MLflow delivers signed webhooks (``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of
"delivery_id.timestamp.payload">``). On ``model_version.created`` the receiver scans the version
and records the decision as tags; on ``model_version_alias.created`` for a protected alias on a
version that is not approved it deletes the alias again and records the violation.

This is enforcement after the fact: the alias exists between its creation and the webhook's
delivery, and without the plugin any client can write ``gate.*`` tags. Use the server plugin
where you can.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlflow.entities.model_registry import ModelVersion

from mlflow_plugin import vocabulary as words
from mlflow_plugin.vocabulary import STATUS
from mlflow_plugin.worker import Worker, WorkerSettings

_logger = logging.getLogger(__name__)
MAX_AGE_SECONDS = 300  # older deliveries are replays


def verify_signature(secret: str, delivery_id: str, timestamp: str, body: bytes, signature: str) -> bool:
    """MLflow's webhook signature, checked in constant time; stale timestamps are rejected."""
    try:
        if abs(time.time() - int(timestamp)) > MAX_AGE_SECONDS:
            return False
    except ValueError:
        return False
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    return hmac.compare_digest(expected, signature)


class WebhookGate(Worker):
    """The worker's scan and logging, recording tags directly (there is no plugin to claim with)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._connect(settings)

    def claim(self, version: ModelVersion) -> bool:
        return True  # one receiver process, events handled one at a time from its queue

    def record(self, version: ModelVersion, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(version.name, version.version, key, words.fit_tag_value(value))
        _logger.info("weightgate webhook: %s version %s -> %s", version.name, version.version, tags[STATUS])

    def on_alias(self, name: str, alias: str, version: str) -> None:
        if not self.config.is_protected(alias):
            return
        tags = self.client.get_model_version(name, version).tags or {}
        if tags.get(STATUS) in self.config.approving_statuses():
            return
        self.client.delete_registered_model_alias(name, alias)
        when = words.utc_timestamp()
        note = (f"protected alias '{alias}' was set on this version ({tags.get(STATUS, words.NO_STATUS)}) and removed "
                f"by weightgate at {when}")
        self.client.set_model_version_tag(name, version, words.VIOLATION, note)
        _logger.warning("weightgate webhook: %s version %s: %s", name, version, note)


def serve(gate: WebhookGate, secret: str, host: str, port: int) -> ThreadingHTTPServer:
    """Start the HTTP server and the event thread; returns the server (``serve_forever`` it)."""
    events: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if not verify_signature(secret, self.headers.get("X-MLflow-Delivery-Id", ""),
                                    self.headers.get("X-MLflow-Timestamp", ""), body,
                                    self.headers.get("X-MLflow-Signature", "")):
                self.send_response(401)
                self.end_headers()
                return
            events.put(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, fmt: str, *args) -> None:
            _logger.debug(fmt, *args)

    def handle_events() -> None:
        while True:
            event = events.get()
            data = event.get("data", {})
            kind = (event.get("entity"), event.get("action"))
            if kind == ("model_version", "created"):
                gate.process(gate.client.get_model_version(data["name"], data["version"]))
            elif kind == ("model_version_alias", "created"):
                gate.on_alias(data["name"], data["alias"], data["version"])

    threading.Thread(target=handle_events, daemon=True, name="weightgate-events").start()
    return ThreadingHTTPServer((host, port), Handler)


def pending_on_start(gate: WebhookGate) -> int:
    """Versions created while the receiver was down have no decision yet: scan them now."""
    count = 0
    for version in gate.pending_versions():
        gate.process(version)
        count += 1
    return count

