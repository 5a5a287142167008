"""``weightgate check``'s text output: the verdict with the counts, then every rule in words (its
threshold as a sentence, the result against the model's layer count, what it left out, every
offending layer) and, against a baseline, what changed in the offending layers."""

from __future__ import annotations

from gate.policy.decision import Decision
from gate.report.changes import change_words
from gate.report.rules import baseline_label, rule_row
from gate.report.verdict import count_sentence, mark
from gate.vocabulary import RuleStatus

_INDENT = " " * 6


def render_decision(decision: Decision) -> str:
    lines = [
        f"decision: {decision.decision.upper()}: {count_sentence(decision)}",
        f"source:   {decision.source}",
        f"baseline: {decision.baseline or '(none)'}",
        f"policy:   {decision.policy['name']} ({decision.policy['path']}, sha256 {decision.policy['sha256'][:12]})",
        "",
    ]
    total = decision.summary.get("num_layers")
    for rule in decision.rules:
        row = rule_row(rule, total, decision.baseline)
        lines.append(f"{mark(rule.status):5s} {rule.rule_id} [{rule.severity}]: {row.threshold}")
        lines += [_INDENT + text for text in (row.result, row.not_judged, row.note) if text]
        if rule.status == RuleStatus.FAILED and row.offenders:
            lines.append(f"{_INDENT}offending layers ({len(row.offenders)}):")
            lines += [f"{_INDENT}  {name}: {value}" for name, value in row.offenders]
    if decision.changes:
        base = baseline_label(decision.baseline)
        lines += ["", f"what changed in the offending layers against {base}:"]
        lines += [f"  {change['name']}: {change_words(change, None, base)}" for change in decision.changes]
    return "\n".join(lines)
