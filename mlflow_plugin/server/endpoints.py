"""The gate's own endpoints under ``/api/2.0/weightgate/``: the worker checks in (``hello``), claims
versions and records decisions; the override, rescan and backfill commands change or queue them.

Each checks the caller's credential first (403), then reads its body once as a pydantic model
(:mod:`mlflow_plugin.server.bodies`: a missing or malformed field is 400 naming it). Decisions go to
the decisions table first, then to the version's four tags
(:meth:`mlflow_plugin.server.state.ServerGate.publish`), then to the ledger.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request

from gate import vocabulary as words
from gate.vocabulary import LedgerAction, LedgerOutcome, VersionStatus
from mlflow_plugin.responses import RESOURCE_CONFLICT, RESOURCE_DOES_NOT_EXIST, Refusal
from mlflow_plugin.server.bodies import BackfillBody, Body, ClaimBody, OverrideBody, RecordBody, RescanBody, parse
from mlflow_plugin.server.claims import Recording
from mlflow_plugin.server.page_queries import PROMOTING_STAGES, RegistryQueries
from mlflow_plugin.server.state import ServerGate, registry_store
from mlflow_plugin.server.version_tags import override_summary, pending_summary

_logger = logging.getLogger(__name__)


class Endpoints:
    """The views, bound to one gate."""

    def __init__(self, gate: ServerGate) -> None:
        self.gate = gate
        self.queries = RegistryQueries(gate.decisions.engine, gate.config.protected_aliases)

    def register(self, app: Flask) -> None:
        for name, view in (("claim", self.claim), ("record", self.record), ("override", self.override),
                           ("rescan", self.rescan), ("backfill", self.backfill)):
            app.add_url_rule(f"/api/2.0/weightgate/{name}", endpoint=f"weightgate_{name}", view_func=view,
                             methods=["POST"])
        app.add_url_rule("/api/2.0/weightgate/hello", endpoint="weightgate_hello", view_func=self.hello,
                         methods=["GET"])

    def hello(self) -> Response:
        """A worker's check at start: its credential is the server's, and which policy the server enforces."""
        if not self.gate.is_worker():
            raise Refusal.denied("the worker credential was refused: WEIGHTGATE_WORKER_TOKEN differs from the "
                                 "server's (or is not sent)")
        from gate.policy.decision import weightgate_version

        return jsonify({"weightgate": weightgate_version(), "policy_sha256": self.gate.policy_sha256,
                        "protected_aliases": sorted(self.gate.config.protected_aliases),
                        "approving_statuses": sorted(self.gate.config.approving_statuses())})

    def claim(self) -> Response:
        if not self.gate.is_worker():
            raise Refusal.denied("only the weightgate worker may claim scans")
        body = _body(ClaimBody, "claim")
        return jsonify({"claimed": self.gate.claims.claim(body.name, body.version, body.worker, body.lease_seconds)})

    def record(self) -> Response:
        if not self.gate.is_worker():
            raise Refusal.denied("only the weightgate worker may record decisions")
        body = _body(RecordBody, "record")
        name, version, worker, decision = body.name, body.version, body.worker, body.decision
        state = self.gate.claims.begin_recording(name, version, worker, body.lease_seconds)
        if state is Recording.ALREADY_DONE:
            return jsonify({"recorded": True, "repeated": True})
        if state is Recording.CONFLICT:
            raise Refusal(RESOURCE_CONFLICT, f"{worker} does not hold the claim on {name} version {version}")
        # The row first (what enforcement reads), then the tags with the status last: a record cut
        # off half-way still reads pending, is not finished, and is taken over once its lease runs out.
        self.gate.decisions.record(name, version, decision, worker)
        self.gate.publish(name, version)
        self.gate.claims.finish(name, version, worker)
        self.gate.log(name, version, LedgerAction.DECISION, decision.status, LedgerOutcome.RECORDED,
                      decision.reason, user=f"worker:{worker}")
        return jsonify({"recorded": True})

    def rescan(self) -> Response:
        """Queue a version again: its claim is forgotten and its status is pending."""
        actor = self._queueing_actor("queueing a rescan")
        body = _body(RescanBody, "rescan")
        _existing_version(body)
        when = words.utc_timestamp()
        self.gate.claims.reset(body.name, body.version)
        self.gate.decisions.mark_pending(body.name, body.version, pending_summary(f"rescan requested by {actor} at {when}"),
                                         f"rescan requested by {actor} at {when}")
        self.gate.publish(body.name, body.version)
        _logger.warning("weightgate rescan: %s version %s queued again by %s", body.name, body.version, actor)
        self.gate.log(body.name, body.version, LedgerAction.RESCAN, VersionStatus.PENDING, LedgerOutcome.RECORDED,
                      f"queued again at {when}", user=actor)
        return jsonify({"queued": True, "by": actor, "at": when})

    def backfill(self) -> Response:
        """Queue up to ``limit`` versions that have no decision (a registry adopted by the gate, or
        decisions an earlier weightgate kept in tags). Their stages and aliases are left as they are;
        each queued version's are returned, so the caller can report what the policy would block."""
        actor = self._queueing_actor("a backfill")
        body = _body(BackfillBody, "backfill")
        when = words.utc_timestamp()
        queued = []
        for row in self.queries.undecided(body.limit):
            self.gate.claims.reset(row.name, row.version)
            self.gate.decisions.mark_pending(row.name, row.version, pending_summary(f"queued by a backfill at {when}"),
                                             f"queued by {actor} (backfill) at {when}")
            self.gate.publish(row.name, row.version)
            held = [row.stage] if row.stage in PROMOTING_STAGES else []
            held += [f"@{alias}" for alias in row.aliases if self.gate.config.is_protected(alias)]
            self.gate.log(row.name, row.version, LedgerAction.BACKFILL, VersionStatus.PENDING, LedgerOutcome.RECORDED,
                          f"queued at {when}" + (f"; holds {', '.join(held)} (left as it is)" if held else ""),
                          user=actor)
            queued.append({"name": row.name, "version": row.version, "stage": row.stage, "aliases": row.aliases})
        return jsonify({"queued": queued, "by": actor, "at": when})

    def override(self) -> Response:
        actor = self.gate.override_actor()
        if actor is None:
            raise Refusal.denied("overriding a decision needs the override credential or a basic-auth admin")
        body = _body(OverrideBody, "override")
        _existing_version(body)
        current = self.gate.decisions.get(body.name, body.version)
        previous = current.status if current else words.NO_STATUS
        when = words.utc_timestamp()
        self.gate.decisions.override(body.name, body.version, actor, when, body.reason, previous,
                                     override_summary(actor, previous, body.reason))
        self.gate.publish(body.name, body.version)
        if current is not None and current.decision_run:
            _note_on_run(current.decision_run, f"overridden by {actor} at {when} (was {previous}): {body.reason}")
        _logger.warning("weightgate override: %s version %s by %s at %s: %s", body.name, body.version, actor, when,
                        body.reason)
        self.gate.log(body.name, body.version, LedgerAction.OVERRIDE, f"{previous} -> {VersionStatus.OVERRIDDEN}",
                      LedgerOutcome.RECORDED, body.reason, user=actor)
        return jsonify({"overridden": True, "by": actor, "at": when, "previous": previous})

    def _queueing_actor(self, what: str) -> str:
        actor = "worker-credential" if self.gate.is_worker() else self.gate.override_actor()
        if actor is None:
            raise Refusal.denied(f"{what} needs the worker or override credential or a basic-auth admin")
        return actor


def _body(model: type[Body], endpoint: str):
    return parse(model, request.get_json(force=True, silent=True), endpoint)


def _note_on_run(run_id: str, note: str) -> None:
    """The override beside the decision it overrides, on the decision run (best effort: the table
    and the ledger are the record; a run deleted meanwhile is logged, not an error)."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.server.handlers import _get_tracking_store

    try:
        _get_tracking_store().set_tag(run_id, RunTag(words.RUN_OVERRIDE, words.fit_tag_value(note)))
    except MlflowException as err:
        _logger.warning("weightgate override: could not tag decision run %s: %s", run_id, err.message)


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
