"""The webhook events weightgate handles, parsed from a delivery's body: what the receiver
(:mod:`mlflow_plugin.service.webhook`) and the reconciliation
(:mod:`mlflow_plugin.service.reconcile`, which makes up events for lost deliveries) both queue."""

from __future__ import annotations

import json
from dataclasses import dataclass

# The payload fields each handled event needs (mlflow.webhooks.types); other events are acknowledged.
REQUIRED_FIELDS = {
    ("model_version", "created"): ("name", "version"),
    ("model_version_tag", "set"): ("name", "version", "key", "value"),
    ("model_version_alias", "created"): ("name", "alias", "version"),
}


@dataclass(frozen=True)
class Event:
    """One event to handle: ``delivery_id`` is MLflow's (``reconcile:NAME/VERSION`` for one the
    reconciliation made up), ``kind`` (entity, action), ``data`` the payload's fields as strings."""

    delivery_id: str
    kind: tuple[str, str]
    data: dict


def parse_event(delivery_id: str, body: bytes) -> Event | None:
    """The event in a delivery, or None when it is not one the gate handles; ValueError when malformed."""
    payload = json.loads(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise ValueError("the body must be a JSON object with entity, action and data")
    kind = (str(payload.get("entity")), str(payload.get("action")))
    if kind not in REQUIRED_FIELDS:
        return None
    missing = [key for key in REQUIRED_FIELDS[kind] if payload["data"].get(key) in (None, "")]
    if missing:
        raise ValueError(f"{kind[0]}.{kind[1]} without {', '.join(missing)}")
    return Event(delivery_id, kind, {key: str(value) for key, value in payload["data"].items()})
