"""What every part of the server plugin shares: its configuration, the policy it enforces, the
ledger and claims tables in MLflow's database, and who is sending the current request."""

from __future__ import annotations

import hmac
from typing import Any

from flask import request

from gate import vocabulary as words
from gate.vocabulary import ACTOR_HEADER, OVERRIDE_TOKEN_HEADER, STATUS, WORKER_TOKEN_HEADER
from mlflow_plugin.config import GateConfig, GateConfigError
from mlflow_plugin.server.claims import ClaimStore
from mlflow_plugin.server.ledger import Entry, Ledger


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
    def version_tags(self, name: str, version: Any) -> dict[str, str]:
        """The version's tags, or none when there is no such version."""
        from mlflow.exceptions import MlflowException

        if not name or not str(version):
            return {}
        try:
            return dict(registry_store().get_model_version(name, str(version)).tags or {})
        except MlflowException:
            return {}

    def set_tags(self, name: str, version: Any, tags: dict[str, str]) -> None:
        """Write ``tags`` in their order (callers put ``gate.status`` last)."""
        from mlflow.entities.model_registry import ModelVersionTag

        store = registry_store()
        for key, value in tags.items():
            store.set_model_version_tag(name, str(version), ModelVersionTag(key, words.fit_tag_value(value)))

    # -- the ledger --------------------------------------------------------------------------
    def log(self, name: str, version: Any, action: str, target: str, outcome: str, detail: str = "",
            user: str | None = None) -> None:
        """Append a row; the decision status and policy are read from the version's tags now."""
        tags = self.version_tags(name, version)
        self.ledger.append(Entry(
            user=user or self.requester(), model=name, version=str(version), action=action, target=target,
            outcome=outcome, status=tags.get(STATUS, ""), policy_sha256=tags.get(words.POLICY_SHA256, ""),
            detail=detail[:2000]))
