"""Policy rules in words: each rule's threshold as a sentence, its result against one denominator per
model, what it left out and why, and every offending layer with its value in the rule's units.

Every surface that shows a rule (the HTML report, ``check``'s text, JUnit messages, ``gate.reason``
and the gate page that shows it) builds it with :func:`rule_row`, from the structured fields of
:class:`gate.policy.evaluate.RuleOutcome` (``judged``, ``left_out``, ``worst``, ``offending_layers``),
never by re-reading ``reason`` strings. The denominator is the model's layer count (rows of the
layer table, ``Decision.summary["num_layers"]``): a rule that judged 38 of 40 layers says which 2 it
left out and why, so every rule of a model counts against the same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gate.policy.quantisation import version_label
from gate.vocabulary import LeftOut, RuleStatus, WhenInconclusive

# What a metric is, for a reader; "{base}" is the baseline's label (v3, model.safetensors).
METRIC_WORDS = {
    "cosine_similarity": "cosine with {base}", "relative_distance": "distance from {base} (share of its norm)",
    "lambda_max": "lambda_max", "spectral_norm": "lambda_max", "sv_max": "largest singular value",
    "stable_rank": "stable rank", "stable_rank_peer_ratio": "stable rank / median of its peers'",
    "spectral_norm_peer_ratio": "lambda_max / median of its peers'", "mlh": "MLH (Benford)",
    "random_like": "random-like", "coarse_grid": "coarse grid", "alpha": "alpha",
    "alpha_weighted": "alpha-hat", "num_nonfinite": "layers with NaN/Inf weights",
    "num_analysed": "layers analysed", "random_like_fraction": "share of judged layers that look random",
    "num_degenerate": "degenerate layers", "value_levels": "distinct values",
    "num_all_zero": "all-zero layers",
    "quantisation_error": "distance from {base} of a layer newly on an integer grid (share of its norm)",
}
# Metrics stored as log10 of a quantity: their changes read as factors of the quantity.
LOG10_OF = {"log_spectral_norm": "lambda_max", "log_norm": "Frobenius norm", "log_alpha_norm": "alpha-norm"}
# 0/1 metrics: "rises by at most 0.5" means "no layer becomes ... unless it was": (becomes, was, became).
BINARY = {"random_like": ("becomes random-like", "was random-like", "became random-like"),
          "coarse_grid": ("falls on a coarse grid (16 or fewer distinct values)", "was on one",
                          "fell on a coarse grid")}
LEFT_OUT_WORDS = {
    LeftOut.SKIPPED_BY_SCAN: ("skipped by the scan", "skipped by the scan"),
    LeftOut.FIRST_OR_LAST: ("first or last layer", "first and last layers"),
    LeftOut.FILTERED: ("outside the rule's layer filters", "outside the rule's layer filters"),
    LeftOut.OUTPUT_HEAD: ("output head", "output heads"),
    LeftOut.NO_BASELINE_PARTNER: ("without a partner in the baseline", "without a partner in the baseline"),
    LeftOut.NO_VALUE: ("without a value for the metric", "without a value for the metric"),
    LeftOut.NOT_WELL_FITTED: ("power law not well fitted", "power laws not well fitted"),
    LeftOut.NOT_EVALUABLE: ("not evaluable (unusable weights)", "not evaluable (unusable weights)"),
    LeftOut.NOT_NEWLY_QUANTISED: ("not newly on an integer grid", "not newly on an integer grid"),
}


@dataclass
class RuleRow:
    """One rule for a reader. ``threshold``: the bound as a sentence; ``result``: what was found
    (``N of M layers`` for layer rules, the value for model rules), with the worst layer;
    ``not_judged``: the model's layers the rule left out, by why; ``offenders``: every offending
    layer as (name, value in the rule's units); ``note``: why a rule was skipped, inconclusive or
    could not be evaluated."""

    rule_id: str
    severity: str
    status: RuleStatus
    threshold: str
    result: str = ""
    not_judged: str = ""
    offenders: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""

    def line(self) -> str:
        """The row as one line of text (check's output, gate.reason, JUnit)."""
        parts = [f"{self.rule_id} [{self.severity}]: {self.threshold}"]
        parts += [text for text in (self.result, self.not_judged, self.note) if text]
        return "; ".join(parts)


def rule_row(rule, total_layers: int | None, baseline: str | None) -> RuleRow:
    """The :class:`RuleRow` of one :class:`RuleOutcome`; ``total_layers`` is the model's layer count."""
    base = baseline_label(baseline)
    row = RuleRow(rule.rule_id, str(rule.severity), rule.status, threshold_sentence(rule, base))
    if rule.status in (RuleStatus.SKIPPED, RuleStatus.INCONCLUSIVE, RuleStatus.ERROR):
        row.note = f"{inconclusive_words(rule) or rule.status}: {rule.reason}"
        return row
    if rule.scope == "model":
        row.result = f"{_metric(rule.metric, base)}: {value_words(rule, rule.observed, base)}"
        if rule.judged is not None and rule.in_scope:
            share = rule.judged_weight_share
            row.result += (f" (judged on {rule.judged} of {rule.in_scope} layers"
                           + (f", {share:.1%} of the weights)" if isinstance(share, (int, float)) else ")"))
        if rule.not_evaluable:
            row.not_judged = f"not evaluable: {len(rule.not_evaluable)} layer(s) with unusable weights"
        row.offenders = [(o["name"], o.get("problem") or value_words(rule, o.get("value"), base))
                         for o in rule.offending_layers]
        return row
    offending = rule.offending_layers
    total = total_layers if total_layers is not None else (rule.judged or 0) + sum(rule.left_out.values())
    row.result = f"{len(offending)} of the model's {total} layers outside"
    if rule.worst is not None:
        closest = "worst" if offending else "closest to the bound"
        row.result += f" ({closest}: {rule.worst['name']} {value_words(rule, rule.worst.get('value'), base)})"
    row.not_judged = not_judged_words(rule)
    row.offenders = [(o["name"], value_words(rule, o.get("value"), base)) for o in offending]
    return row


def threshold_sentence(rule, base: str = "the baseline") -> str:
    """The rule's bound in words: ``cosine with v1 at least 0.2 in every judged layer``,
    ``lambda_max within 10x of v1's either way``, ``stable rank falls by at most 50%``."""
    threshold, metric = rule.threshold, rule.metric
    if "change" in threshold:
        sentence = _change_sentence(metric, threshold, base)
    else:
        what = _metric(metric, base)
        low, high = threshold.get("min"), threshold.get("max")
        if low is not None and high is not None:
            sentence = f"{what} between {low:g} and {high:g}"
        elif low is not None:
            sentence = f"{what} at least {low:g}"
        else:
            sentence = f"{what} at most {high:g}"
    if rule.scope != "layer" or sentence.startswith("no layer "):
        return sentence
    mostly = threshold.get("mostly", 1.0)
    share = "in every judged layer" if mostly >= 1 else f"in at least {mostly:.0%} of the judged layers"
    return f"{sentence}, {share}"


def _change_sentence(metric: str, threshold: dict[str, Any], base: str) -> str:
    down, up = threshold.get("max_decrease"), threshold.get("max_increase")
    if metric in LOG10_OF:
        quantity = LOG10_OF[metric]
        if up is not None and down is not None and up == down:
            return f"{quantity} within {_factor(up)}x of {base}'s either way"
        bounds = ([f"at most {_factor(up)}x {base}'s"] if up is not None else []) + (
            [f"at least 1/{_factor(down)} of {base}'s"] if down is not None else [])
        return f"{quantity} " + " and ".join(bounds)
    if metric in BINARY and down is None and up is not None and up < 1 and threshold.get("mostly", 1.0) >= 1:
        becomes, was, _ = BINARY[metric]
        return f"no layer {becomes} unless it {was} in {base}"
    what = _metric(metric, base)
    relative = threshold.get("change") == "relative"
    amount = (lambda x: f"{x:.0%}") if relative else (lambda x: f"{x:g}")
    if up is not None and down is not None:
        moves = (f"moves by at most {amount(up)} either way" if up == down
                 else f"falls by at most {amount(down)} and rises by at most {amount(up)}")
    else:
        moves = f"rises by at most {amount(up)}" if up is not None else f"falls by at most {amount(down)}"
    return f"{what} {moves} from {base}'s"


def value_words(rule, value: float | None, base: str = "the baseline") -> str:
    """A value of the rule's metric in its units: a factor for log10 changes (``x10000 of v1's``),
    a percentage for relative changes, a signed change for absolute ones, the value otherwise."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "no value (the layer could not be analysed)"
    threshold = rule.threshold
    if "change" not in threshold:
        return f"{value:.4g}"
    if rule.metric in LOG10_OF:
        return f"x{_factor(value)} of {base}'s"
    if rule.metric in BINARY and value in (0, 1):
        return BINARY[rule.metric][2] if value == 1 else "unchanged"
    if threshold.get("change") == "relative":
        return f"{value:+.1%} vs {base}"
    return f"{value:+.3g} vs {base}"


def inconclusive_words(rule) -> str:
    """``inconclusive`` for an inconclusive rule that did not act; ``inconclusive, counted as block
    (when_inconclusive)`` for one whose policy made it act; empty for other statuses."""
    if rule.status != RuleStatus.INCONCLUSIVE:
        return ""
    effect = rule.inconclusive_effect
    if effect is None or effect == WhenInconclusive.PASS:
        return str(RuleStatus.INCONCLUSIVE)
    return f"{RuleStatus.INCONCLUSIVE}, counted as {effect} (when_inconclusive)"


def not_judged_words(rule) -> str:
    """``not judged: 1 output head, 1 skipped by the scan`` (empty when the rule judged every layer)."""
    parts = [f"{count} {LEFT_OUT_WORDS[LeftOut(why)][count != 1]}" for why, count in rule.left_out.items() if count]
    return "not judged: " + ", ".join(parts) if parts else ""


def baseline_label(baseline: str | None) -> str:
    """``models:/name/3`` -> ``v3``; a path -> its file name; no baseline -> ``the baseline``."""
    return version_label(baseline) if baseline else "the baseline"


def metric_words(metric: str, base: str = "the baseline") -> str:
    """What ``metric`` is, for a reader (its name where there are no better words)."""
    return _metric(metric, base)


def _metric(metric: str, base: str) -> str:
    return METRIC_WORDS.get(metric, metric).format(base=base)


def _factor(log10_change: float) -> str:
    """10**x as a plain factor: 1 -> ``10``, 4 -> ``10000``, -4 -> ``0.0001``."""
    return plain_number(10 ** log10_change)


def plain_number(value: float) -> str:
    """Three significant digits, without an exponent between 1e-4 and 1e6 (``10000``, not ``1e+04``)."""
    return f"{float(f'{value:.3g}'):g}"
