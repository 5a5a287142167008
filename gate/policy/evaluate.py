"""Evaluate a policy's rules on a scan (and a baseline scan) with Great Expectations.

Schema 2 adds how sure a verdict is: a rule on power-law metrics counts only well-fitted layers
(gate.metrics.fit_quality; the likelihood-ratio part of the verdict runs here, only on layers that would
otherwise count against the model) and is ``inconclusive`` when too few layers are well fitted;
a rule on a share of layers (``random_like_fraction``) is inconclusive when its verdicts cover less
of the model's weights than ``min_judged_share``; rules on the baseline's weights (cosine
similarity, relative distance) read a table of layer pairs; ``lineage: descendant`` rules apply
only to a model that descends from its baseline. What an inconclusive rule does to the decision is
the rule's ``when_inconclusive`` (gate.policy.decision).

Each rule becomes one expectation (values between bounds, with the rule's ``mostly`` share) run on
an in-memory frame of the rule's layers, or of the single model row (gate.policy.frames: layers with
NaN/Inf or all-zero weights are left out and named, judged only by the rules on those problems).
Our own layer decides the outcome, because Great Expectations does not: NaN would pass its range
checks as "missing", so a layer's NaN value is replaced by one just outside the allowed range and
counts as a violation; a model value that is NaN is no evidence (inconclusive); an expectation
that raises (a missing column, say) is an evaluation error and fails closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gate.jsonvalues import metric_value
from gate.metrics.fit_quality import fit_quality
from gate.policy.frames import MODEL_ROW, QUANTISATION_ERROR, rule_frame
from gate.policy.metrics import FRACTION_METRICS, LAYER_COUNT_METRICS
from gate.policy.quantisation import quantisation_finding
from gate.policy.schema import Policy, PolicyError, Rule
from gate.scanning.result import ScanResult
from gate.scanning.summary import judged_evidence
from gate.vocabulary import LayerStatus, LeftOut, RuleStatus, SkipReason, Verdict, WhenInconclusive, WhenNoBaseline

__all__ = ["LINEAGE_COSINE", "MODEL_ROW", "RuleOutcome", "evaluate", "lineage_cosine"]

# A model descends from its baseline (fine-tune, quantisation, new head) when the median |cosine|
# between matched layers is at least this. bench/ZOO.md (median |cosine| with the parent, per kind):
# healthy fine-tunes, new heads and every weight defect stay above 0.9; siblings from other seeds
# sit near 0, and a sibling retrained from the same initialisation with another learning rate at
# 0.67 (relative distance ~1.2: not a descendant, and its layers legitimately moved), so per-layer
# lineage rules skip retrains.
LINEAGE_COSINE = 0.8


@dataclass
class RuleOutcome:
    """One rule's verdict: ``status`` is passed, failed, error (fails closed), skipped, or
    inconclusive (too little trustworthy evidence: recorded and shown; a violation only where the
    rule's ``when_inconclusive`` says so).

    The evidence behind it, as structured fields (None where they do not apply):

    - ``judged``: layers whose values decided the outcome (a layer rule's compared rows; for a
      model rule on a share of layers, the layers with a verdict; None for a model rule on one
      model-level number);
    - ``in_scope``: layers the rule selected (its filters; for a share-of-layers model rule, every
      weight layer of the model), judged or not;
    - ``not_evaluable``: ``{"name", "problem"}`` of selected layers left out because their weights
      (or their baseline partner's) are NaN/Inf or all zero; the rules on those problems
      (no-nonfinite-layers, no-all-zero-layers) judge them instead, once;
    - ``judged_weight_share``: for a share-of-layers model rule, the share of the model's weights in
      the judged layers;
    - ``inconclusive_effect``: for an inconclusive rule, what it did to the decision (the rule's
      ``when_inconclusive``: pass, warn or block);
    - ``left_out``: for a layer rule, the model's other layers counted by why the rule did not judge
      them (gate.vocabulary.LeftOut, not-evaluable ones included), so ``judged`` + the counts is the
      number of layers in the scan;
    - ``worst``: for a layer rule, the judged layer whose value lies furthest towards or beyond the
      bounds, ``{"name", "value"}``;
    - ``skipped_because``: why a skipped rule did not apply (gate.vocabulary.SkipReason);
    - ``finding``: what a failed rule found in a reader's words where its values do not say it
      (the quantisation-error rule: ``4-bit per-channel quantisation of v1, weights moved 14%``).

    ``observed``: a model rule's value (or change); a layer rule's share of judged layers within
    bounds. gate.report.rules words all of these for people.
    """

    rule_id: str
    severity: Verdict
    scope: str
    metric: str
    status: RuleStatus
    observed: float | None
    threshold: dict[str, Any]
    offending_layers: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    description: str = ""
    judged: int | None = None
    in_scope: int | None = None
    not_evaluable: list[dict[str, str]] = field(default_factory=list)
    judged_weight_share: float | None = None
    inconclusive_effect: WhenInconclusive | None = None
    left_out: dict[str, int] = field(default_factory=dict)
    worst: dict[str, Any] | None = None
    skipped_because: SkipReason | None = None
    finding: str = ""

    @property
    def passed(self) -> bool:
        """True unless the rule makes the decision a warning or block: failed, error, or inconclusive
        with ``inconclusive_effect`` warn or block."""
        if self.status == RuleStatus.INCONCLUSIVE:
            return self.inconclusive_effect in (None, WhenInconclusive.PASS)
        return self.status in (RuleStatus.PASSED, RuleStatus.SKIPPED)


def evaluate(policy: Policy, scan: ScanResult, baseline: ScanResult | None = None,
             pairs: pd.DataFrame | None = None) -> list[RuleOutcome]:
    """All rules' outcomes, in policy order. A change rule without a baseline is an input error
    unless the rule says ``when_no_baseline: skip``. ``pairs``: per-layer cosine similarity and
    relative distance of the model's weights against the baseline's (gate.compare.layer_distances),
    needed when the policy has rules on them."""
    missing = [r.id for r in policy.rules if r.needs_baseline and baseline is None and r.when_no_baseline == WhenNoBaseline.ERROR]
    if missing:
        raise PolicyError(f"{policy.path}: rules {', '.join(missing)} compare against a baseline, but none was given; "
                          "pass --baseline SOURCE (or mark the rules 'when_no_baseline: skip')")
    if baseline is not None and pairs is None and policy.needs_baseline_weights():
        raise PolicyError(f"{policy.path}: rules compare the weights with the baseline's; pass the layer pairs")
    validator = _Validator()
    outcomes = [_evaluate_rule(rule, scan, baseline, pairs, validator) for rule in policy.rules]
    for rule, outcome in zip(policy.rules, outcomes):
        if outcome.status == RuleStatus.INCONCLUSIVE:
            outcome.inconclusive_effect = rule.when_inconclusive
    return outcomes


def lineage_cosine(pairs: pd.DataFrame) -> float:
    """Median |cosine| between matched finite layers of a model and its baseline (NaN if none)."""
    ok = pairs[pairs["status"] == LayerStatus.OK]["cosine_similarity"].abs().dropna()
    return float(ok.median()) if len(ok) else math.nan


def _evaluate_rule(rule: Rule, scan: ScanResult, baseline: ScanResult | None, pairs: pd.DataFrame | None,
                   validator: "_Validator") -> RuleOutcome:
    outcome = RuleOutcome(rule.id, rule.severity, rule.scope, rule.metric, RuleStatus.PASSED, None, _threshold(rule),
                          description=rule.description)
    if rule.needs_baseline and baseline is None:
        outcome.status, outcome.reason = RuleStatus.SKIPPED, "no baseline given"
        outcome.skipped_because = SkipReason.NO_BASELINE
        return outcome
    if rule.lineage == "descendant":
        median = lineage_cosine(pairs)
        if not median >= LINEAGE_COSINE:
            measured = f"median layer |cosine| {median:.4g}" if math.isfinite(median) else "no layer pair with a finite cosine"
            outcome.status, outcome.skipped_because = RuleStatus.SKIPPED, SkipReason.NOT_DESCENDANT
            outcome.reason = (f"the model does not descend from its baseline ({measured} < {LINEAGE_COSINE:g}): "
                              "a retrain from scratch has no per-layer lineage to judge")
            return outcome
    built = rule_frame(rule, scan, baseline, pairs)
    frame = built.values
    outcome.in_scope, outcome.not_evaluable, outcome.left_out = built.in_scope, built.not_evaluable, built.left_out
    if frame.empty and built.not_evaluable and len(built.not_evaluable) == built.in_scope:
        outcome.status, outcome.judged = RuleStatus.INCONCLUSIVE, 0
        outcome.reason = f"no layer in the rule's scope can be judged: {_problems(built.not_evaluable)}"
        return outcome
    if frame.empty and rule.metric == QUANTISATION_ERROR:  # nothing moved onto a grid: nothing quantised
        outcome.status, outcome.judged = RuleStatus.PASSED, 0
        outcome.reason = "no layer moved onto an integer grid its baseline is not on"
        return outcome
    if frame.empty and rule.scoped:
        # schema 2: a rule scoped to layers a model does not have (dense M >= 128 in a small CNN) does
        # not apply to it; schema 1 kept failing closed, and still does
        outcome.status, outcome.reason = RuleStatus.SKIPPED, "no layer in the rule's scope"
        outcome.skipped_because = SkipReason.NO_LAYER_IN_SCOPE
        return outcome
    if frame.empty:
        outcome.status, outcome.reason = RuleStatus.ERROR, "no layer matches the rule's filters, so there is no evidence"
        return outcome
    if rule.scope == "model":
        short = _model_evidence(rule, outcome, scan, float(frame["value"].iloc[0]))
        if short:
            outcome.status, outcome.reason = RuleStatus.INCONCLUSIVE, short
            return outcome
    if rule.fit == "well_fitted":
        fitted, inconclusive = _well_fitted(rule, frame, scan)
        if not inconclusive and len(fitted) < len(frame):
            outcome.left_out[LeftOut.NOT_WELL_FITTED] = len(frame) - len(fitted)
        frame = fitted
        if inconclusive:
            outcome.status, outcome.reason, outcome.judged = RuleStatus.INCONCLUSIVE, inconclusive, 0
            return outcome
    values = frame["value"].astype(float)
    low, high = rule.condition.low, rule.condition.high
    if rule.scope == "layer":
        outcome.judged, outcome.worst = len(frame), _worst(frame["name"], values, low, high)
    outside = (high + 1.0) if high is not None else (low - 1.0)
    frame = frame.assign(value=values.fillna(outside).replace([math.inf, -math.inf], outside))
    result = validator.between(frame, low, high, rule.mostly if rule.scope == "layer" else 1.0)
    exception = result.exception_info or {}
    raised = exception.get("raised_exception") or any(
        isinstance(v, dict) and v.get("raised_exception") for v in exception.values())
    if raised:
        outcome.status, outcome.reason = RuleStatus.ERROR, f"evaluation error: {_exception_message(exception)}"
        return outcome
    unexpected = {row["name"] for row in result.result.get("unexpected_index_list") or []}
    offending = [{"name": name, "value": metric_value(value)}
                 for name, value in zip(frame["name"], values) if name in unexpected]
    outcome.offending_layers = [] if rule.scope == "model" else offending
    if rule.scope == "model":
        outcome.observed = metric_value(values.iloc[0])
    else:
        outcome.observed = 1.0 - len(unexpected) / len(frame)  # share of layers within bounds
    if not result.success:
        outcome.status = RuleStatus.FAILED
        outcome.reason = _failure_reason(rule, outcome, len(frame), scan)
        if rule.metric == QUANTISATION_ERROR:  # name the scheme first: "4-bit per-channel quantisation of v1, ..."
            outcome.finding = quantisation_finding(scan, baseline, pairs)
            outcome.reason = f"{outcome.finding}: {outcome.reason}"
    return outcome


def _model_evidence(rule: Rule, outcome: RuleOutcome, scan: ScanResult, value: float) -> str:
    """Why a model rule has no verdict ("" when it has one): a share of layers judged on too little
    of the model, or no value at all (a NaN is no evidence, neither a pass nor a violation). Fills
    the outcome's evidence fields for share-of-layers rules."""
    column = FRACTION_METRICS.get(rule.metric)
    if column is not None:
        judged, in_scope, share = judged_evidence(scan.layers, column)
        outcome.judged, outcome.in_scope, outcome.judged_weight_share = judged, in_scope, metric_value(share)
        if judged < rule.min_judged_layers or not share >= rule.min_judged_share:  # min_judged_layers >= 1
            covered = f"{share:.1%}" if math.isfinite(share) else "none"
            layers = f" and >= {rule.min_judged_layers} layers" if rule.min_judged_layers > 1 else ""
            return (f"{judged} of {in_scope} layers judged, {covered} of the weights (needs >= "
                    f"{rule.min_judged_share:.0%}{layers}){_unjudged_examples(scan.layers, column)}")
    if not math.isfinite(value):
        what = f"the change of {rule.metric}" if rule.condition.kind == "change" else rule.metric
        return f"{what} has no value for this model: there is nothing to compare"
    return ""


def _unjudged_examples(layers: pd.DataFrame, column: str, limit: int = 3) -> str:
    """``; e.g. layers.0: <why it has no verdict>`` for the first weight layers without a verdict."""
    why = layers["random_like_reason"] if column == "random_like" and "random_like_reason" in layers.columns \
        else pd.Series("", index=layers.index)
    unjudged = layers[(layers["status"] != LayerStatus.OK) | layers.get(column, pd.Series(index=layers.index)).isna()]
    examples = []
    for index, row in unjudged.head(limit).iterrows():
        reason = row["reason"] if row["status"] != LayerStatus.OK else why.get(index, "")
        examples.append(f"{row['name']}: {reason or 'no verdict'}")
    return "; e.g. " + "; ".join(examples) if examples else ""


def _problems(layers: list[dict[str, str]], limit: int = 5) -> str:
    """``a: 1 NaN weight (of 2048); b: all weights are zero`` (the first ``limit``, then a count)."""
    text = "; ".join(f"{o['name']}: {o['problem']}" for o in layers[:limit])
    return text + (f"; and {len(layers) - limit} more" if len(layers) > limit else "")


def _well_fitted(rule: Rule, frame: pd.DataFrame, scan: ScanResult) -> tuple[pd.DataFrame, str]:
    """The rows of well-fitted layers, or a reason why the rule is inconclusive.

    The scan's verdict covers tail length, KS distance and xmin at the edge; layers that would
    count against the model also get the likelihood-ratio test (when their eigenvalues were kept).
    """
    table = scan.layers.set_index("name")
    quality = table["fit_quality"] if "fit_quality" in table.columns else pd.Series(dtype=object)
    good = frame["name"].map(lambda n: quality.get(n) == "good")
    low, high = rule.condition.low, rule.condition.high
    values = frame["value"].astype(float)
    outside = ~values.between(low if low is not None else -math.inf, high if high is not None else math.inf)
    lr_poor: dict[str, str] = {}
    for name in frame.loc[good & outside, "name"]:
        evals = scan.spectra.get(name)
        if evals is None:
            continue
        row = table.loc[name]
        verdict = fit_quality(evals, row["alpha"], row["xmin"], row["D"], int(row["num_pl_spikes"]))
        if verdict["fit_quality"] != "good":
            lr_poor[name] = verdict["fit_reason"]
    good &= ~frame["name"].isin(lr_poor)
    share = float(good.mean())
    if share < rule.min_well_fitted or not good.any():
        reasons = [f"{n}: {table.loc[n, 'fit_reason'] if n not in lr_poor else lr_poor[n]}"
                   for n in frame.loc[~good, "name"][:3]]
        return frame.iloc[0:0], (f"only {int(good.sum())} of {len(frame)} layers have a well-fitted power law "
                                 f"(needs a share >= {rule.min_well_fitted:g}); e.g. " + "; ".join(reasons))
    return frame[good.to_numpy()], ""


def _worst(names: pd.Series, values: pd.Series, low: float | None, high: float | None) -> dict[str, Any] | None:
    """The layer whose value lies furthest towards or beyond the bounds (a missing value counts as
    furthest: it is a violation)."""
    if not len(values):
        return None
    below = (low - values) if low is not None else pd.Series(-math.inf, index=values.index)
    above = (values - high) if high is not None else pd.Series(-math.inf, index=values.index)
    excess = np.fmax(below.to_numpy(dtype=float), above.to_numpy(dtype=float))
    excess[~np.isfinite(values.to_numpy(dtype=float))] = math.inf
    at = int(np.argmax(excess))
    return {"name": str(names.iloc[at]), "value": metric_value(values.iloc[at])}


def _threshold(rule: Rule) -> dict[str, Any]:
    described = rule.condition.describe()
    if rule.scope == "layer":
        described["mostly"] = rule.mostly
    return described


def _failure_reason(rule: Rule, outcome: RuleOutcome, total: int, scan: ScanResult) -> str:
    what = f"change of {rule.metric}" if rule.condition.kind == "change" else rule.metric
    bounds = _bounds_text(rule)
    if rule.scope == "model" and rule.metric in LAYER_COUNT_METRICS and rule.condition.kind != "change":
        # one finding per cause: the layers and what is wrong with their weights
        problem = LAYER_COUNT_METRICS[rule.metric]
        table = scan.layers
        bad = table[table["weight_problem"] == problem] if "weight_problem" in table.columns else table.iloc[0:0]
        found = [{"name": n, "problem": r} for n, r in zip(bad["name"], bad["reason"])]
        outcome.offending_layers = [{"name": o["name"], "value": None, "problem": o["problem"]} for o in found]
        if found:
            count = f"{len(found)} layers: " if len(found) > 1 else ""
            return count + _problems(found)
    if rule.scope == "model":
        return f"{what} is {outcome.observed:.4g}, outside {bounds}"
    names = ", ".join(o["name"] for o in outcome.offending_layers[:5])
    more = f" and {len(outcome.offending_layers) - 5} more" if len(outcome.offending_layers) > 5 else ""
    return (f"{len(outcome.offending_layers)} of {total} layers have {what} outside {bounds} "
            f"(required share within: {rule.mostly:g}): {names}{more}")


def _bounds_text(rule: Rule) -> str:
    low, high = rule.condition.low, rule.condition.high
    suffix = " (relative)" if rule.condition.relative else ""
    if low is not None and high is not None:
        return f"[{low:g}, {high:g}]{suffix}"
    return (f">= {low:g}" if low is not None else f"<= {high:g}") + suffix


def _exception_message(exception: dict[str, Any]) -> str:
    if exception.get("exception_message"):
        return str(exception["exception_message"])
    messages = [v.get("exception_message") for v in exception.values() if isinstance(v, dict)]
    return next((m for m in messages if m), "unknown error")


class _Validator:
    """One ephemeral Great Expectations context (no files, no network) for a whole evaluation."""

    def __init__(self) -> None:
        import great_expectations as gx  # 3-6 s to import: only where a policy is evaluated

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = _progress_bars_off()
        source = context.data_sources.add_pandas("weightgate")
        self._batches = source.add_dataframe_asset("rule_values").add_batch_definition_whole_dataframe("all")

    def between(self, frame: pd.DataFrame, low: float | None, high: float | None, mostly: float):
        import great_expectations.expectations as gxe

        expectation = gxe.ExpectColumnValuesToBeBetween(column="value", min_value=low, max_value=high, mostly=mostly)
        batch = self._batches.get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(expectation, result_format={"result_format": "COMPLETE",
                                                          "unexpected_index_column_names": ["name"]})


def _progress_bars_off():
    from great_expectations.data_context.types.base import ProgressBarsConfig

    return ProgressBarsConfig(globally=False, metric_calculations=False)
