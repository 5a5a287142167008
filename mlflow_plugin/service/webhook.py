"""``weightgate webhook-receiver``: the gate for MLflow servers that cannot load a plugin.

MLflow delivers signed webhooks (``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of
"delivery_id.timestamp.payload">``). On ``model_version.created`` (and on ``gate.status`` set back
to ``pending`` by ``weightgate rescan``) the receiver scans the version and records the decision as
tags; on ``model_version_alias.created`` for a protected alias on a version that is not approved it
deletes the alias again and records the violation. Each event is handled in isolation with the
worker's retries and error status; a delivery the receiver cannot queue gets 503, so MLflow
delivers it again. A delivery id already accepted is acknowledged and not queued again (MLflow
delivers again when an answer was lost), and a delivery older than 5 minutes is refused (a replay).
Deliveries that never arrive are made up for by :mod:`mlflow_plugin.service.reconcile`.

This is enforcement after the fact: the alias exists between its creation and the webhook's
delivery, and without the plugin any client can write ``gate.*`` tags. Use the server plugin
where you can. What MLflow's webhooks do and need: docs/mlflow.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import queue
import threading
import time
from collections import OrderedDict

from flask import Flask, jsonify, request
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from gate import vocabulary as words
from gate.vocabulary import STATUS, EventOutcome, VersionStatus
from mlflow_plugin.decision_record import DecisionRecord
from mlflow_plugin.responses import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE, UNAUTHENTICATED, error_response
from mlflow_plugin.service.decision_run import note_on_run
from mlflow_plugin.service.judge import VersionJudge, WorkerSettings
from mlflow_plugin.service.retry import with_retries
from mlflow_plugin.service.webhook_events import Event, parse_event

_logger = logging.getLogger(__name__)
MAX_AGE_SECONDS = 300  # older deliveries are replays
REMEMBERED_DELIVERIES = 100_000  # delivery ids kept for deduplication (about 4 MB)


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


class TagRecorder:
    """Records by writing the version's four tags directly (there is no plugin to claim with, nor a
    table: the decision's details are in its decision run): one receiver process, events handled one
    at a time from its queue, so every claim is granted."""

    def __init__(self, client: MlflowClient, tracking_uri: str) -> None:
        self.client = client
        self.tracking_uri = tracking_uri.rstrip("/")

    def claim(self, version: ModelVersion) -> bool:
        return True

    def record(self, version: ModelVersion, record: DecisionRecord) -> None:
        tags = {words.SUMMARY: words.fit_tag_value(record.summary)}
        if record.decision_run and record.experiment_id and self.tracking_uri.startswith(("http://", "https://")):
            tags[words.PAGE] = (f"{self.tracking_uri}/#/experiments/{record.experiment_id}/runs/{record.decision_run}"
                                "/artifacts/weightgate/report.html")
        if record.decision_run:
            tags[words.DECISION_RUN] = record.decision_run
        tags[STATUS] = record.status  # last: a decision cut off half-way still reads pending
        existing = self.client.get_model_version(version.name, version.version).tags or {}
        for key in sorted(k for k in existing if words.is_gate_key(k) and k not in tags):
            self.client.delete_model_version_tag(version.name, version.version, key)
        for key, value in tags.items():
            self.client.set_model_version_tag(version.name, version.version, key, value)


class WebhookGate:
    """The receiver's handling of each event, judging versions with a :class:`VersionJudge` that
    records through a :class:`TagRecorder`."""

    def __init__(self, settings: WorkerSettings) -> None:
        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        self.judge = VersionJudge(settings, TagRecorder(client, settings.tracking_uri), client=client)

    def scan_if_pending(self, name: str, version: str) -> None:
        """Scan a version unless it has a decision already (a delivery repeated by MLflow)."""
        judge = self.judge
        current, _ = with_retries(f"reading models:/{name}/{version}", lambda: judge.client.get_model_version(name, version),
                                  judge.settings.retry)
        if (current.tags or {}).get(STATUS, VersionStatus.PENDING) == VersionStatus.PENDING and judge.claim_or_skip(current):
            judge.process(current)

    def on_alias(self, name: str, alias: str, version: str) -> None:
        judge = self.judge
        if not judge.config.is_protected(alias):
            return
        tags = judge.client.get_model_version(name, version).tags or {}
        if tags.get(STATUS) in judge.config.approving_statuses():
            return
        judge.client.delete_registered_model_alias(name, alias)
        when = words.utc_timestamp()
        status = tags.get(STATUS, words.NO_STATUS)
        note = f"protected alias '{alias}' was set on this version ({status}) and removed by weightgate at {when}"
        summary = tags.get(words.SUMMARY) or status
        judge.client.set_model_version_tag(name, version, words.SUMMARY, words.fit_tag_value(
            f"{summary} | protected alias '{alias}' removed at {when}: not approved"))
        if tags.get(words.DECISION_RUN):
            note_on_run(judge.client, tags[words.DECISION_RUN], words.RUN_VIOLATION, note)
        _logger.warning("weightgate webhook: %s version %s: %s", name, version, note,
                        extra={"fields": {"event": "alias_removed", "model": name, "version": _number(version),
                                          "alias": alias}})

    def handle(self, event: "Event") -> None:
        """One event, retried on transient errors; a failure is logged and recorded, never fatal."""
        if event.kind == ("model_version", "created"):
            self.scan_if_pending(event.data["name"], event.data["version"])
        elif event.kind == ("model_version_tag", "set"):
            if event.data["key"] == STATUS and event.data["value"] == VersionStatus.PENDING:  # `weightgate rescan`
                self.scan_if_pending(event.data["name"], event.data["version"])
        elif event.kind == ("model_version_alias", "created"):
            with_retries(f"checking alias {event.data['alias']} of models:/{event.data['name']}/{event.data['version']}",
                         lambda: self.on_alias(event.data["name"], event.data["alias"], event.data["version"]),
                         self.judge.settings.retry)


class EventLoop:
    """One thread handling accepted events in order; each event is isolated from the next."""

    def __init__(self, gate: WebhookGate, capacity: int = 1000) -> None:
        self.gate = gate
        self.events: queue.Queue[Event] = queue.Queue(maxsize=capacity)
        self._unfinished = 0  # accepted and not yet handled (queued, or being handled)
        self._finished = threading.Condition()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="weightgate-events")
        self.thread.start()

    def accept(self, event: Event) -> bool:
        """Queue ``event``; False when it cannot be taken now (the caller answers 503, MLflow retries)."""
        if not self.thread.is_alive():
            return False
        with self._finished:
            try:
                self.events.put_nowait(event)
            except queue.Full:
                return False
            self._unfinished += 1
        return True

    def wait_until_idle(self, timeout: float) -> bool:
        """Wait until every accepted event has been handled (its outcome logged); False on timeout.

        For a caller that must know the queue has room again (tests, a graceful shutdown)."""
        with self._finished:
            return self._finished.wait_for(lambda: self._unfinished == 0, timeout)

    def _loop(self) -> None:
        while True:
            event = self.events.get()
            try:
                self._handle(event)
            finally:
                with self._finished:
                    self._unfinished -= 1
                    self._finished.notify_all()

    def _handle(self, event: Event) -> None:
        started = time.monotonic()
        outcome = EventOutcome.HANDLED
        try:
            self.gate.handle(event)
        except Exception:  # one event's failure is logged with its delivery; the loop goes on
            outcome = EventOutcome.FAILED
            _logger.exception("weightgate webhook: event %s.%s (delivery %s) failed", *event.kind,
                              event.delivery_id)
        _logger.info("weightgate webhook: %s.%s %s", *event.kind, outcome, extra={"fields": {
            "event": "webhook_event", "kind": ".".join(event.kind), "delivery": event.delivery_id,
            "model": event.data.get("name"), "version": _number(event.data.get("version")), "outcome": outcome,
            "duration_s": round(time.monotonic() - started, 3)}})


class SeenDeliveries:
    """Delivery ids already accepted, the oldest forgotten first (a bounded memory, thread-safe)."""

    def __init__(self, capacity: int = REMEMBERED_DELIVERIES) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, delivery_id: str) -> bool:
        """Note ``delivery_id``; False when it was noted before (checked and noted at once)."""
        with self._lock:
            if delivery_id in self._ids:
                return False
            self._ids[delivery_id] = None
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
            return True

    def forget(self, delivery_id: str) -> None:
        """A delivery that was not taken after all (503): its next delivery is new."""
        with self._lock:
            self._ids.pop(delivery_id, None)


def create_receiver(gate: WebhookGate, secret: str, capacity: int = 1000,
                    reconcile_seconds: float | None = None) -> Flask:
    """The receiver as a Flask app: POST / takes signed deliveries, GET /healthz reports liveness.

    Answers: 200 accepted (or ignored: an event the gate does not handle, or a delivery id already
    accepted), 400 malformed, 401 bad or stale signature (older than 5 minutes: a replay), 503 when
    the event cannot be queued (MLflow then delivers it again). With ``reconcile_seconds`` a
    :class:`~mlflow_plugin.service.reconcile.Reconciler` queues, that often, the versions whose
    delivery never came.
    """
    app = Flask("weightgate-webhook")
    loop = EventLoop(gate, capacity)
    seen = SeenDeliveries()
    app.extensions["weightgate_events"] = loop  # for whoever must wait on the queue (EventLoop.wait_until_idle)
    if reconcile_seconds:
        from mlflow_plugin.service.reconcile import Reconciler

        app.extensions["weightgate_reconciler"] = Reconciler(gate, loop, reconcile_seconds).start()

    @app.post("/")
    def deliver():
        body = request.get_data()
        delivery_id = request.headers.get("X-MLflow-Delivery-Id", "")
        if not verify_signature(secret, delivery_id, request.headers.get("X-MLflow-Timestamp", ""), body,
                                request.headers.get("X-MLflow-Signature", "")):
            return error_response(UNAUTHENTICATED, "invalid or stale signature")
        try:
            event = parse_event(delivery_id, body)
        except ValueError as err:
            return error_response(INVALID_PARAMETER_VALUE, f"malformed delivery: {err}")
        if event is None:
            return jsonify({"accepted": False, "reason": "not an event weightgate handles"}), 200
        if delivery_id and not seen.first(delivery_id):
            _logger.info("weightgate webhook: delivery %s already accepted", delivery_id, extra={"fields": {
                "event": "webhook_event", "delivery": delivery_id, "outcome": EventOutcome.DUPLICATE}})
            return jsonify({"accepted": False, "reason": "delivery already accepted"}), 200
        if not loop.accept(event):
            seen.forget(delivery_id)
            return error_response(TEMPORARILY_UNAVAILABLE, "cannot queue the event now; deliver it again")
        return jsonify({"accepted": True}), 200

    @app.get("/healthz")
    def health():
        alive = loop.thread.is_alive()
        return jsonify({"events_thread": alive, "queued": loop.events.qsize()}), 200 if alive else 503

    return app


def _number(version: str | None) -> int | str | None:
    """A version number as a JSON number (a malformed one as given)."""
    return int(version) if version and version.isdigit() else version


def pending_on_start(gate: WebhookGate) -> int:
    """Versions created while the receiver was down have no decision yet: scan them now."""
    count = 0
    for version in gate.judge.pending_versions():
        if gate.judge.claim_or_skip(version):
            gate.judge.process(version)
            count += 1
    return count
