"""What every part of the server plugin shares: its configuration, the policy it enforces, the
decisions, ledger and claims tables in MLflow's database, and who is sending the current request."""

from __future__ import annotations

import hmac
from typing import Any

from flask import request

from gate.vocabulary import ACTOR_HEADER, OVERRIDE_TOKEN_HEADER, WORKER_TOKEN_HEADER
from mlflow_plugin.config import GateConfig, GateConfigError
from mlflow_plugin.server.claims import ClaimStore
from mlflow_plugin.server.decisions import DecisionStore
from mlflow_plugin.server.ledger import Entry, Ledger
from mlflow_plugin.server.version_tags import display_tags, stale_keys


def registry_store():
    """The model registry store of the running MLflow server."""
    from mlflow.server.handlers import _get_model_registry_store

    return _get_model_registry_store()


class ServerGate:
    """One gate bound to one configuration; the tables are created (or checked) now, at server
    start, not on the first promotion."""

    def __init__(self, config: GateConfig, basic_auth: bool = False) -> None:
        if not config.worker_token:
            raise GateConfigError("WEIGHTGATE_WORKER_TOKEN must be set: without it no decision can ever be recorded")
        from gate.policy.schema import load_policy

        self.config = config
        self.basic_auth = basic_auth
        self.policy_sha256 = load_policy(config.policy_path).sha256
        engine = registry_store().engine
        self.ledger = Ledger(engine)
        self.claims = ClaimStore(engine)
        self.decisions = DecisionStore(engine)

    # -- who is asking -----------------------------------------------------------------------
    def is_worker(self) -> bool:
        presented = request.headers.get(WORKER_TOKEN_HEADER, "")
        return bool(presented) and hmac.compare_digest(presented, self.config.worker_token or "")

    def override_actor(self) -> str | None:
        """Who may override or queue a rescan: the override credential's holder or a basic-auth admin."""
        presented = request.headers.get(OVERRIDE_TOKEN_HEADER, "")
        if self.config.override_token and presented and hmac.compare_digest(presented, self.config.override_token):
            return f"override-credential:{request.headers.get(ACTOR_HEADER, 'unnamed')}"
        if self.basic_auth and request.authorization and request.authorization.username:
            from mlflow.server.auth import store as users

            user = users.get_user(request.authorization.username)
            return f"basic-auth-admin:{user.username}" if user.is_admin else None
        return None

    def requester(self) -> str:
        """Who sent this request: the basic-auth user, the worker credential, or anonymous."""
        if request.authorization and request.authorization.username:
            return request.authorization.username
        return "weightgate-worker" if self.is_worker() else "anonymous"

    # -- the registry ------------------------------------------------------------------------
    def publish(self, name: str, version: Any) -> None:
        """Write the version's four ``gate.*`` tags from its decision row and remove any other
        ``gate.*`` tag (MLflow's version page then shows the status and summary at once)."""
        from mlflow.entities.model_registry import ModelVersionTag

        decision = self.decisions.get(name, version)
        if decision is None:
            return
        store = registry_store()
        existing = dict(store.get_model_version(name, str(version)).tags or {})
        published = display_tags(decision)
        for key in stale_keys(existing, published):
            store.delete_model_version_tag(name, str(version), key)
        for key, value in published.items():
            if existing.get(key) != value:
                store.set_model_version_tag(name, str(version), ModelVersionTag(key, value))

    # -- the ledger --------------------------------------------------------------------------
    def log(self, name: str, version: Any, action: str, target: str, outcome: str, detail: str = "",
            user: str | None = None) -> None:
        """Append a row; the decision status and policy are the version's decision row's now."""
        decision = self.decisions.get(name, version) if name and str(version).isdigit() else None
        self.ledger.append(Entry(
            user=user or self.requester(), model=name, version=str(version), action=action, target=target,
            outcome=outcome, status=decision.status if decision else "",
            policy_sha256=decision.policy_sha256 if decision else "", detail=detail[:2000]))
