"""``mlflow server --app-name weightgate``: the registry refuses promotions the gate has not approved.

Follows MLflow's own basic-auth app: Flask ``before_request``/``after_request`` hooks routed by
(path, method), small functions per check. Both the ``/api/2.0`` and the UI's ``/ajax-api/2.0``
prefixes are covered. Checks read the decision recorded as version tags; nothing is rescanned.

- New versions get ``gate.status=pending`` as soon as they are created, however created.
- Setting a protected alias, or moving a version to Staging/Production, needs an approving
  decision (approved; warned if allowed; overridden) made under the server's policy for the
  version's current source; otherwise 403 PERMISSION_DENIED with the failed rules.
- ``gate.*`` tags can be written only with the worker credential (``X-Weightgate-Token``).
- ``/api/2.0/weightgate/{claim,record,override,rescan}`` serve the worker and the override and
  rescan commands.
- Every protected alias set/delete, stage transition, ``gate.status`` write, recorded decision and
  override, allowed or refused, is appended to the promotion ledger (:mod:`mlflow_plugin.server.ledger`).
- ``/weightgate/`` is the gate page (:mod:`mlflow_plugin.server.gate_page`), behind MLflow's own
  authentication when composed with basic-auth.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, jsonify, make_response, request

from gate import vocabulary as words
from gate.vocabulary import (
    ACTOR_HEADER,
    OVERRIDE_TOKEN_HEADER,
    STATUS,
    TAG_PREFIX,
    WORKER_TOKEN_HEADER,
    LedgerAction,
    LedgerOutcome,
    VersionStatus,
)
from mlflow_plugin.config import GateConfig, GateConfigError
from mlflow_plugin.server.ledger import Entry, Ledger

_logger = logging.getLogger(__name__)
_PREFIX = re.compile(r"^/(?:ajax-)?api/\d+\.\d+")
_PROMOTING_STAGES = {"staging", "production"}
_LEDGER_ROUTES = {"/mlflow/registered-models/alias", "/mlflow/model-versions/transition-stage",
                  "/mlflow/model-versions/set-tag", "/mlflow/model-versions/delete-tag"}


def create_app(app: Flask | None = None):
    """Factory for ``--app-name weightgate``."""
    from mlflow.server import app as mlflow_app

    flask_app = app or mlflow_app
    _Gate(flask_app, GateConfig.from_env())
    return _asgi_if_needed(flask_app)


def create_app_with_basic_auth(app: Flask | None = None):
    """Factory for ``--app-name weightgate-basic-auth``: MLflow's basic-auth, then the gate.

    Basic-auth's hooks are installed first, so a request is authenticated before the gate looks
    at it; basic-auth admins may override decisions.
    """
    from mlflow.server import app as mlflow_app
    from mlflow.server.auth import create_app as basic_auth_create_app

    flask_app = app or mlflow_app
    served = basic_auth_create_app(flask_app)
    _Gate(flask_app, GateConfig.from_env(), basic_auth=True)
    return served


def _asgi_if_needed(flask_app: Flask):
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(flask_app)
    return flask_app


class _Gate:
    """The hooks and endpoints, bound to one configuration."""

    def __init__(self, app: Flask, config: GateConfig, basic_auth: bool = False) -> None:
        if not config.worker_token:
            raise GateConfigError("WEIGHTGATE_WORKER_TOKEN must be set: without it no decision can ever be recorded")
        from gate.policy.schema import load_policy

        self.config = config
        self.basic_auth = basic_auth
        self.policy_sha256 = load_policy(config.policy_path).sha256
        self._claims = None
        self.ledger = Ledger(_registry_store().engine)  # created or checked now, not on the first promotion
        self.before: dict[tuple[str, str], Callable[[dict], Response | None]] = {
            ("/mlflow/registered-models/alias", "POST"): self.check_alias,
            ("/mlflow/registered-models/alias", "DELETE"): self.note_alias_target,
            ("/mlflow/model-versions/transition-stage", "POST"): self.check_stage,
            ("/mlflow/model-versions/set-tag", "POST"): self.guard_tag,
            ("/mlflow/model-versions/delete-tag", "DELETE"): self.guard_tag,
            ("/mlflow/registered-models/set-tag", "POST"): self.guard_tag,
            ("/mlflow/registered-models/delete-tag", "DELETE"): self.guard_tag,
            ("/mlflow/model-versions/create", "POST"): self.guard_initial_tags,
            ("/mlflow/registered-models/create", "POST"): self.guard_initial_tags,
        }
        app.before_request(self.before_request)
        app.after_request(self.after_request)
        for rule, view in (("claim", self.claim), ("record", self.record), ("override", self.override),
                           ("rescan", self.rescan)):
            app.add_url_rule(f"/api/2.0/weightgate/{rule}", endpoint=f"weightgate_{rule}", view_func=view,
                             methods=["POST"])
        from mlflow_plugin.server.gate_page import GatePage

        GatePage(self, basic_auth).register(app)

    # -- hooks -------------------------------------------------------------------------------
    def before_request(self) -> Response | None:
        handler = self.before.get((_PREFIX.sub("", request.path), request.method))
        return handler(_request_params()) if handler else None

    def after_request(self, response: Response) -> Response:
        route = (_PREFIX.sub("", request.path), request.method)
        if route == ("/mlflow/model-versions/create", "POST") and response.status_code == 200:
            version = (response.get_json(silent=True) or {}).get("model_version", {})
            if version.get("name") and version.get("version"):
                self._set_tags(version["name"], version["version"], {STATUS: VersionStatus.PENDING})
                self.log(version["name"], version["version"], LedgerAction.REGISTERED, "", LedgerOutcome.RECORDED)
        elif route[0] in _LEDGER_ROUTES:
            self.log_attempt(route, _request_params(), response)
        return response

    # -- ledger ------------------------------------------------------------------------------
    def log_attempt(self, route: tuple[str, str], params: dict, response: Response) -> None:
        """One ledger row for a promotion-relevant request, with the registry's answer as outcome
        (allowed; refused by the gate or by basic-auth; failed with another error)."""
        path, method = route
        name, version = str(params.get("name", "")), str(params.get("version", ""))
        if path == "/mlflow/registered-models/alias":
            alias = str(params.get("alias", ""))
            if not self.config.is_protected(alias):
                return
            action, target = (LedgerAction.ALIAS_SET if method == "POST" else LedgerAction.ALIAS_DELETE), alias
            version = version or getattr(g, "weightgate_alias_version", "")
        elif path == "/mlflow/model-versions/transition-stage":
            action, target = LedgerAction.STAGE_TRANSITION, str(params.get("stage", ""))
        elif str(params.get("key", "")) == STATUS:
            action = LedgerAction.DECISION
            target = str(params.get("value", "")) if method == "POST" else "(tag deleted)"
        else:
            return
        if response.status_code == 200:
            outcome, detail = LedgerOutcome.ALLOWED, ""
        else:
            body = response.get_json(silent=True) or {}
            outcome = LedgerOutcome.REFUSED if response.status_code in (401, 403) else LedgerOutcome.FAILED
            detail = f"HTTP {response.status_code}: {body.get('message') or response.status}"
        self.log(name, version, action, target, outcome, detail)

    def log(self, name: str, version: Any, action: str, target: str, outcome: str, detail: str = "",
            user: str | None = None) -> None:
        """Append a row; the decision status and policy are read from the version's tags now."""
        tags = self._version_tags(name, version)
        self.ledger.append(Entry(
            user=user or self.requester(), model=name, version=str(version), action=action, target=target,
            outcome=outcome, status=tags.get(STATUS, ""), policy_sha256=tags.get(words.POLICY_SHA256, ""),
            detail=detail[:2000]))

    def _version_tags(self, name: str, version: Any) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        if not name or not str(version):
            return {}
        try:
            return dict(_registry_store().get_model_version(name, str(version)).tags or {})
        except MlflowException:
            return {}

    def note_alias_target(self, params: dict) -> None:
        """Before a protected alias is deleted, remember which version it pointed at (for the ledger)."""
        from mlflow.exceptions import MlflowException

        if self.config.is_protected(str(params.get("alias", ""))):
            try:
                aliased = _registry_store().get_model_version_by_alias(params.get("name", ""), params.get("alias", ""))
                g.weightgate_alias_version = str(aliased.version)
            except MlflowException:
                g.weightgate_alias_version = ""
        return None

    def requester(self) -> str:
        """Who sent this request: the basic-auth user, the worker credential, or anonymous."""
        if request.authorization and request.authorization.username:
            return request.authorization.username
        return "weightgate-worker" if self.is_worker() else "anonymous"

    # -- checks ------------------------------------------------------------------------------
    def check_alias(self, params: dict) -> Response | None:
        alias = str(params.get("alias", "")).lower()
        if not self.config.is_protected(alias):
            return None
        problem = self.approval_problem(params.get("name", ""), params.get("version", ""))
        return _denied(f"cannot set protected alias '{alias}': {problem}") if problem else None

    def check_stage(self, params: dict) -> Response | None:
        stage = str(params.get("stage", "")).lower()
        if stage not in _PROMOTING_STAGES:
            return None
        problem = self.approval_problem(params.get("name", ""), params.get("version", ""))
        return _denied(f"cannot move to stage {params.get('stage')}: {problem}") if problem else None

    def guard_tag(self, params: dict) -> Response | None:
        if words.is_gate_key(str(params.get("key", ""))) and not self.is_worker():
            return _denied(f"tags starting with '{TAG_PREFIX}' are written only by weightgate itself")
        return None

    def guard_initial_tags(self, params: dict) -> Response | None:
        keys = [str(tag.get("key", "")) for tag in params.get("tags") or [] if isinstance(tag, dict)]
        if any(words.is_gate_key(key) for key in keys) and not self.is_worker():
            return _denied(f"tags starting with '{TAG_PREFIX}' are written only by weightgate itself")
        return None

    def approval_problem(self, name: str, version: Any) -> str | None:
        """Why ``name`` version ``version`` may not be promoted, or None when it may (fail closed)."""
        from mlflow.exceptions import MlflowException

        try:
            model_version = _registry_store().get_model_version(name, str(version))
        except MlflowException as err:
            return f"no such model version ({err.message})"
        tags = dict(model_version.tags or {})
        status = tags.get(STATUS)
        label = f"{name} version {version}"
        if status is None:
            return f"{label} has no weightgate decision"
        if status == VersionStatus.PENDING:
            return f"{label} is waiting for its weightgate scan"
        if status not in self.config.approving_statuses():
            return f"{label} is {status} by weightgate: {tags.get(words.REASON, 'no reason recorded')}"
        if status == VersionStatus.OVERRIDDEN:
            return None
        if tags.get(words.POLICY_SHA256) != self.policy_sha256:
            return (f"{label} was judged under another policy (sha256 {tags.get(words.POLICY_SHA256, 'none')[:12]}, "
                    f"this server requires {self.policy_sha256[:12]}); it must be scanned again")
        if tags.get(words.SOURCE) != model_version.source:
            return f"{label}'s decision was recorded for other weights ({tags.get(words.SOURCE)})"
        return None

    # -- endpoints ---------------------------------------------------------------------------
    def claim(self) -> Response:
        if not self.is_worker():
            return _denied("only the weightgate worker may claim scans")
        body = request.get_json(force=True, silent=True) or {}
        claimed = self.claims().claim(body["name"], int(body["version"]), str(body["worker"]),
                                      float(body.get("lease_seconds", 900)))
        return jsonify({"claimed": claimed})

    def record(self) -> Response:
        from mlflow_plugin.server.claims import Recording

        if not self.is_worker():
            return _denied("only the weightgate worker may record decisions")
        body = request.get_json(force=True, silent=True) or {}
        name, version, worker = body["name"], int(body["version"]), str(body["worker"])
        tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items() if words.is_gate_key(str(k))}
        state = self.claims().begin_recording(name, version, worker, float(body.get("lease_seconds", 900)))
        if state is Recording.ALREADY_DONE:
            return jsonify({"recorded": True, "repeated": True})
        if state is Recording.CONFLICT:
            return make_response(jsonify({"error_code": "RESOURCE_CONFLICT",
                                          "message": f"{worker} does not hold the claim on {name} version {version}"}), 409)
        # The status goes last: a decision cut off half-way still reads pending and is taken over.
        self._set_tags(name, version, dict(sorted(tags.items(), key=lambda item: item[0] == STATUS)))
        self.claims().finish(name, version, worker)
        self.log(name, version, LedgerAction.DECISION, tags.get(STATUS, ""), LedgerOutcome.RECORDED, tags.get(words.REASON, ""),
                 user=f"worker:{worker}")
        return jsonify({"recorded": True})

    def rescan(self) -> Response:
        """Queue a version again: its claim is forgotten and its status is pending."""
        from mlflow.exceptions import MlflowException

        actor = "worker-credential" if self.is_worker() else self.override_actor()
        if actor is None:
            return _denied("queueing a rescan needs the worker or override credential or a basic-auth admin")
        body = request.get_json(force=True, silent=True) or {}
        name, version = str(body.get("name", "")), str(body.get("version", ""))
        try:
            _registry_store().get_model_version(name, version)
        except MlflowException as err:
            return make_response(jsonify({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": err.message}), 404)
        when = words.utc_timestamp()
        self.claims().reset(name, int(version))
        self._set_tags(name, version, {words.REASON: f"rescan requested by {actor} at {when}",
                                       words.RESCAN_REQUESTED: when, STATUS: VersionStatus.PENDING})
        _logger.warning("weightgate rescan: %s version %s queued again by %s", name, version, actor)
        self.log(name, version, LedgerAction.RESCAN, VersionStatus.PENDING, LedgerOutcome.RECORDED, f"queued again at {when}",
                 user=actor)
        return jsonify({"queued": True, "by": actor, "at": when})

    def override(self) -> Response:
        actor = self.override_actor()
        if actor is None:
            return _denied("overriding a decision needs the override credential or a basic-auth admin")
        body = request.get_json(force=True, silent=True) or {}
        name, version, reason = body.get("name"), body.get("version"), str(body.get("reason", "")).strip()
        if not name or not version or not reason:
            return make_response(jsonify({"error_code": "INVALID_PARAMETER_VALUE",
                                          "message": "override needs name, version and a reason"}), 400)
        previous = dict(_registry_store().get_model_version(name, str(version)).tags or {}).get(STATUS, words.NO_STATUS)
        when = words.utc_timestamp()
        self._set_tags(name, version, {STATUS: VersionStatus.OVERRIDDEN, words.OVERRIDE_BY: actor, words.OVERRIDE_AT: when,
                                       words.OVERRIDE_REASON: reason, words.OVERRIDE_PREVIOUS_STATUS: previous})
        _logger.warning("weightgate override: %s version %s by %s at %s: %s", name, version, actor, when, reason)
        self.log(name, version, LedgerAction.OVERRIDE, f"{previous} -> {VersionStatus.OVERRIDDEN}", LedgerOutcome.RECORDED,
                 reason, user=actor)
        return jsonify({"overridden": True, "by": actor, "at": when})

    # -- identity ----------------------------------------------------------------------------
    def is_worker(self) -> bool:
        presented = request.headers.get(WORKER_TOKEN_HEADER, "")
        return bool(presented) and hmac.compare_digest(presented, self.config.worker_token or "")

    def override_actor(self) -> str | None:
        presented = request.headers.get(OVERRIDE_TOKEN_HEADER, "")
        if self.config.override_token and presented and hmac.compare_digest(presented, self.config.override_token):
            return f"override-credential:{request.headers.get(ACTOR_HEADER, 'unnamed')}"
        if self.basic_auth and request.authorization and request.authorization.username:
            from mlflow.server.auth import store as users

            user = users.get_user(request.authorization.username)
            return f"basic-auth-admin:{user.username}" if user.is_admin else None
        return None

    # -- storage -----------------------------------------------------------------------------
    def claims(self):
        if self._claims is None:
            from mlflow_plugin.server.claims import ClaimStore

            self._claims = ClaimStore(_registry_store().engine)
        return self._claims

    def _set_tags(self, name: str, version: Any, tags: dict[str, str]) -> None:
        from mlflow.entities.model_registry import ModelVersionTag

        store = _registry_store()
        for key, value in tags.items():
            store.set_model_version_tag(name, str(version), ModelVersionTag(key, words.fit_tag_value(value)))


def _registry_store():
    from mlflow.server.handlers import _get_model_registry_store

    return _get_model_registry_store()


def _request_params() -> dict:
    params = dict(request.args)
    body = request.get_json(force=True, silent=True)
    if isinstance(body, dict):
        params.update(body)
    return params


def _denied(message: str) -> Response:
    return make_response(jsonify({"error_code": "PERMISSION_DENIED", "message": message}), 403)
