"""``weightgate check --format junit``: the decision as a JUnit XML report, the format CI servers
(GitHub Actions test reporters, GitLab ``artifacts:reports:junit``, Jenkins) show natively.

One ``testcase`` per policy rule, named by its id: a failed rule is a ``failure`` (type = its
severity, message = the reason, text = the offending layers with their values), an evaluation
error an ``error``, a rule without evidence to apply (no baseline) ``skipped``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gate.policy.decision import Decision
from gate.vocabulary import RuleStatus

OFFENDING_SHOWN = 50


def to_junit(decision: Decision, elapsed_seconds: float = 0.0) -> str:
    """The XML document (UTF-8 declaration included)."""
    failures = sum(1 for rule in decision.rules if rule.status == RuleStatus.FAILED)
    errors = sum(1 for rule in decision.rules if rule.status == RuleStatus.ERROR)
    skipped = sum(1 for rule in decision.rules if rule.status == RuleStatus.SKIPPED)
    counts = {"tests": str(len(decision.rules)), "failures": str(failures), "errors": str(errors),
              "skipped": str(skipped), "time": f"{elapsed_seconds:.3f}"}
    suite_name = f"weightgate {decision.policy['name']}: {decision.source}"
    root = ET.Element("testsuites", {"name": "weightgate"})
    suite = ET.SubElement(root, "testsuite", {"name": suite_name, **counts, "timestamp": decision.timestamp[:19]})
    properties = ET.SubElement(suite, "properties")
    for name, value in (("decision", decision.decision), ("source", decision.source),
                        ("baseline", decision.baseline or ""), ("policy_sha256", decision.policy["sha256"]),
                        ("weights_sha256", decision.weights_sha256)):
        ET.SubElement(properties, "property", {"name": name, "value": value})
    for rule in decision.rules:
        case = ET.SubElement(suite, "testcase", {"classname": f"weightgate.{decision.policy['name']}",
                                                 "name": rule.rule_id, "time": "0"})
        if rule.status == RuleStatus.FAILED:
            failure = ET.SubElement(case, "failure", {"message": rule.reason, "type": rule.severity})
            failure.text = _details(rule)
        elif rule.status == RuleStatus.ERROR:
            error = ET.SubElement(case, "error", {"message": rule.reason, "type": "evaluation-error"})
            error.text = _details(rule)
        elif rule.status == RuleStatus.SKIPPED:
            ET.SubElement(case, "skipped", {"message": rule.reason})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=False).join(
        ['<?xml version="1.0" encoding="UTF-8"?>\n', "\n"])


def _details(rule) -> str:
    lines = [f"{rule.rule_id} [{rule.severity}] {rule.scope} {rule.metric}: {rule.reason}",
             "threshold: " + ", ".join(f"{k}={v}" for k, v in rule.threshold.items() if v is not None)]
    if rule.observed is not None:
        lines.append(f"observed: {rule.observed}")
    if rule.offending_layers:
        lines.append(f"offending layers ({len(rule.offending_layers)}):")
        lines += [f"  {o['name']}: {o.get('value')}" for o in rule.offending_layers[:OFFENDING_SHOWN]]
        if len(rule.offending_layers) > OFFENDING_SHOWN:
            lines.append(f"  ... and {len(rule.offending_layers) - OFFENDING_SHOWN} more (decision.json has all)")
    return "\n".join(lines)
