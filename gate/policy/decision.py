"""The decision record: what was checked, against what, under which policy, and the verdict.

Everything but ``timestamp`` is a function of the inputs (weights, baseline weights, policy), so
identical inputs give identical records apart from the time; weightgate's version is recorded too.
gate.report.verdict words the record for people (``gate.reason``, ``gate.summary``, the report).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gate.policy.evaluate import RuleOutcome
from gate.vocabulary import RuleStatus, Verdict, WhenInconclusive


@dataclass
class Decision:
    decision: Verdict
    source: str
    baseline: str | None
    policy: dict[str, str]
    weights_sha256: str
    baseline_weights_sha256: str | None
    rules: list[RuleOutcome]
    summary: dict[str, Any] = field(default_factory=dict)
    timestamp: str = ""
    weightgate_version: str = ""
    # The layers failed rules name, side by side with the baseline (gate.report.changes.layer_changes).
    changes: list[dict[str, Any]] = field(default_factory=list)
    # Why this baseline, or why none, in a few words from whoever chose it (the registry worker:
    # "first version"); empty when a caller simply gave one or none.
    baseline_note: str = ""

    @property
    def failed_rules(self) -> list[RuleOutcome]:
        return [rule for rule in self.rules if not rule.passed]

    @property
    def inconclusive_rules(self) -> list[RuleOutcome]:
        return [rule for rule in self.rules if rule.status == RuleStatus.INCONCLUSIVE]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["rules"] = [{**asdict(rule), "passed": rule.passed} for rule in self.rules]
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)


def decide(outcomes: list[RuleOutcome]) -> Verdict:
    """Block on any failed or erroring block rule, on any evaluation error and on an inconclusive
    rule whose ``inconclusive_effect`` is block; warn on failed warn rules and inconclusive rules
    whose effect is warn."""
    def blocks(o: RuleOutcome) -> bool:
        return (o.status == RuleStatus.ERROR or (o.status == RuleStatus.FAILED and o.severity == Verdict.BLOCK)
                or (o.status == RuleStatus.INCONCLUSIVE and o.inconclusive_effect == WhenInconclusive.BLOCK))

    if any(blocks(o) for o in outcomes):
        return Verdict.BLOCK
    if any(o.status == RuleStatus.FAILED or not o.passed for o in outcomes):
        return Verdict.WARN
    return Verdict.APPROVE


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def weightgate_version() -> str:
    try:
        return version("weightgate")
    except PackageNotFoundError:
        return "unknown"
