"""Policy files: YAML with a schema version, validated field by field with the line of each error.

A policy is a list of rules. Each rule names a metric of the layer table (scope ``layer``) or of
the model summary (scope ``model``), a condition (``between``, ``min``, ``max``, or ``change``
against a baseline), a severity (``block`` or ``warn``) and a description shown to users.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gate.errors import GateInputError
from gate.vocabulary import Verdict, WhenNoBaseline

SCHEMA_VERSION = 2  # what the shipped policy uses; SCHEMA_VERSIONS lists what loads
SCHEMA_VERSIONS = (1, 2)
LAYER_TYPES = ("dense", "embedding", "conv1d", "conv2d", "conv3d", "recurrent")
# Metrics a rule may name, by scope. Layer metrics are layer-table columns; model metrics are
# summary keys. Those that need extra scan work say which scan option turns it on.
LAYER_METRICS = {
    "alpha": None, "alpha_weighted": None, "log_alpha_norm": None, "log_norm": None, "log_spectral_norm": None,
    "stable_rank": None, "entropy": None, "matrix_rank": None, "rank_loss": None, "near_zero_fraction": None,
    "num_pl_spikes": None, "D": None, "xmin": None, "lambda_max": None, "sigma": None, "mlh": None,
    "stable_rank_peer_ratio": None, "spectral_norm_peer_ratio": None,
    "num_spikes": "mp_fit", "mp_softrank": "mp_fit", "sigma_mp": "mp_fit",
    "num_traps": "randomize", "rand_distance": "randomize",
    # schema_version 2: the Marchenko-Pastur random-like test, the value grid (gate.metrics.value_grid) and the
    # baseline weights (see PAIR_METRICS)
    "random_like": None, "mp_ks": None, "mp_spike_mass": None, "mp_spikes": None, "value_levels": None,
    "coarse_grid": None,
    "cosine_similarity": "baseline_weights", "relative_distance": "baseline_weights",
}
# Columns of LoRA adapter rows (gate.sources.lora), for policies on adapters or --base merges.
LAYER_METRICS.update({"lora_rank": None, "lora_scale": None, "lora_norm": None, "lora_stable_rank": None,
                      "lora_stable_rank_ratio": None})

# Layer metrics computed from the weights of the model and its baseline together (gate.compare):
# rules on them need a baseline, like change conditions, and compare the value itself.
PAIR_METRICS = ("cosine_similarity", "relative_distance")
# Layer metrics read from the power-law fit: in schema_version 2, rules on them count only
# well-fitted layers (gate.metrics.fit_quality) unless they say ``fit: any``.
FIT_METRICS = ("alpha", "alpha_weighted", "log_alpha_norm", "D", "xmin", "num_pl_spikes", "sigma")
V2_LAYER_METRICS = ("random_like", "mp_ks", "mp_spike_mass", "mp_spikes", "value_levels", "coarse_grid",
                    "cosine_similarity", "relative_distance")
# Layer metrics with no verdict (NaN) on layers too small to judge (too few eigenvalues for the
# random-like test, too few weights to tell a value grid): rules leave those layers out.
UNJUDGED_WHEN_NAN = ("random_like", "value_levels", "coarse_grid")
V2_MODEL_METRICS = ("random_like_fraction",)
MODEL_METRICS = {
    "alpha": None, "alpha_weighted": None, "log_alpha_norm": None, "log_norm": None, "log_spectral_norm": None,
    "stable_rank": None, "mlh": None, "num_layers": None, "num_analysed": None, "num_skipped": None,
    "num_nonfinite": None, "num_degenerate": None, "num_over_trained": None, "num_under_trained": None,
    "fraction_alpha_in_2_4": None, "benford_zeros": None, "benford_nonfinite": None,
    "mp_softrank": "mp_fit", "random_like_fraction": None, "eic": "train_accuracy", "eic_scaled": "train_accuracy", "eic_sr": "train_accuracy",
}
_RULE_KEYS = {"id", "description", "metric", "scope", "severity", "condition", "mostly", "layers", "when_no_baseline"}
_V2_RULE_KEYS = {"fit", "min_well_fitted", "lineage", "evidence"}
_REQUIRED = ("id", "description", "metric", "scope", "severity", "condition")
_FILTER_KEYS = {"name_pattern", "exclude_pattern", "types", "exclude_types", "exclude_first_last", "experts"}
EXPERT_SELECTIONS = ("all", "only", "exclude")  # or a list of expert indices
_V2_FILTER_KEYS = {"min_M", "exclude_heads"}
# Output heads by name (transformers and torchvision conventions): a new head of the same shape is a
# legitimate fine-tune, so baseline rules with ``exclude_heads`` leave these (and the last layer) out.
HEAD_PATTERN = r"(^|\.)(lm_head|head|heads|classifier|cls|fc_out|output_projection|score|qa_outputs)(\.|$)"

_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class PolicyError(GateInputError):
    """A policy file that cannot be used; the message names file, line and field."""


@dataclass(frozen=True)
class LayerFilter:
    """Which layers a layer rule looks at."""

    name_pattern: str | None = None
    exclude_pattern: str | None = None
    types: tuple[str, ...] = ()
    exclude_types: tuple[str, ...] = ()
    exclude_first_last: bool = False
    experts: str | tuple[int, ...] = "all"  # MoE expert rows: all, only, exclude, or these indices
    min_M: int = 0  # schema 2: only layers whose smaller dimension M is at least this
    exclude_heads: bool = False  # schema 2: leave out the last analysed layer and HEAD_PATTERN names


@dataclass(frozen=True)
class Condition:
    """``low``/``high`` bound the value (or its change against the baseline, when ``change``)."""

    kind: str  # between | min | max | change
    low: float | None = None
    high: float | None = None
    relative: bool = False  # change as (value - baseline) / |baseline|

    def describe(self) -> dict[str, Any]:
        if self.kind == "change":
            described: dict[str, Any] = {"change": "relative" if self.relative else "absolute"}
            if self.low is not None:
                described["max_decrease"] = -self.low
            if self.high is not None:
                described["max_increase"] = self.high
            return described
        return {"kind": self.kind, "min": self.low, "max": self.high}


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    metric: str
    scope: str
    severity: Verdict
    condition: Condition
    mostly: float = 1.0
    layers: LayerFilter = field(default_factory=LayerFilter)
    when_no_baseline: WhenNoBaseline = WhenNoBaseline.ERROR
    fit: str = "any"  # "well_fitted": count only layers whose power-law fit is good (schema 2)
    min_well_fitted: float = 0.5  # below this share of well-fitted layers the rule is inconclusive
    lineage: str = "any"  # "descendant": apply only when the model descends from its baseline (schema 2)
    evidence: str = ""  # the figures behind the threshold, shown by `weightgate policy show`
    schema_version: int = 1  # of the policy file the rule came from

    @property
    def needs_baseline(self) -> bool:
        return self.condition.kind == "change" or self.metric in PAIR_METRICS or self.lineage == "descendant"

    @property
    def scoped(self) -> bool:
        """A schema-2 layer rule: one that selects no layer of a model does not apply to it."""
        return self.schema_version >= 2 and self.scope == "layer"

    @property
    def needs_baseline_weights(self) -> bool:
        return self.metric in PAIR_METRICS or self.lineage == "descendant"


@dataclass(frozen=True)
class Policy:
    path: str
    sha256: str
    name: str
    description: str
    rules: tuple[Rule, ...]
    schema_version: int = SCHEMA_VERSION

    def scan_options(self) -> dict[str, bool]:
        """Scan options the rules' metrics need (e.g. ``mp_fit`` for ``mp_softrank``)."""
        needed: dict[str, bool] = {}
        for rule in self.rules:
            catalogue = LAYER_METRICS if rule.scope == "layer" else MODEL_METRICS
            option = catalogue[rule.metric]
            if option in ("mp_fit", "randomize"):
                needed[option] = True
        return needed

    def needs_baseline_weights(self) -> bool:
        """Whether a rule reads the model and baseline weights together (cosine, relative distance)."""
        return any(rule.needs_baseline_weights for rule in self.rules)

    def needs_train_accuracy(self) -> bool:
        return any(MODEL_METRICS.get(r.metric) == "train_accuracy" for r in self.rules if r.scope == "model")


