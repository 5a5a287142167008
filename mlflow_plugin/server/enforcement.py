"""The checks run on MLflow's registry routes, and the ledger rows written after them.

Before MLflow handles a request (:data:`mlflow_plugin.server.routes.BEFORE_REQUEST` says which
check runs on which route):

- a protected alias, or a move to Staging/Production, needs an approving decision (approved;
  warned if allowed; overridden) made under the server's policy for the version's current source;
  otherwise :class:`Refusal` 403 PERMISSION_DENIED with the failed rules. Nothing is rescanned:
  the checks read the decision recorded as version tags;
- ``gate.*`` tags are written only with the worker credential.

After MLflow answered (:data:`mlflow_plugin.server.routes.AFTER_REQUEST`): a new version gets
``gate.status=pending`` however it was created, and every protected alias set/delete, stage
transition and ``gate.status`` write is appended to the ledger with the registry's answer as its
outcome (allowed; refused by the gate or by basic-auth; failed with another error).
"""

from __future__ import annotations

from flask import Response, g

from gate import vocabulary as words
from gate.vocabulary import STATUS, TAG_PREFIX, LedgerAction, LedgerOutcome, VersionStatus
from mlflow_plugin.responses import Refusal
from mlflow_plugin.server.bodies import AliasParams, CreateParams, StageParams, TagParams, VersionParams
from mlflow_plugin.server.state import ServerGate, registry_store

PROMOTING_STAGES = frozenset({"staging", "production"})


class Enforcement:
    """The checks and ledger hooks, bound to one gate."""

    def __init__(self, gate: ServerGate) -> None:
        self.gate = gate

    # -- before MLflow handles the request -----------------------------------------------------
    def check_alias(self, params: AliasParams) -> None:
        alias = params.alias.lower()
        if not self.gate.config.is_protected(alias):
            return  # MLflow answers a request without an alias itself
        problem = self.approval_problem(_required(params, f"set protected alias '{alias}'"))
        if problem:
            raise Refusal.denied(f"cannot set protected alias '{alias}': {problem}")

    def note_alias_target(self, params: AliasParams) -> None:
        """Before a protected alias is deleted, remember which version it pointed at (for the ledger)."""
        from mlflow.exceptions import MlflowException

        if not self.gate.config.is_protected(params.alias):
            return
        try:
            g.weightgate_alias_version = str(registry_store().get_model_version_by_alias(params.name, params.alias).version)
        except MlflowException:
            g.weightgate_alias_version = ""

    def check_stage(self, params: StageParams) -> None:
        if params.stage.lower() not in PROMOTING_STAGES:
            return  # MLflow answers a request without a stage itself
        problem = self.approval_problem(_required(params, f"move a version to stage {params.stage}"))
        if problem:
            raise Refusal.denied(f"cannot move to stage {params.stage}: {problem}")

    def guard_tag(self, params: TagParams) -> None:
        if words.is_gate_key(params.key) and not self.gate.is_worker():
            raise Refusal.denied(f"tags starting with '{TAG_PREFIX}' are written only by weightgate itself")

    def guard_initial_tags(self, params: CreateParams) -> None:
        if any(words.is_gate_key(tag.key) for tag in params.tags or ()) and not self.gate.is_worker():
            raise Refusal.denied(f"tags starting with '{TAG_PREFIX}' are written only by weightgate itself")

    def approval_problem(self, params: VersionParams) -> str | None:
        """Why the version may not be promoted, or None when it may (fail closed)."""
        from mlflow.exceptions import MlflowException

        name, version = params.name, params.version
        try:
            model_version = registry_store().get_model_version(name, version)
        except MlflowException as err:
            return f"no such model version ({err.message})"
        tags = dict(model_version.tags or {})
        status = tags.get(STATUS)
        label = f"{name} version {version}"
        if status is None:
            return f"{label} has no weightgate decision"
        if status == VersionStatus.PENDING:
            return f"{label} is waiting for its weightgate scan"
        if status not in self.gate.config.approving_statuses():
            return f"{label} is {status} by weightgate: {tags.get(words.REASON, 'no reason recorded')}"
        if status == VersionStatus.OVERRIDDEN:
            return None
        if tags.get(words.POLICY_SHA256) != self.gate.policy_sha256:
            return (f"{label} was judged under another policy (sha256 {tags.get(words.POLICY_SHA256, 'none')[:12]}, "
                    f"this server requires {self.gate.policy_sha256[:12]}); it must be scanned again")
        if tags.get(words.SOURCE) != model_version.source:
            return f"{label}'s decision was recorded for other weights ({tags.get(words.SOURCE)})"
        return None

    # -- after MLflow answered -----------------------------------------------------------------
    def mark_pending(self, params: CreateParams, response: Response) -> None:
        """A version just created waits for its scan, however it was created."""
        if response.status_code != 200:
            return
        version = (response.get_json(silent=True) or {}).get("model_version", {})
        if version.get("name") and version.get("version"):
            self.gate.set_tags(version["name"], version["version"], {STATUS: VersionStatus.PENDING})
            self.gate.log(version["name"], version["version"], LedgerAction.REGISTERED, "", LedgerOutcome.RECORDED)

    def log_alias_set(self, params: AliasParams, response: Response) -> None:
        if self.gate.config.is_protected(params.alias):
            self._log_answer(params.name, params.version, LedgerAction.ALIAS_SET, params.alias, response)

    def log_alias_delete(self, params: AliasParams, response: Response) -> None:
        if self.gate.config.is_protected(params.alias):
            version = params.version or g.get("weightgate_alias_version", "")
            self._log_answer(params.name, version, LedgerAction.ALIAS_DELETE, params.alias, response)

    def log_stage(self, params: StageParams, response: Response) -> None:
        self._log_answer(params.name, params.version, LedgerAction.STAGE_TRANSITION, params.stage, response)

    def log_status_set(self, params: TagParams, response: Response) -> None:
        if params.key == STATUS:
            self._log_answer(params.name, params.version, LedgerAction.DECISION, params.value, response)

    def log_status_delete(self, params: TagParams, response: Response) -> None:
        if params.key == STATUS:
            self._log_answer(params.name, params.version, LedgerAction.DECISION, "(tag deleted)", response)

    def _log_answer(self, name: str, version: str, action: str, target: str, response: Response) -> None:
        if response.status_code == 200:
            outcome, detail = LedgerOutcome.ALLOWED, ""
        else:
            body = response.get_json(silent=True) or {}
            outcome = LedgerOutcome.REFUSED if response.status_code in (401, 403) else LedgerOutcome.FAILED
            detail = f"HTTP {response.status_code}: {body.get('message') or response.status}"
        self.gate.log(name, version, action, target, outcome, detail)


def _required(params: VersionParams, what: str) -> VersionParams:
    """``params`` when they name a version; a promotion without one is refused with MLflow's own
    wording (MLflow would refuse it too: the gate fails closed rather than leave it to MLflow)."""
    for field in ("name", "version"):
        if not getattr(params, field):
            raise Refusal.invalid(f"Missing value for required parameter '{field}' (needed to {what})")
    return params
