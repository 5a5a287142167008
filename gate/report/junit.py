"""``weightgate check --format junit``: the decision as a JUnit XML report, the format CI servers
(GitHub Actions test reporters, GitLab ``artifacts:reports:junit``, Jenkins) show natively.

One ``testcase`` per policy rule, named by its id: a failed rule is a ``failure`` (type = its
severity, message = the rule in words (gate.report.rules: its threshold as a sentence and the result
against the model's layer count), text = every offending layer with its value and what changed
against the baseline), an evaluation error an ``error``, a rule that did not apply (no baseline,
not a descendant, no layer in scope) or had too little evidence (inconclusive) ``skipped`` with the
reason: none of them reads as a pass. The suite's ``verdict`` property is the counting sentence of
gate.report.verdict.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gate.policy.decision import Decision
from gate.report.changes import change_words
from gate.report.rules import baseline_label, rule_row
from gate.report.verdict import count_sentence
from gate.vocabulary import RuleStatus


def to_junit(decision: Decision, elapsed_seconds: float = 0.0) -> str:
    """The XML document (UTF-8 declaration included)."""
    failures = sum(1 for rule in decision.rules if rule.status == RuleStatus.FAILED)
    errors = sum(1 for rule in decision.rules if rule.status == RuleStatus.ERROR)
    skipped = sum(1 for rule in decision.rules if rule.status in (RuleStatus.SKIPPED, RuleStatus.INCONCLUSIVE))
    counts = {"tests": str(len(decision.rules)), "failures": str(failures), "errors": str(errors),
              "skipped": str(skipped), "time": f"{elapsed_seconds:.3f}"}
    suite_name = f"weightgate {decision.policy['name']}: {decision.source}"
    root = ET.Element("testsuites", {"name": "weightgate"})
    suite = ET.SubElement(root, "testsuite", {"name": suite_name, **counts, "timestamp": decision.timestamp[:19]})
    properties = ET.SubElement(suite, "properties")
    for name, value in (("decision", decision.decision), ("verdict", count_sentence(decision)), ("source", decision.source),
                        ("baseline", decision.baseline or ""), ("policy_sha256", decision.policy["sha256"]),
                        ("weights_sha256", decision.weights_sha256)):
        ET.SubElement(properties, "property", {"name": name, "value": value})
    for rule in decision.rules:
        case = ET.SubElement(suite, "testcase", {"classname": f"weightgate.{decision.policy['name']}",
                                                 "name": rule.rule_id, "time": "0"})
        row = rule_row(rule, decision.summary.get("num_layers"), decision.baseline)
        if rule.status == RuleStatus.FAILED:
            failure = ET.SubElement(case, "failure", {"message": row.line(), "type": rule.severity})
            failure.text = _details(row, decision)
        elif rule.status == RuleStatus.ERROR:
            error = ET.SubElement(case, "error", {"message": row.line(), "type": "evaluation-error"})
            error.text = _details(row, decision)
        elif rule.status in (RuleStatus.SKIPPED, RuleStatus.INCONCLUSIVE):
            ET.SubElement(case, "skipped", {"message": row.note})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=False).join(
        ['<?xml version="1.0" encoding="UTF-8"?>\n', "\n"])


def _details(row, decision: Decision) -> str:
    """The rule in words, then every offending layer (none left out) with what changed there."""
    lines = [f"threshold: {row.threshold}"] + [text for text in (row.result, row.not_judged, row.note) if text]
    if row.offenders:
        changes = {change["name"]: change for change in decision.changes}
        base = baseline_label(decision.baseline)
        lines.append(f"offending layers ({len(row.offenders)}):")
        for name, value in row.offenders:
            change = f"; {change_words(changes[name], None, base)}" if name in changes else ""
            lines.append(f"  {name}: {value}{change}")
    return "\n".join(lines)
