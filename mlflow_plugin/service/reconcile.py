"""Making up for webhook deliveries that never arrive (a receiver restart, a network drop, MLflow
giving up its retries): every ``interval`` seconds the receiver asks the registry for the versions
updated since its last look and queues those without a decision, as if their
``model_version.created`` delivery had come. A lost delivery is found within two intervals (30 s by
default: within a minute).

The look-back overlaps the previous one by ``interval`` plus a minute, for clock differences
between the receiver and the server; a version queued twice is scanned once (the event handler
reads its status first). Protected aliases whose delivery was lost are not looked for: MLflow does
not date alias changes, so finding them means reading every alias of the registry (README, "Webhook
mode").
"""

from __future__ import annotations

import logging
import threading
import time

from gate.vocabulary import STATUS, VersionStatus
from mlflow_plugin.service.retry import with_retries
from mlflow_plugin.service.webhook_events import Event

_logger = logging.getLogger(__name__)
CLOCK_MARGIN_SECONDS = 60.0


class Reconciler:
    """The periodic look, on a daemon thread beside the receiver's event loop."""

    def __init__(self, gate, loop, interval: float) -> None:
        self.gate = gate      # mlflow_plugin.service.webhook.WebhookGate
        self.loop = loop      # mlflow_plugin.service.webhook.EventLoop
        self.interval = interval
        self.since_ms = int(time.time() * 1000)  # what came before is pending_on_start's
        self.thread = threading.Thread(target=self._run, daemon=True, name="weightgate-reconcile")
        self.found = 0
        self._stopped = threading.Event()

    def start(self) -> "Reconciler":
        self.thread.start()
        return self

    def stop(self) -> None:
        """No further looks (a look under way finishes)."""
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.look()
            except Exception:  # the registry unreachable for a while: the next look covers this one's window
                _logger.exception("weightgate webhook: reconciliation failed; trying again in %.0f s", self.interval,
                                  extra={"fields": {"event": "reconcile_failed"}})

    def look(self) -> int:
        """Queue the undecided versions updated since the last look; returns how many were queued."""
        started_ms = int(time.time() * 1000)
        window_ms = self.since_ms - int((self.interval + CLOCK_MARGIN_SECONDS) * 1000)
        judge = self.gate.judge
        versions, _ = with_retries("listing recently updated versions", lambda: _updated_since(judge.client, window_ms),
                                   judge.settings.retry)
        queued = 0
        for version in versions:
            if (version.tags or {}).get(STATUS, VersionStatus.PENDING) != VersionStatus.PENDING:
                continue
            event = Event(f"reconcile:{version.name}/{version.version}", ("model_version", "created"),
                          {"name": version.name, "version": str(version.version)})
            if self.loop.accept(event):
                queued += 1
                _logger.info("weightgate webhook: models:/%s/%s has no decision and no delivery queued it",
                             version.name, version.version, extra={"fields": {
                                 "event": "reconciled", "model": version.name, "version": int(version.version)}})
        self.since_ms = started_ms
        self.found += queued
        return queued


def _updated_since(client, since_ms: int) -> list:
    """The versions updated at or after ``since_ms``. MLflow's version search cannot filter on the
    update time (400: not a searchable attribute) but can order by it: pages are read, newest first,
    until a version older than ``since_ms`` appears."""
    found, token = [], None
    while True:
        page = client.search_model_versions(order_by=["last_updated_timestamp DESC"], max_results=200,
                                            page_token=token)
        for version in page:
            if version.last_updated_timestamp < since_ms:
                return found
            found.append(version)
        token = page.token
        if not token:
            return found
