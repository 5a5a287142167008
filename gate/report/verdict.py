"""The one line a person reads first on a model version page (the ``gate.summary`` tag), e.g.
``blocked: 1 layer with NaN/Inf weights; encoder.layer.2.attention.self.query stable_rank -96% vs v1``.

Built from the decision alone: each failed rule (block before warn) gives one short phrase naming
its worst offending layer and value; the full reasons stay in ``gate.reason`` and the report.
"""

from __future__ import annotations

import math
import re

from gate.policy.decision import Decision
from gate.vocabulary import STATUS_OF_DECISION, RuleStatus, Verdict

MAX_SUMMARY = 300


def summary_line(decision: Decision) -> str:
    """``<status>: <phrase>; <phrase>; ...`` (at most :data:`MAX_SUMMARY` characters)."""
    word = STATUS_OF_DECISION[decision.decision]
    failed = sorted(decision.failed_rules, key=lambda rule: rule.severity != Verdict.BLOCK)
    if not failed:
        return f"{word}: all {len(decision.rules)} rules passed"
    phrases = [phrase for rule in failed if (phrase := _phrase(rule, decision.baseline))]
    line = f"{word}: " + "; ".join(dict.fromkeys(phrases))
    return line if len(line) <= MAX_SUMMARY else line[:MAX_SUMMARY - 1] + "…"


def _phrase(rule, baseline: str | None) -> str | None:
    if rule.status == RuleStatus.ERROR:
        return f"{rule.rule_id} could not be evaluated ({rule.reason})"
    if rule.metric == "num_nonfinite" and rule.observed is not None:
        count = int(rule.observed)
        return f"{count} layer{'s' if count != 1 else ''} with NaN/Inf weights"
    relative = rule.threshold.get("change") == "relative"
    against = f" vs {_version_label(baseline)}" if "change" in rule.threshold and baseline else ""
    if rule.scope == "model" or not rule.offending_layers:
        return f"model {rule.metric} {_value(rule.observed, relative, 'change' in rule.threshold)}{against} ({rule.rule_id})"
    # Non-finite values come from NaN/Inf weights, which the no-nonfinite rule already names.
    finite = [o for o in rule.offending_layers if isinstance(o.get("value"), (int, float)) and math.isfinite(o["value"])]
    if not finite:
        return None
    worst = max(finite, key=lambda o: abs(o["value"]))
    more = len(finite) - 1
    tail = f" (+{more} more layer{'s' if more != 1 else ''})" if more else ""
    return f"{worst['name']} {rule.metric} {_value(worst.get('value'), relative, 'change' in rule.threshold)}{against}{tail}"


def _value(value, relative: bool, change: bool) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "not finite"
    if relative:
        return f"{value * 100:+.0f}%"
    return f"{value:+.3g}" if change else f"{value:.3g}"


def _version_label(baseline: str) -> str:
    """``models:/name/3`` -> ``v3``; other sources as given."""
    match = re.fullmatch(r"models:/[^@]+/(\d+)", baseline)
    return f"v{match.group(1)}" if match else baseline.rstrip("/").rsplit("/", 1)[-1]
