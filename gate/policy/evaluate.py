"""Evaluate a policy's rules on a scan (and a baseline scan) with Great Expectations.

Schema 2 adds how sure a verdict is: a rule on power-law metrics counts only well-fitted layers
(gate.metrics.fit_quality; the likelihood-ratio part of the verdict runs here, only on layers that would
otherwise count against the model) and is ``inconclusive`` when too few layers are well fitted;
rules on the baseline's weights (cosine similarity, relative distance) read a table of layer pairs;
``lineage: descendant`` rules apply only to a model that descends from its baseline.

Each rule becomes one expectation (values between bounds, with the rule's ``mostly`` share) run on
an in-memory frame of the rule's layers, or of the single model row. Our own layer decides the
outcome, because Great Expectations does not: NaN would pass its range checks as "missing", so a
NaN value is replaced by one just outside the allowed range and counts as a violation; an
expectation that raises (a missing column, say) is an evaluation error and fails closed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gate.jsonvalues import metric_value
from gate.metrics.fit_quality import fit_quality
from gate.policy.metrics import PAIR_METRICS, UNJUDGED_WHEN_NAN
from gate.policy.schema import HEAD_PATTERN, Policy, PolicyError, Rule
from gate.scanning.result import ScanResult
from gate.vocabulary import LayerStatus, LeftOut, RuleStatus, SkipReason, Verdict, WhenNoBaseline

MODEL_ROW = "<model>"
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
    inconclusive (too little trustworthy evidence: recorded and shown, not a violation).

    ``observed``: a model rule's value (or change); a layer rule's share of judged layers within
    bounds. The facts a reader needs beside it (gate.report.rules words them):
    ``judged``: how many of the model's layers a layer rule compared with its bounds (None for model
    rules and rules that did not get that far); ``left_out``: the model's other layers, counted by
    why the rule did not judge them (gate.vocabulary.LeftOut), so ``judged`` + the counts is the
    number of layers in the scan; ``worst``: the judged layer whose value lies furthest towards or
    beyond the bounds, ``{"name", "value"}``; ``skipped_because``: why a skipped rule did not apply
    (gate.vocabulary.SkipReason).
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
    left_out: dict[str, int] = field(default_factory=dict)
    worst: dict[str, Any] | None = None
    skipped_because: SkipReason | None = None

    @property
    def passed(self) -> bool:
        return self.status in (RuleStatus.PASSED, RuleStatus.SKIPPED, RuleStatus.INCONCLUSIVE)


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
    return [_evaluate_rule(rule, scan, baseline, pairs, validator) for rule in policy.rules]


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
            outcome.status, outcome.skipped_because = RuleStatus.SKIPPED, SkipReason.NOT_DESCENDANT
            outcome.reason = (f"the model does not descend from its baseline (median layer |cosine| {_fmt(median)} "
                              f"< {LINEAGE_COSINE:g}): a retrain from scratch has no per-layer lineage to judge")
            return outcome
    frame = _rule_frame(rule, scan, baseline, pairs, outcome.left_out)
    if frame.empty and rule.scoped:
        # schema 2: a rule scoped to layers a model does not have (dense M >= 128 in a small CNN) does
        # not apply to it; schema 1 kept failing closed, and still does
        outcome.status, outcome.reason = RuleStatus.SKIPPED, "no layer in the rule's scope"
        outcome.skipped_because = SkipReason.NO_LAYER_IN_SCOPE
        return outcome
    if frame.empty:
        outcome.status, outcome.reason = RuleStatus.ERROR, "no layer matches the rule's filters, so there is no evidence"
        return outcome
    if rule.fit == "well_fitted":
        fitted, inconclusive = _well_fitted(rule, frame, scan)
        if not inconclusive and len(fitted) < len(frame):
            outcome.left_out[LeftOut.NOT_WELL_FITTED] = len(frame) - len(fitted)
        frame = fitted
        if inconclusive:
            outcome.status, outcome.reason = RuleStatus.INCONCLUSIVE, inconclusive
            return outcome
    values = frame["value"].astype(float)
    low, high = rule.condition.low, rule.condition.high
    if rule.scope == "layer":
        outcome.judged, outcome.worst = len(frame), _worst(frame["name"], values, low, high)
    outside = (high + 1.0) if high is not None else (low - 1.0)
    frame = frame.assign(value=values.fillna(outside).replace([np.inf, -np.inf], outside))
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
        outcome.reason = _failure_reason(rule, outcome, len(frame))
    return outcome


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


def _rule_frame(rule: Rule, scan: ScanResult, baseline: ScanResult | None,
                pairs: pd.DataFrame | None = None, left_out: dict[str, int] | None = None) -> pd.DataFrame:
    """Columns ``name`` and ``value``: the metric (or its change against the baseline). Layers
    with an undetermined verdict (too few eigenvalues for the random-like test, too few weights to
    count value levels) and layers without a baseline partner for a pair metric give no evidence
    and are left out (counted in ``left_out`` by why)."""
    left_out = {} if left_out is None else left_out
    if rule.scope == "model":
        value = scan.summary.get(rule.metric, math.nan)
        if rule.condition.kind == "change":
            value = _change(value, baseline.summary.get(rule.metric, math.nan), rule.condition.relative)
        return pd.DataFrame({"name": [MODEL_ROW], "value": [value]})
    layers = _select_layers(rule, scan.layers, left_out)
    if rule.metric in PAIR_METRICS:
        by_name = pairs.set_index("name")[rule.metric]
        layers = _keep(layers, layers["name"].isin(by_name.index), LeftOut.NO_BASELINE_PARTNER, left_out)
        return pd.DataFrame({"name": layers["name"].to_numpy(),
                             "value": [float(by_name[n]) for n in layers["name"]]})
    changes = rule.condition.kind == "change"
    if changes:
        reference = baseline.layers.set_index("name")
        base_values = reference[rule.metric] if rule.metric in reference.columns else pd.Series(dtype=float)
    if rule.metric in UNJUDGED_WHEN_NAN and rule.metric in layers.columns:
        layers = _keep(layers, layers[rule.metric].notna(), LeftOut.NO_VALUE, left_out)
        if changes:
            layers = _keep(layers, layers["name"].isin(base_values.dropna().index), LeftOut.NO_VALUE, left_out)
    if rule.metric not in layers.columns:
        values = pd.Series(math.nan, index=layers.index)
    else:
        values = layers[rule.metric]
    if changes:
        values = pd.Series([_change(v, base_values.get(n, math.nan), rule.condition.relative)
                            for n, v in zip(layers["name"], values)], index=layers.index)
    return pd.DataFrame({"name": layers["name"].to_numpy(), "value": values.to_numpy(dtype=float)})


def _select_layers(rule: Rule, layers: pd.DataFrame, left_out: dict[str, int] | None = None) -> pd.DataFrame:
    """Layers a rule looks at: not skipped (too small by design), then the rule's filters; the
    layers dropped are counted in ``left_out`` by why."""
    left_out = {} if left_out is None else left_out
    selected = _keep(layers, layers["status"] != LayerStatus.SKIPPED, LeftOut.SKIPPED_BY_SCAN, left_out)
    filters = rule.layers
    if filters.exclude_first_last and len(selected) > 2:
        inner = pd.Series(True, index=selected.index)
        inner.iloc[[0, -1]] = False
        selected = _keep(selected, inner, LeftOut.FIRST_OR_LAST, left_out)
    in_filters = pd.Series(True, index=selected.index)
    if filters.types:
        in_filters &= selected["layer_type"].isin(filters.types)
    if filters.exclude_types:
        in_filters &= ~selected["layer_type"].isin(filters.exclude_types)
    if filters.experts != "all":
        in_filters &= selected.index.isin(_select_experts(selected, filters.experts).index)
    if filters.name_pattern:
        in_filters &= selected["name"].map(lambda n: re.search(filters.name_pattern, n) is not None)
    if filters.exclude_pattern:
        in_filters &= selected["name"].map(lambda n: re.search(filters.exclude_pattern, n) is None)
    if filters.min_M:
        in_filters &= selected["M"] >= filters.min_M
    selected = _keep(selected, in_filters, LeftOut.FILTERED, left_out)
    if filters.exclude_heads and len(selected):
        last = layers.loc[layers["status"] != LayerStatus.SKIPPED, "name"].iloc[-1] if (layers["status"] != LayerStatus.SKIPPED).any() else None
        selected = _keep(selected, (selected["name"] != last)
                         & selected["name"].map(lambda n: re.search(HEAD_PATTERN, n) is None), LeftOut.OUTPUT_HEAD, left_out)
    return selected


def _keep(layers: pd.DataFrame, mask: pd.Series, why: LeftOut, left_out: dict[str, int]) -> pd.DataFrame:
    """``layers[mask]``, counting the rows dropped under ``why``."""
    dropped = int((~mask.astype(bool)).sum())
    if dropped:
        left_out[why] = left_out.get(why, 0) + dropped
    return layers[mask.astype(bool).to_numpy()]


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


def _select_experts(layers: pd.DataFrame, experts: str | tuple[int, ...]) -> pd.DataFrame:
    """MoE expert rows (``expert`` column filled): only them, all but them, or those indices."""
    index = layers["expert"] if "expert" in layers.columns else pd.Series(pd.NA, index=layers.index)
    if experts == "exclude":
        return layers[index.isna()]
    if experts == "only":
        return layers[index.notna()]
    return layers[index.isin(experts).fillna(False).astype(bool)]


def _change(value: float, base: float, relative: bool) -> float:
    if relative:
        return (value - base) / abs(base) if base not in (0, None) and math.isfinite(base) else math.nan
    return value - base


def _threshold(rule: Rule) -> dict[str, Any]:
    described = rule.condition.describe()
    if rule.scope == "layer":
        described["mostly"] = rule.mostly
    return described


def _failure_reason(rule: Rule, outcome: RuleOutcome, total: int) -> str:
    what = f"change of {rule.metric}" if rule.condition.kind == "change" else rule.metric
    bounds = _bounds_text(rule)
    if rule.scope == "model":
        return f"{what} is {_fmt(outcome.observed)}, outside {bounds}"
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


def _fmt(value: float | None) -> str:
    return "NaN" if value is None else f"{value:.4g}"


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
