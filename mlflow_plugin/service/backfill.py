"""``weightgate backfill``: bring a registry the gate has just adopted under it.

Versions registered before the gate (or decided by a weightgate that kept its decisions in tags)
have no decision, so no promotion of theirs passes. The backfill queues every one of them through
the server (``POST /api/2.0/weightgate/backfill``, a batch at a time), decides them with an ordinary
worker pass, and reports the versions that already hold Staging/Production or a protected alias
but that the policy would not approve, e.g. ``models:/fraud/3 in Production, blocked under the
policy: ...``. Those keep their stage and aliases: the gate refuses new promotions, it does not
undo old ones; the team acts on the report (the gate page marks them too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gate.errors import GateInputError
from gate.vocabulary import NO_STATUS, VersionStatus

_logger = logging.getLogger(__name__)
BATCH = 200


@dataclass
class Queued:
    """A version the backfill queued, with what it held when it was queued."""

    name: str
    version: int
    stage: str
    aliases: list[str]
    status: str = VersionStatus.PENDING
    reason: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def held(self, protected: set[str]) -> list[str]:
        """The promoting stage and protected aliases it holds."""
        stages = [self.stage] if self.stage in ("Staging", "Production") else []
        return stages + [f"@{alias}" for alias in self.aliases if alias.lower() in protected]


@dataclass
class BackfillReport:
    queued: list[Queued] = field(default_factory=list)
    flagged: list[Queued] = field(default_factory=list)  # held a protected stage/alias without approval

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for item in self.queued:
            found[item.status] = found.get(item.status, 0) + 1
        return found


def queue_all(tracking_uri: str) -> list[Queued]:
    """Queue every version without a decision, batch by batch; returns them all."""
    queued: list[Queued] = []
    while True:
        answer = _gate_call(tracking_uri, "POST", "/api/2.0/weightgate/backfill", {"limit": BATCH})
        batch = [Queued(item["name"], int(item["version"]), item.get("stage") or "", list(item.get("aliases") or []))
                 for item in answer["queued"]]
        queued += batch
        if len(batch) < BATCH:
            return queued


def report(tracking_uri: str, queued: list[Queued], protected: set[str], approving: set[str]) -> BackfillReport:
    """Each queued version's outcome (from the server's decision), and those to act on, logged."""
    result = BackfillReport(queued=queued)
    for item in queued:
        decision = _decision(tracking_uri, item)
        item.status, item.reason = decision.get("status", NO_STATUS), decision.get("reason", "")
        held = item.held(protected)
        if held and item.status not in approving:
            result.flagged.append(item)
            _logger.warning("%s", flag_line(item, held), extra={"fields": {
                "event": "promoted_unapproved", "model": item.name, "version": item.version, "held": held,
                "status": item.status, "reason": item.reason[:500]}})
    return result


def flag_line(item: Queued, held: list[str]) -> str:
    """``models:/m/3 in Production, blocked under the policy: <reason>``."""
    where = ", ".join(held)
    if item.status == VersionStatus.ERROR:
        return f"{item.uri} in {where}, could not be judged (error): {item.reason}"
    if item.status in (VersionStatus.PENDING, NO_STATUS):
        return f"{item.uri} in {where}, not decided yet (still {item.status})"
    return f"{item.uri} in {where}, {item.status} under the policy: {item.reason}"


def _decision(tracking_uri: str, item: Queued) -> dict:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    response = http_request(get_default_host_creds(tracking_uri), "/weightgate/api/decision", "GET",
                            params={"name": item.name, "version": str(item.version)})
    return response.json() if response.status_code == 200 else {}


def _gate_call(tracking_uri: str, method: str, path: str, body: dict) -> dict:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    response = http_request(get_default_host_creds(tracking_uri), path, method, json=body)
    if response.status_code != 200:
        raise GateInputError(f"{tracking_uri}{path} answered {response.status_code}: {response.text[:500]}")
    return response.json()
