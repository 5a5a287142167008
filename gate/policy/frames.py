"""The values a rule judges: one row per layer the rule selects (or the model's one row), with the
layers that cannot be judged set apart and named.

One cause, one finding: a layer whose weights are NaN/Inf or all zero (``weight_problem`` in the layer
table, gate.scanning.tensor_pass) is judged only by the rules on those problems
(gate.policy.metrics.LAYER_COUNT_METRICS). Every other rule leaves it out of its frame and lists it as
``not_evaluable`` with the problem, instead of failing on the NaN that its metrics hold; so does a
change or pair rule for a layer whose baseline partner has such weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from gate.policy.metrics import ANALYSED_LAYER_METRICS, LAYER_COUNT_METRICS, PAIR_METRICS, UNJUDGED_WHEN_NAN
from gate.policy.quantisation import newly_quantised
from gate.policy.schema import HEAD_PATTERN, Rule
from gate.scanning.result import ScanResult
from gate.vocabulary import LayerStatus, LeftOut

MODEL_ROW = "<model>"
QUANTISATION_ERROR = "quantisation_error"


@dataclass
class RuleFrame:
    """``values``: columns ``name`` and ``value``, the rows the rule compares; ``in_scope``: layers
    its filters selected (None for a model rule); ``not_evaluable``: selected layers left out,
    each ``{"name", "problem"}``; ``left_out``: for a layer rule, every layer of the scan not in
    ``values``, counted by why (gate.vocabulary.LeftOut)."""

    values: pd.DataFrame
    in_scope: int | None = None
    not_evaluable: list[dict[str, str]] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)


def rule_frame(rule: Rule, scan: ScanResult, baseline: ScanResult | None, pairs: pd.DataFrame | None) -> RuleFrame:
    """The rule's values (the metric, or its change against the baseline). Layers with an
    undetermined verdict (too few eigenvalues for the random-like test, too few weights to count
    value levels) and layers without a baseline partner for a pair metric give no evidence and are
    left out; layers with unusable weights are left out and named."""
    if rule.scope == "model":
        value = scan.summary.get(rule.metric, math.nan)
        if rule.condition.kind == "change":
            value = change(value, baseline.summary.get(rule.metric, math.nan), rule.condition.relative)
        listed = rule.metric in ANALYSED_LAYER_METRICS and rule.metric not in LAYER_COUNT_METRICS
        return RuleFrame(pd.DataFrame({"name": [MODEL_ROW], "value": [value]}), None,
                         unusable_layers(scan.layers) if listed else [])
    counts: dict[str, int] = {}
    layers = select_layers(rule, scan.layers, counts)
    in_scope = len(layers)
    left_out = unusable_layers(layers)
    if rule.needs_baseline and baseline is not None:
        partners = {p["name"]: p["problem"] for p in unusable_layers(baseline.layers)}
        left_out += [{"name": name, "problem": f"the baseline's: {partners[name]}"}
                     for name in layers["name"] if name in partners and name not in {o["name"] for o in left_out}]
    layers = _keep(layers, ~layers["name"].isin({o["name"] for o in left_out}), LeftOut.NOT_EVALUABLE, counts)
    frame = _layer_values(rule, layers, scan, baseline, pairs, counts)
    return RuleFrame(frame, in_scope, left_out, counts)


def unusable_layers(layers: pd.DataFrame) -> list[dict[str, str]]:
    """``{"name", "problem"}`` of every row whose weights are NaN/Inf or all zero."""
    if "weight_problem" not in layers.columns:
        return []
    bad = layers[layers["weight_problem"].notna()]
    return [{"name": name, "problem": reason} for name, reason in zip(bad["name"], bad["reason"])]


def _layer_values(rule: Rule, layers: pd.DataFrame, scan: ScanResult, baseline: ScanResult | None,
                  pairs: pd.DataFrame | None, counts: dict[str, int]) -> pd.DataFrame:
    if rule.metric in PAIR_METRICS:
        finite = pairs[pairs["status"] == LayerStatus.OK]
        layers = _keep(layers, layers["name"].isin(finite["name"]), LeftOut.NO_BASELINE_PARTNER, counts)
        if rule.metric == QUANTISATION_ERROR:  # layers that moved onto an integer grid: their relative distance
            flags = newly_quantised(scan, baseline)
            finite = finite[finite["name"].isin(flags[flags].index)].assign(quantisation_error=finite["relative_distance"])
            layers = _keep(layers, layers["name"].isin(finite["name"]), LeftOut.NOT_NEWLY_QUANTISED, counts)
        by_name = finite.set_index("name")[rule.metric]
        return pd.DataFrame({"name": layers["name"].to_numpy(),
                             "value": [float(by_name[n]) for n in layers["name"]]})
    changes = rule.condition.kind == "change"
    if changes:
        reference = baseline.layers.set_index("name")
        base_values = reference[rule.metric] if rule.metric in reference.columns else pd.Series(dtype=float)
    if rule.metric in UNJUDGED_WHEN_NAN and rule.metric in layers.columns:
        layers = _keep(layers, layers[rule.metric].notna(), LeftOut.NO_VALUE, counts)
        if changes:
            layers = _keep(layers, layers["name"].isin(base_values.dropna().index), LeftOut.NO_VALUE, counts)
    if rule.metric not in layers.columns:
        values = pd.Series(math.nan, index=layers.index)
    else:
        values = layers[rule.metric]
    if changes:
        values = pd.Series([change(v, base_values.get(n, math.nan), rule.condition.relative)
                            for n, v in zip(layers["name"], values)], index=layers.index)
    return pd.DataFrame({"name": layers["name"].to_numpy(), "value": values.to_numpy(dtype=float)})


def select_layers(rule: Rule, layers: pd.DataFrame, counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Layers a rule looks at: not skipped (too small by design), then the rule's filters; the
    layers dropped are counted in ``counts`` by why."""
    counts = {} if counts is None else counts
    selected = _keep(layers, layers["status"] != LayerStatus.SKIPPED, LeftOut.SKIPPED_BY_SCAN, counts)
    filters = rule.layers
    if filters.exclude_first_last and len(selected) > 2:
        inner = pd.Series(True, index=selected.index)
        inner.iloc[[0, -1]] = False
        selected = _keep(selected, inner, LeftOut.FIRST_OR_LAST, counts)
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
    selected = _keep(selected, in_filters, LeftOut.FILTERED, counts)
    if filters.exclude_heads and len(selected):
        analysed = layers.loc[layers["status"] != LayerStatus.SKIPPED, "name"]
        last = analysed.iloc[-1] if len(analysed) else None
        selected = _keep(selected, (selected["name"] != last)
                         & selected["name"].map(lambda n: re.search(HEAD_PATTERN, n) is None), LeftOut.OUTPUT_HEAD, counts)
    return selected


def _keep(layers: pd.DataFrame, mask: pd.Series, why: LeftOut, counts: dict[str, int]) -> pd.DataFrame:
    """``layers[mask]``, counting the rows dropped under ``why``."""
    keep = mask.astype(bool).to_numpy()
    dropped = int((~keep).sum())
    if dropped:
        counts[why] = counts.get(why, 0) + dropped
    return layers[keep]


def _select_experts(layers: pd.DataFrame, experts: str | tuple[int, ...]) -> pd.DataFrame:
    """MoE expert rows (``expert`` column filled): only them, all but them, or those indices."""
    index = layers["expert"] if "expert" in layers.columns else pd.Series(pd.NA, index=layers.index)
    if experts == "exclude":
        return layers[index.isna()]
    if experts == "only":
        return layers[index.notna()]
    return layers[index.isin(experts).fillna(False).astype(bool)]


def change(value: float, base: float, relative: bool) -> float:
    if relative:
        return (value - base) / abs(base) if base not in (0, None) and math.isfinite(base) else math.nan
    return value - base
