"""The checks run on MLflow's registry routes, and the ledger rows written after them.

Before MLflow handles a request (:data:`mlflow_plugin.server.routes.BEFORE_REQUEST` says which
check runs on which route):

- a protected alias, or a move to Staging/Production, needs an approving decision (approved;
  warned if allowed; overridden) made under the server's policy for the version's current source;
  otherwise :class:`Refusal` 403 PERMISSION_DENIED with the failed rules. Nothing is rescanned:
  the checks read the version's row in the gate's decisions table (one primary-key lookup), which
  only the server writes, never the version's tags, which are its display copy;
- ``gate.*`` tags are written only with the worker credential. A new version is the exception:
  ``gate.*`` tags given at creation (a copy made by ``MlflowClient.copy_model_version`` or the UI's
  "Promote model" carries its source's) are dropped from the request, not refused, and the drop is
  recorded in the ledger; the copy starts pending like any new version.

After MLflow answered (:data:`mlflow_plugin.server.routes.AFTER_REQUEST`): a new version is
pending however it was created, and every protected alias set/delete, stage transition and
``gate.status`` write is appended to the ledger with the registry's answer as its outcome
(allowed; refused by the gate or by basic-auth; failed with another error; not-found for the
deletion of an alias that did not exist). An alias deletion is recorded against the version the
alias held, looked up before MLflow deleted it.
"""

from __future__ import annotations

from flask import Response, g, request

from gate import vocabulary as words
from gate.vocabulary import STATUS, TAG_PREFIX, LedgerAction, LedgerOutcome, VersionStatus
from mlflow_plugin.responses import Refusal
from mlflow_plugin.server.bodies import AliasParams, CreateParams, RenameParams, StageParams, TagParams, VersionParams
from mlflow_plugin.server.state import ServerGate, registry_store
from mlflow_plugin.server.version_tags import pending_summary

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
        """Before a protected alias is deleted, remember which version it held, or that it did not
        exist (for the ledger: the client's request names no version, or a stale one)."""
        from mlflow.exceptions import MlflowException

        if not self.gate.config.is_protected(params.alias) or not params.name:
            return
        try:
            g.weightgate_alias_version = str(registry_store().get_model_version_by_alias(params.name, params.alias).version)
        except MlflowException:
            g.weightgate_alias_version = None  # no such alias (or no such model): nothing to delete

    def check_stage(self, params: StageParams) -> None:
        if params.stage.lower() not in PROMOTING_STAGES:
            return  # MLflow answers a request without a stage itself
        problem = self.approval_problem(_required(params, f"move a version to stage {params.stage}"))
        if problem:
            raise Refusal.denied(f"cannot move to stage {params.stage}: {problem}")

    def guard_tag(self, params: TagParams) -> None:
        if words.is_gate_key(params.key) and not self.gate.is_worker():
            raise Refusal.denied(f"tags starting with '{TAG_PREFIX}' are written only by weightgate itself")

    def guard_model_tags(self, params: CreateParams) -> None:
        """A registered model created with ``gate.*`` tags is refused (nothing copies model tags)."""
        if any(words.is_gate_key(tag.key) for tag in params.tags or ()) and not self.gate.is_worker():
            raise Refusal.denied(f"tags starting with '{TAG_PREFIX}' are written only by weightgate itself")

    def drop_initial_tags(self, params: CreateParams) -> None:
        """Leave ``gate.*`` tags out of a new version's request (MLflow reads the same parsed body,
        werkzeug's cached JSON); which were dropped is recorded once MLflow has created the version."""
        given = [tag for tag in params.tags or () if words.is_gate_key(tag.key)]
        if not given:
            return
        g.weightgate_dropped_tags = [f"{tag.key}={tag.value[:200]}" for tag in given]
        body = request.get_json(force=True, silent=True)
        if isinstance(body, dict) and isinstance(body.get("tags"), list):
            body["tags"] = [tag for tag in body["tags"]
                            if not (isinstance(tag, dict) and words.is_gate_key(str(tag.get("key", ""))))]

    def approval_problem(self, params: VersionParams) -> str | None:
        """Why the version may not be promoted, or None when it may (fail closed)."""
        from mlflow.exceptions import MlflowException

        name, version = params.name, params.version
        if not version.isdigit():
            return f"no such model version ({name} version {version!r})"
        try:
            model_version = registry_store().get_model_version(name, version)
        except MlflowException as err:
            return f"no such model version ({err.message})"
        decision = self.gate.decisions.get(name, version)
        label = f"{name} version {version}"
        if decision is None:
            return f"{label} has no weightgate decision (queue it with `weightgate backfill` or `weightgate rescan`)"
        if decision.status == VersionStatus.PENDING:
            return f"{label} is waiting for its weightgate scan"
        if decision.status not in self.gate.config.approving_statuses():
            return f"{label} is {decision.status} by weightgate: {decision.reason or 'no reason recorded'}"
        if decision.status == VersionStatus.OVERRIDDEN:
            return None
        if decision.policy_sha256 != self.gate.policy_sha256:
            return (f"{label} was judged under another policy (sha256 {(decision.policy_sha256 or 'none')[:12]}, "
                    f"this server requires {self.gate.policy_sha256[:12]}); it must be scanned again")
        if decision.source != model_version.source:
            return f"{label}'s decision was recorded for other weights ({decision.source})"
        return None

    # -- after MLflow answered -----------------------------------------------------------------
    def mark_pending(self, params: CreateParams, response: Response) -> None:
        """A version just created waits for its scan, however it was created; ``gate.*`` tags its
        creator gave (a copy's) were left out, and that is recorded."""
        if response.status_code != 200:
            return
        version = (response.get_json(silent=True) or {}).get("model_version", {})
        name, number = version.get("name"), version.get("version")
        if not (name and number):
            return
        dropped = g.get("weightgate_dropped_tags")
        why = "copied with its source's gate.* tags, which were dropped" if dropped else ""
        self.gate.decisions.mark_pending(name, number, pending_summary(why), "registered")
        self.gate.publish(name, number)  # also removes gate.* tags a request MLflow parsed otherwise kept
        self.gate.log(name, number, LedgerAction.REGISTERED, "", LedgerOutcome.RECORDED)
        if dropped:
            self.gate.log(name, number, LedgerAction.GATE_TAGS_DROPPED, ",".join(t.split("=", 1)[0] for t in dropped),
                          LedgerOutcome.RECORDED, f"source {version.get('source', '')}; dropped " + "; ".join(dropped))

    def follow_rename(self, params: RenameParams, response: Response) -> None:
        """A renamed registered model keeps its versions' decisions (and its claims)."""
        if response.status_code == 200 and params.name and params.new_name:
            self.gate.decisions.rename_model(params.name, params.new_name)
            self.gate.claims.rename_model(params.name, params.new_name)

    def log_alias_set(self, params: AliasParams, response: Response) -> None:
        if self.gate.config.is_protected(params.alias):
            self._log_answer(params.name, params.version, LedgerAction.ALIAS_SET, params.alias, response)

    def log_alias_delete(self, params: AliasParams, response: Response) -> None:
        if not self.gate.config.is_protected(params.alias):
            return
        held = g.get("weightgate_alias_version")
        if held is None and response.status_code == 200:
            self.gate.log(params.name, "", LedgerAction.ALIAS_DELETE, params.alias, LedgerOutcome.NOT_FOUND,
                          f"no alias '{params.alias}' on model {params.name}: nothing was deleted")
            return
        self._log_answer(params.name, held or "", LedgerAction.ALIAS_DELETE, params.alias, response)

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
