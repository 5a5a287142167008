"""The verdict in words: the one owner of how rules are counted and of the lines built on the count.

Every surface says the same thing with these functions: the report's headline, ``gate.summary``
(:func:`summary_line`), ``gate.reason`` and the ledger's decision rows (:func:`reason_text`), the gate
page (which shows those two tags), JUnit and ``check``'s text (:func:`count_sentence`). Skipped rules
are never counted as passed: they are grouped by why they did not apply (no baseline, not a
descendant, no layer in scope), and inconclusive rules are counted apart, e.g.
``approved: 4 rules passed, 8 need a baseline (first version)``.

``gate.summary`` (at most :data:`MAX_SUMMARY` characters) names, for each failed rule (block before
warn), its worst offending layer and what changed there against the baseline in the units people
use (``Decision.changes``; gate.report.changes), e.g. ``blocked: encoder.layer.2.attention.self.query:
largest singular value x100 of v1's (spectral-norm-change) | 1 rule failed, 11 passed``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from gate.policy.decision import Decision
from gate.policy.metrics import LAYER_COUNT_METRICS
from gate.report.changes import change_words, lead_words
from gate.report.rules import baseline_label, metric_words, rule_row, value_words
from gate.vocabulary import STATUS_OF_DECISION, RuleStatus, SkipReason, Verdict

MAX_SUMMARY = 300
_MARK = {RuleStatus.PASSED: "PASS", RuleStatus.FAILED: "FAIL", RuleStatus.ERROR: "ERROR", RuleStatus.SKIPPED: "SKIP",
         RuleStatus.INCONCLUSIVE: "INCONCLUSIVE"}


@dataclass
class Tally:
    """How many rules ended how; skipped rules by why (None: a rule skipped for a reason not named)."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    inconclusive: int = 0
    inconclusive_acting: int = 0  # inconclusive rules whose when_inconclusive made them warn or block
    skipped: Counter = field(default_factory=Counter)


def tally(decision: Decision) -> Tally:
    counts = Tally()
    for rule in decision.rules:
        if rule.status == RuleStatus.PASSED:
            counts.passed += 1
        elif rule.status == RuleStatus.FAILED:
            counts.failed += 1
        elif rule.status == RuleStatus.ERROR:
            counts.errors += 1
        elif rule.status == RuleStatus.INCONCLUSIVE:
            counts.inconclusive += 1
            counts.inconclusive_acting += not rule.passed
        else:
            counts.skipped[rule.skipped_because] += 1
    return counts


def count_sentence(decision: Decision) -> str:
    """``4 rules passed, 8 need a baseline (first version)``; ``1 rule failed, 10 passed, 1 skipped
    (not a descendant of v1)``; ``0 rules passed, 1 inconclusive`` ... (every rule counted once)."""
    counts = tally(decision)
    base = baseline_label(decision.baseline)
    parts = []
    if counts.failed:
        parts.append(f"{counts.failed} failed")
    if counts.errors:
        parts.append(f"{counts.errors} could not be evaluated")
    if counts.passed or not parts:
        parts.append(f"{counts.passed} passed")
    if counts.inconclusive:
        acting = f" ({counts.inconclusive_acting} counted against the model)" if counts.inconclusive_acting else ""
        parts.append(f"{counts.inconclusive} inconclusive{acting}")
    for why, number in counts.skipped.items():
        parts.append(_skipped_words(why, number, decision, base))
    first = parts[0].split(" ", 1)
    parts[0] = f"{first[0]} rule{'s' if first[0] != '1' else ''} {first[1]}"
    return ", ".join(parts)


def summary_line(decision: Decision) -> str:
    """``<status>: <phrase>; <phrase> | <counts>``, or ``<status>: <counts>`` when no rule failed
    (at most :data:`MAX_SUMMARY` characters: phrases are cut, the counts never)."""
    word = STATUS_OF_DECISION[decision.decision]
    counts = count_sentence(decision)
    failed = sorted(decision.failed_rules, key=lambda rule: rule.severity != Verdict.BLOCK)
    if not failed:
        return f"{word}: {counts}"
    # One phrase per subject (a layer, or the model): what the rules found there, and which rules.
    found: dict[str, tuple[list[str], list[str]]] = {}
    for rule in failed:
        if (finding := _finding(rule, decision)) is not None:
            subject, words = finding
            seen, ids = found.setdefault(subject, ([], []))
            seen += [word for word in words if word not in seen]
            ids.append(rule.rule_id)
    phrases = "; ".join(f"{subject}{': ' if seen else ''}{', '.join(seen)} ({', '.join(ids)})"
                        for subject, (seen, ids) in found.items()) or "see the report"
    room = MAX_SUMMARY - len(f"{word}:  | {counts}")
    if len(phrases) > room:
        phrases = phrases[:max(room - 1, 0)] + "…"
    return f"{word}: {phrases} | {counts}"


