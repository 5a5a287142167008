"""The gate's own endpoints, ``POST /api/2.0/weightgate/{claim,record,override,rescan}``: the worker
claims versions and records decisions; the override and rescan commands change a decision.

Each checks the caller's credential first (403), then reads its body once as a pydantic model
(:mod:`mlflow_plugin.server.bodies`: a missing or malformed field is 400 naming it).
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request

from gate import vocabulary as words
from gate.vocabulary import STATUS, LedgerAction, LedgerOutcome, VersionStatus
from mlflow_plugin.responses import RESOURCE_CONFLICT, RESOURCE_DOES_NOT_EXIST, Refusal
from mlflow_plugin.server.bodies import Body, ClaimBody, OverrideBody, RecordBody, RescanBody, parse
from mlflow_plugin.server.claims import Recording
from mlflow_plugin.server.state import ServerGate, registry_store

_logger = logging.getLogger(__name__)


class Endpoints:
    """The four views, bound to one gate."""

    def __init__(self, gate: ServerGate) -> None:
        self.gate = gate

    def register(self, app: Flask) -> None:
        for name, view in (("claim", self.claim), ("record", self.record), ("override", self.override),
                           ("rescan", self.rescan)):
            app.add_url_rule(f"/api/2.0/weightgate/{name}", endpoint=f"weightgate_{name}", view_func=view,
                             methods=["POST"])

    def claim(self) -> Response:
        if not self.gate.is_worker():
            raise Refusal.denied("only the weightgate worker may claim scans")
        body = _body(ClaimBody, "claim")
        return jsonify({"claimed": self.gate.claims.claim(body.name, body.version, body.worker, body.lease_seconds)})

    def record(self) -> Response:
        if not self.gate.is_worker():
            raise Refusal.denied("only the weightgate worker may record decisions")
        body = _body(RecordBody, "record")
        name, version, worker = body.name, body.version, body.worker
        tags = {key: value for key, value in body.tags.items() if words.is_gate_key(key)}
        state = self.gate.claims.begin_recording(name, version, worker, body.lease_seconds)
        if state is Recording.ALREADY_DONE:
            return jsonify({"recorded": True, "repeated": True})
        if state is Recording.CONFLICT:
            raise Refusal(RESOURCE_CONFLICT, f"{worker} does not hold the claim on {name} version {version}")
        # The status goes last: a decision cut off half-way still reads pending and is taken over.
        self.gate.set_tags(name, version, dict(sorted(tags.items(), key=lambda item: item[0] == STATUS)))
        self.gate.claims.finish(name, version, worker)
        self.gate.log(name, version, LedgerAction.DECISION, tags.get(STATUS, ""), LedgerOutcome.RECORDED,
                      tags.get(words.REASON, ""), user=f"worker:{worker}")
        return jsonify({"recorded": True})

    def rescan(self) -> Response:
        """Queue a version again: its claim is forgotten and its status is pending."""
        actor = "worker-credential" if self.gate.is_worker() else self.gate.override_actor()
        if actor is None:
            raise Refusal.denied("queueing a rescan needs the worker or override credential or a basic-auth admin")
        body = _body(RescanBody, "rescan")
        _existing_version(body)
        when = words.utc_timestamp()
        self.gate.claims.reset(body.name, body.version)
        self.gate.set_tags(body.name, body.version, {words.REASON: f"rescan requested by {actor} at {when}",
                                                     words.RESCAN_REQUESTED: when, STATUS: VersionStatus.PENDING})
        _logger.warning("weightgate rescan: %s version %s queued again by %s", body.name, body.version, actor)
        self.gate.log(body.name, body.version, LedgerAction.RESCAN, VersionStatus.PENDING, LedgerOutcome.RECORDED,
                      f"queued again at {when}", user=actor)
        return jsonify({"queued": True, "by": actor, "at": when})

    def override(self) -> Response:
        actor = self.gate.override_actor()
        if actor is None:
            raise Refusal.denied("overriding a decision needs the override credential or a basic-auth admin")
        body = _body(OverrideBody, "override")
        previous = dict(_existing_version(body).tags or {}).get(STATUS, words.NO_STATUS)
        when = words.utc_timestamp()
        self.gate.set_tags(body.name, body.version, {
            STATUS: VersionStatus.OVERRIDDEN, words.OVERRIDE_BY: actor, words.OVERRIDE_AT: when,
            words.OVERRIDE_REASON: body.reason, words.OVERRIDE_PREVIOUS_STATUS: previous})
        _logger.warning("weightgate override: %s version %s by %s at %s: %s", body.name, body.version, actor, when,
                        body.reason)
        self.gate.log(body.name, body.version, LedgerAction.OVERRIDE, f"{previous} -> {VersionStatus.OVERRIDDEN}",
                      LedgerOutcome.RECORDED, body.reason, user=actor)
        return jsonify({"overridden": True, "by": actor, "at": when})


def _body(model: type[Body], endpoint: str):
    return parse(model, request.get_json(force=True, silent=True), endpoint)


def _existing_version(body: RescanBody):
    """The model version the body names, or 404 RESOURCE_DOES_NOT_EXIST (another registry error,
    say the database being down, stays a server error the caller retries)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    try:
        return registry_store().get_model_version(body.name, str(body.version))
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        raise Refusal(RESOURCE_DOES_NOT_EXIST, err.message) from err
