"""What a worker records about one model version: the decision and everything behind it.

One pydantic model shared by the three places that handle it: the worker and the webhook receiver
build it (:mod:`mlflow_plugin.service.judge`), the server plugin's record endpoint validates it
(:mod:`mlflow_plugin.server.bodies`: a wrong field is a 400 naming it) and keeps it in its table
(:mod:`mlflow_plugin.server.decisions`), and the decision run holds it as params and tags
(:mod:`mlflow_plugin.service.decision_run`). The version itself carries only the four tags of
:data:`gate.vocabulary.VERSION_TAGS`: status, summary, a link and the decision run.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gate.vocabulary import VersionStatus

DECIDED_STATUSES = (VersionStatus.APPROVED, VersionStatus.WARNED, VersionStatus.BLOCKED, VersionStatus.ERROR)
Attempts = Annotated[int, Field(ge=1)]


class DecisionRecord(BaseModel):
    """A recorded outcome: a decision (approved/warned/blocked), or ``error`` with the stage that failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: str
    summary: str = Field(min_length=1)
    reason: str
    source: str                   # the version's source when it was judged (a later change voids the decision)
    decided_at: str               # gate.vocabulary.TIMESTAMP_FORMAT
    attempts: Attempts            # tries the check took (transient errors retried)
    decision_run: str | None = None
    experiment_id: str | None = None
    policy: str = ""
    policy_sha256: str = ""
    weights_sha256: str = ""
    baseline: str = ""            # models:/name/N compared against, "" for none
    baseline_note: str = ""       # why that baseline, and why others were passed over
    inconclusive_rules: list[str] = Field(default_factory=list)  # ids of rules without a verdict

    @field_validator("status")
    @classmethod
    def _decided(cls, value: str) -> str:
        if value not in DECIDED_STATUSES:
            raise ValueError(f"must be one of {', '.join(DECIDED_STATUSES)}")
        return value

    def run_params(self) -> dict[str, str]:
        """What the decision run keeps as params (set once, as a run's params are)."""
        return {"source": self.source, "baseline": self.baseline or "none", "baseline_note": self.baseline_note[:6000],
                "policy": self.policy, "policy_sha256": self.policy_sha256, "weights_sha256": self.weights_sha256,
                "decided_at": self.decided_at, "attempts": str(self.attempts)}