def reason_text(decision: Decision) -> str:
    """``gate.reason``: the counts, then one line per rule that did not pass (its threshold in words,
    the result, what it left out, every offending layer), the layers that changed against the
    baseline, and the ids of the rules that passed."""
    word = STATUS_OF_DECISION[decision.decision]
    total = decision.summary.get("num_layers")
    lines = [f"{word}: {count_sentence(decision)}"]
    changes = {change["name"]: change for change in decision.changes}
    base = baseline_label(decision.baseline)
    for rule in decision.rules:
        if rule.status in (RuleStatus.PASSED, RuleStatus.SKIPPED):
            continue
        row = rule_row(rule, total, decision.baseline)
        line = f"{_MARK[rule.status]} {row.line()}"
        if row.offenders:
            line += "; offending: " + ", ".join(f"{name} ({value})" for name, value in row.offenders)
        lines.append(line)
    for name, change in changes.items():
        lines.append(f"changed vs {base}: {name}: " + change_words(change, None, base))
    skipped = [rule for rule in decision.rules if rule.status == RuleStatus.SKIPPED]
    for why in dict.fromkeys(rule.skipped_because for rule in skipped):
        ids = [rule.rule_id for rule in skipped if rule.skipped_because == why]
        lines.append(f"SKIP ({_skip_reason(why, decision, base)}): " + ", ".join(ids))
    passed = [rule.rule_id for rule in decision.rules if rule.status == RuleStatus.PASSED]
    if passed:
        lines.append("PASS: " + ", ".join(passed))
    return "\n".join(lines)


def mark(status: RuleStatus) -> str:
    """The short word a text line starts with (PASS, FAIL, ERROR, SKIP, INCONCLUSIVE)."""
    return _MARK[status]


def _skipped_words(why: SkipReason | None, number: int, decision: Decision, base: str) -> str:
    if why == SkipReason.NO_BASELINE:
        return f"{number} need{'s' if number == 1 else ''} a baseline ({decision.baseline_note or 'none given'})"
    return f"{number} skipped ({_skip_reason(why, decision, base)})"


def _skip_reason(why: SkipReason | None, decision: Decision, base: str) -> str:
    if why == SkipReason.NO_BASELINE:
        return f"need a baseline: {decision.baseline_note or 'none given'}"
    if why == SkipReason.NOT_DESCENDANT:
        return f"not a descendant of {base}"
    if why == SkipReason.NO_LAYER_IN_SCOPE:
        return "no layer in scope"
    return "does not apply"


def _finding(rule, decision: Decision) -> tuple[str, list[str]] | None:
    """What a failed rule found: its subject (the worst layer, or the model) and the findings there
    in words, without the rule's id (rules that found the same share one phrase)."""
    base = baseline_label(decision.baseline)
    if rule.status == RuleStatus.ERROR:
        return f"{rule.rule_id} could not be evaluated", [rule.reason]
    if rule.status == RuleStatus.INCONCLUSIVE:
        return "too little evidence", [rule.reason]
    if rule.finding:
        return "model", [rule.finding]
    if rule.metric in LAYER_COUNT_METRICS and rule.offending_layers:
        # one cause, one finding: the layer and what is wrong with its weights ("1 NaN weight")
        first, more = rule.offending_layers[0], len(rule.offending_layers) - 1
        return first["name"], [first.get("problem") or metric_words(rule.metric, base)] + (
            [f"+{more} more layer{'s' if more != 1 else ''}"] if more else [])
    if rule.scope == "model" or not rule.offending_layers:
        return "model", [f"{metric_words(rule.metric, base)} {value_words(rule, rule.observed, base)}"]
    # Non-finite values come from NaN/Inf weights, which the no-nonfinite rule already names.
    finite = [o for o in rule.offending_layers if isinstance(o.get("value"), (int, float)) and math.isfinite(o["value"])]
    if not finite:
        return None
    worst = rule.worst if rule.worst in finite else max(finite, key=lambda o: abs(o["value"]))
    change = next((c for c in decision.changes if c["name"] == worst["name"]), {})
    lead = lead_words(change, rule.metric, base)
    # the rule's own value where no unit reads better (e.g. "became random-like"), the cosine beside it
    words = [lead] if lead else [value_words(rule, worst["value"], base), lead_words(change, "cosine_similarity", base)]
    more = len(finite) - 1
    if more:
        words.append(f"+{more} more layer{'s' if more != 1 else ''}")
    return worst["name"], [word for word in words if word]