def default_policy_path() -> Path:
    return Path(str(resources.files("gate.policy") / "default.yaml"))


DEFAULT_POLICY_NAME = "weightgate:default.yaml"  # how decisions name the shipped policy, on any machine


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy file (the shipped default when ``path`` is None)."""
    policy_path = Path(path) if path is not None else default_policy_path()
    try:
        raw = policy_path.read_bytes()
    except OSError as err:
        raise PolicyError(f"{policy_path}: cannot read policy file: {err.strerror or err}") from err
    origin = str(policy_path) if path is not None else DEFAULT_POLICY_NAME
    return parse_policy(raw.decode("utf-8", errors="replace"), origin, hashlib.sha256(raw).hexdigest())


def parse_policy(text: str, origin: str, sha256: str | None = None) -> Policy:
    try:
        # libyaml's loaders where PyYAML was built with it: the pure-Python scanner takes over a second
        # for the default policy on a loaded 2-core machine, and the gate loads a policy per check.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        document = yaml.load(text, Loader=loader)
        lines = _line_index(yaml.compose(text, Loader=loader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise PolicyError(f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from err
    checker = _Checker(origin, lines)
    return checker.policy(document, sha256 or hashlib.sha256(text.encode()).hexdigest())


def _line_index(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, int]:
    """1-based line of every mapping key / sequence item, by its path in the document."""
    index: dict[tuple, int] = {}
    if node is None:
        return index
    index[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            index[path + (key.value,)] = key.start_mark.line + 1
            index.update({p: line for p, line in _line_index(value, path + (key.value,)).items() if p != path + (key.value,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.update(_line_index(item, path + (i,)))
    return index


class _Checker:
    """Turns the loaded YAML into a :class:`Policy`, raising at the first problem."""

    def __init__(self, origin: str, lines: dict[tuple, int]) -> None:
        self.origin = origin
        self.lines = lines

    def fail(self, path: tuple, message: str) -> None:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        field_name = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))
        location = f"{self.origin}:{line}" if line else self.origin
        raise PolicyError(f"{location}: {field_name or 'policy'}: {message}")

    def policy(self, document: Any, sha256: str) -> Policy:
        if not isinstance(document, dict):
            self.fail((), "a policy must be a mapping with schema_version and rules")
        unknown = set(document) - {"schema_version", "name", "description", "rules"}
        if unknown:
            self.fail((sorted(unknown)[0],), "unknown top-level field (allowed: schema_version, name, description, rules)")
        if document.get("schema_version") not in SCHEMA_VERSIONS:
            self.fail(("schema_version",), f"must be one of {', '.join(map(str, SCHEMA_VERSIONS))} "
                                           f"(found {document.get('schema_version')!r})")
        self.version = document["schema_version"]
        rules = document.get("rules")
        if not isinstance(rules, list) or not rules:
            self.fail(("rules",), "must be a non-empty list of rules")
        parsed = [self.rule(item, ("rules", i)) for i, item in enumerate(rules)]
        seen: set[str] = set()
        for i, rule in enumerate(parsed):
            if rule.id in seen:
                self.fail(("rules", i, "id"), f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        return Policy(self.origin, sha256, str(document.get("name", Path(self.origin).stem)),
                      str(document.get("description", "")).strip(), tuple(parsed), self.version)

    def rule(self, item: Any, path: tuple) -> Rule:
        if not isinstance(item, dict):
            self.fail(path, "each rule must be a mapping")
        for key in sorted(set(item) - _RULE_KEYS - _V2_RULE_KEYS):
            self.fail(path + (key,), f"unknown field (allowed: {', '.join(sorted(_RULE_KEYS | _V2_RULE_KEYS))})")
        self.require_v2(path, sorted(set(item) & _V2_RULE_KEYS), "field")
        for key in _REQUIRED:
            if key not in item:
                self.fail(path, f"missing required field {key!r}")
        rule_id = item["id"]
        if not isinstance(rule_id, str) or not _ID.match(rule_id):
            self.fail(path + ("id",), "must be lower-case letters, digits, '-', '_' or '.'")
        if not isinstance(item["description"], str) or not item["description"].strip():
            self.fail(path + ("description",), "must be a non-empty text shown to users")
        scope = item["scope"]
        if scope not in ("layer", "model"):
            self.fail(path + ("scope",), f"must be 'layer' or 'model', not {scope!r}")
        catalogue = LAYER_METRICS if scope == "layer" else MODEL_METRICS
        if item["metric"] not in catalogue:
            self.fail(path + ("metric",), f"unknown {scope} metric {item['metric']!r}; known: {', '.join(sorted(catalogue))}")
        if item["metric"] in (V2_LAYER_METRICS if scope == "layer" else V2_MODEL_METRICS):
            self.require_v2(path + ("metric",), [item["metric"]], "metric")
        if item["severity"] not in (Verdict.BLOCK, Verdict.WARN):
            self.fail(path + ("severity",), f"must be 'block' or 'warn', not {item['severity']!r}")
        condition = self.condition(item["condition"], path + ("condition",))
        mostly = item.get("mostly", 1.0)
        if "mostly" in item and scope != "layer":
            self.fail(path + ("mostly",), "only layer rules have a 'mostly' share")
        if not _number(mostly) or not 0 < mostly <= 1:
            self.fail(path + ("mostly",), f"must be a share in (0, 1], not {mostly!r}")
        if "layers" in item and scope != "layer":
            self.fail(path + ("layers",), "only layer rules have layer filters")
        layers = self.layer_filter(item.get("layers", {}), path + ("layers",))
        when_no_baseline = item.get("when_no_baseline", WhenNoBaseline.ERROR)
        uses_baseline = condition.kind == "change" or item["metric"] in PAIR_METRICS or item.get("lineage") == "descendant"
        if "when_no_baseline" in item and not uses_baseline:
            self.fail(path + ("when_no_baseline",), "only rules that compare against a baseline use it")
        if when_no_baseline not in tuple(WhenNoBaseline):
            self.fail(path + ("when_no_baseline",), f"must be 'error' or 'skip', not {when_no_baseline!r}")
        if item["metric"] in PAIR_METRICS and condition.kind == "change":
            self.fail(path + ("condition",), f"{item['metric']} already compares with the baseline: use min/max/between")
        # schema 2: alpha-type rules count only well-fitted layers unless they say otherwise
        fit = item.get("fit", "well_fitted" if self.version >= 2 and item["metric"] in FIT_METRICS else "any")
        if fit not in ("any", "well_fitted"):
            self.fail(path + ("fit",), f"must be 'any' or 'well_fitted', not {fit!r}")
        if fit == "well_fitted" and (scope != "layer" or item["metric"] not in FIT_METRICS):
            self.fail(path + ("fit",), f"only layer rules on power-law metrics ({', '.join(FIT_METRICS)}) judge fits")
        min_well_fitted = item.get("min_well_fitted", 0.5)
        if not _number(min_well_fitted) or not 0 <= min_well_fitted <= 1:
            self.fail(path + ("min_well_fitted",), f"must be a share in [0, 1], not {min_well_fitted!r}")
        lineage = item.get("lineage", "any")
        if lineage not in ("any", "descendant"):
            self.fail(path + ("lineage",), f"must be 'any' or 'descendant', not {lineage!r}")
        evidence = item.get("evidence", "")
        if not isinstance(evidence, str):
            self.fail(path + ("evidence",), "must be a text")
        return Rule(rule_id, item["description"].strip(), item["metric"], scope, Verdict(item["severity"]), condition,
                    float(mostly), layers, WhenNoBaseline(when_no_baseline), fit, float(min_well_fitted), lineage,
                    " ".join(evidence.split()), self.version)

    def require_v2(self, path: tuple, names: list[str], what: str) -> None:
        if names and self.version < 2:
            self.fail(path + ((names[0],) if what == "field" else ()),
                      f"{what} {names[0]!r} needs schema_version: 2 (README: 'Policy schema 2')")

    def condition(self, value: Any, path: tuple) -> Condition:
        kinds = ("between", "min", "max", "change")
        if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in kinds:
            self.fail(path, f"must be exactly one of {', '.join(kinds)} (e.g. 'between: [2, 4]')")
        kind, spec = next(iter(value.items()))
        where = path + (kind,)
        if kind == "between":
            if not (isinstance(spec, list) and len(spec) == 2 and all(map(_number, spec))):
                self.fail(where, "must be a list of two numbers [low, high]")
            if not spec[0] < spec[1]:
                self.fail(where, f"impossible range: low {spec[0]} is not below high {spec[1]}")
            return Condition("between", float(spec[0]), float(spec[1]))
        if kind in ("min", "max"):
            if not _number(spec):
                self.fail(where, "must be a finite number")
            return Condition(kind, float(spec) if kind == "min" else None, float(spec) if kind == "max" else None)
        if not isinstance(spec, dict) or not spec or set(spec) - {"max_decrease", "max_increase", "relative"}:
            self.fail(where, "must be a mapping with max_decrease and/or max_increase, and optional relative: true")
        if "max_decrease" not in spec and "max_increase" not in spec:
            self.fail(where, "needs max_decrease and/or max_increase")
        for key in ("max_decrease", "max_increase"):
            if key in spec and (not _number(spec[key]) or spec[key] < 0):
                self.fail(where + (key,), "must be a number >= 0")
        relative = spec.get("relative", False)
        if not isinstance(relative, bool):
            self.fail(where + ("relative",), "must be true or false")
        return Condition("change", -float(spec["max_decrease"]) if "max_decrease" in spec else None,
                         float(spec["max_increase"]) if "max_increase" in spec else None, relative)

    def layer_filter(self, value: Any, path: tuple) -> LayerFilter:
        if not isinstance(value, dict):
            self.fail(path, "must be a mapping of layer filters")
        for key in sorted(set(value) - _FILTER_KEYS - _V2_FILTER_KEYS):
            self.fail(path + (key,), f"unknown filter (allowed: {', '.join(sorted(_FILTER_KEYS | _V2_FILTER_KEYS))})")
        for key in ("name_pattern", "exclude_pattern"):
            if key in value:
                try:
                    re.compile(value[key])
                except (re.error, TypeError) as err:
                    self.fail(path + (key,), f"not a valid regular expression: {err}")
        for key in ("types", "exclude_types"):
            types = value.get(key, [])
            if not isinstance(types, list) or any(t not in LAYER_TYPES for t in types):
                self.fail(path + (key,), f"must be a list of layer types from {', '.join(LAYER_TYPES)}")
        if not isinstance(value.get("exclude_first_last", False), bool):
            self.fail(path + ("exclude_first_last",), "must be true or false")
        experts = value.get("experts", "all")
        if isinstance(experts, list) and experts and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0
                                                         for e in experts):
            experts = tuple(experts)
        elif experts not in EXPERT_SELECTIONS:
            self.fail(path + ("experts",), f"must be one of {', '.join(EXPERT_SELECTIONS)} or a list of expert indices")
        if not isinstance(value.get("exclude_heads", False), bool):
            self.fail(path + ("exclude_heads",), "must be true or false")
        min_m = value.get("min_M", 0)
        if not isinstance(min_m, int) or isinstance(min_m, bool) or min_m < 0:
            self.fail(path + ("min_M",), f"must be a whole number >= 0, not {min_m!r}")
        self.require_v2(path, sorted(set(value) & _V2_FILTER_KEYS), "field")
        return LayerFilter(value.get("name_pattern"), value.get("exclude_pattern"), tuple(value.get("types", [])),
                           tuple(value.get("exclude_types", [])), value.get("exclude_first_last", False), experts,
                           min_m, value.get("exclude_heads", False))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
