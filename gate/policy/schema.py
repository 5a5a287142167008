"""Policy files: YAML with a schema version, validated by pydantic models that are also the rules the
gate evaluates; every problem is reported at once, each with its file, line and field.

A policy is a list of rules. Each rule names a metric of the layer table (scope ``layer``) or of
the model summary (scope ``model``, catalogues in gate.policy.metrics), a condition (``between``,
``min``, ``max``, or ``change`` against a baseline; gate.policy.conditions), a severity (``block`` or
``warn``) and a description shown to users. Pydantic's errors become the author's lines in
gate.policy.problems. Checks that need the rest of the document (the schema version, the
rule's scope or metric, the other rules' ids) read it from the fields validated before them
(``info.data``, so the declaration order of the fields matters) or from the parse context.
"""

from __future__ import annotations

import hashlib
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.types import StrictBool, StrictInt, StrictStr, StringConstraints

from gate.errors import GateInputError
from gate.policy.conditions import Condition, FiniteNumber
from gate.policy.metrics import FIT_METRICS, FRACTION_METRICS, METRICS_BY_SCOPE, PAIR_METRICS, V2_METRICS_BY_SCOPE
from gate.policy.problems import DocumentModel, line_index, located_problems, problem
from gate.vocabulary import Verdict, WhenInconclusive, WhenNoBaseline

SCHEMA_VERSION = 2  # what the shipped policy uses; SCHEMA_VERSIONS lists what loads
SCHEMA_VERSIONS = (1, 2)
LayerType = Literal["dense", "embedding", "conv1d", "conv2d", "conv3d", "recurrent"]
LAYER_TYPES = typing.get_args(LayerType)
ExpertSelection = Literal["all", "only", "exclude"]  # or a list of expert indices
EXPERT_SELECTIONS = typing.get_args(ExpertSelection)
# Output heads by name (transformers and torchvision conventions): a new head of the same shape is a
# legitimate fine-tune, so baseline rules with ``exclude_heads`` leave these (and the last layer) out.
HEAD_PATTERN = r"(^|\.)(lm_head|head|heads|classifier|cls|fc_out|output_projection|score|qa_outputs)(\.|$)"
_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"

class PolicyError(GateInputError):
    """A policy file that cannot be used; each line of the message names file, line and field of one problem."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)

    @classmethod
    def listing(cls, origin: str, problems: list[str]) -> PolicyError:
        if len(problems) == 1:
            return cls(problems[0])
        return cls(f"{origin}: {len(problems)} problems\n" + "\n".join(problems), tuple(problems))


@dataclass
class _ParseContext:
    """What a rule needs from the rest of the document while pydantic validates it."""

    schema_version: int | None  # None: the document's own is invalid (reported there), so no rule is judged by it
    rule_ids: set[str] = field(default_factory=set)  # of the rules validated so far, to name duplicates


def _context(info: ValidationInfo) -> _ParseContext:
    return info.context if isinstance(info.context, _ParseContext) else _ParseContext(None)


def _require_schema_2(info: ValidationInfo, what: str, name: str) -> None:
    if _context(info).schema_version == 1:
        raise problem(f"{what} {name!r} needs schema_version: 2 (README: 'Migrating from schema 1')")


class LayerFilter(DocumentModel):
    """Which layers a layer rule looks at."""

    unknown_key: ClassVar[str] = "unknown filter"
    name_pattern: StrictStr | None = Field(None, description="a regular expression")
    exclude_pattern: StrictStr | None = Field(None, description="a regular expression")
    types: tuple[LayerType, ...] = Field((), description=f"a list of layer types from {', '.join(LAYER_TYPES)}")
    exclude_types: tuple[LayerType, ...] = Field((), description=f"a list of layer types from {', '.join(LAYER_TYPES)}")
    exclude_first_last: StrictBool = Field(False, description="true or false")
    experts: ExpertSelection | Annotated[tuple[Annotated[StrictInt, Field(ge=0)], ...], Field(min_length=1)] = Field(
        "all", description=f"one of {', '.join(EXPERT_SELECTIONS)} or a list of expert indices")  # MoE expert rows
    # schema 2: only layers whose smaller dimension M is at least min_M; exclude_heads leaves out the last
    # analysed layer and the layers HEAD_PATTERN names
    min_M: StrictInt = Field(0, ge=0, description="a whole number >= 0")
    exclude_heads: StrictBool = Field(False, description="true or false")

    @field_validator("name_pattern", "exclude_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        try:
            re.compile(pattern or "")
        except re.error as err:
            raise problem(f"not a valid regular expression: {err}") from err
        return pattern

    @field_validator("min_M", "exclude_heads")
    @classmethod
    def _schema_2_only(cls, value: Any, info: ValidationInfo) -> Any:
        _require_schema_2(info, "field", str(info.field_name))
        return value


# Fields only layer rules have, and what a model rule that gives one is told.
_LAYER_RULE_FIELDS = {"mostly": "only layer rules have a 'mostly' share", "layers": "only layer rules have layer filters"}


class Rule(DocumentModel):
    """One rule of a policy. Fields are declared in the order their cross-field checks read them."""

    id: StrictStr = Field(pattern=_ID_PATTERN, description="lower-case letters, digits, '-', '_' or '.'")
    description: Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1)] = Field(
        description="a non-empty text shown to users")
    scope: Literal["layer", "model"] = Field(description="'layer' (a layer-table column) or 'model' (a summary key)")
    metric: StrictStr = Field(description="a metric name of the rule's scope")
    severity: Literal[Verdict.BLOCK, Verdict.WARN] = Field(description="'block' or 'warn'")
    condition: Condition = Field(description="exactly one of between, min, max, change")
    mostly: FiniteNumber = Field(1.0, gt=0, le=1, description="a share in (0, 1]")  # of layers that must comply
    layers: LayerFilter = Field(default_factory=LayerFilter, description="a mapping of layer filters")
    # schema 2: "descendant" applies the rule only when the model descends from its baseline
    lineage: Literal["any", "descendant"] = Field("any", description="'any' or 'descendant'")
    when_no_baseline: WhenNoBaseline = Field(WhenNoBaseline.ERROR, description="'error' or 'skip'")
    # schema 2: "well_fitted" counts only layers whose power-law fit is good; the default is :attr:`fit`
    fit_choice: Literal["any", "well_fitted"] | None = Field(None, alias="fit", description="'any' or 'well_fitted'")
    # schema 2: below this share of well-fitted layers the rule is inconclusive
    min_well_fitted: FiniteNumber = Field(0.5, ge=0, le=1, description="a share in [0, 1]")
    # schema 2: what an inconclusive outcome does to the decision (pass: recorded only; a warn rule may not block)
    when_inconclusive: WhenInconclusive = Field(WhenInconclusive.PASS, description="'pass', 'warn' or 'block'")
    # schema 2: a model rule on a share of layers (FRACTION_METRICS) is inconclusive when its layers'
    # verdicts cover less than this share of the model's weights
    min_judged_share: FiniteNumber = Field(0.5, ge=0, le=1, description="a share in [0, 1]")
    # ... and when fewer layers than this have a verdict: a share of one layer is one matrix's verdict
    min_judged_layers: StrictInt = Field(1, ge=1, description="a whole number >= 1")
    evidence: StrictStr = Field("", description="a text")  # schema 2: the figures behind the threshold (`policy show`)
    _schema_version: int = PrivateAttr(1)  # of the policy file the rule came from

    def model_post_init(self, context: Any, /) -> None:
        if isinstance(context, _ParseContext) and context.schema_version is not None:
            self._schema_version = context.schema_version

    @field_validator("id")
    @classmethod
    def _unique(cls, rule_id: str, info: ValidationInfo) -> str:
        seen = _context(info).rule_ids
        if rule_id in seen:
            raise problem(f"duplicate rule id {rule_id!r}")
        seen.add(rule_id)
        return rule_id

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str, info: ValidationInfo) -> str:
        scope = info.data.get("scope")
        if scope is None:
            return metric  # the scope's own error says what is wrong
        if metric not in METRICS_BY_SCOPE[scope]:
            raise problem(f"unknown {scope} metric {metric!r}; known: {', '.join(sorted(METRICS_BY_SCOPE[scope]))}")
        if metric in V2_METRICS_BY_SCOPE[scope]:
            _require_schema_2(info, "metric", metric)
        return metric

    @field_validator("condition")
    @classmethod
    def _pair_metrics_compare_themselves(cls, condition: Condition, info: ValidationInfo) -> Condition:
        metric = info.data.get("metric")
        if metric in PAIR_METRICS and condition.kind == "change":
            raise problem(f"{metric} already compares with the baseline: use min/max/between")
        return condition

    @field_validator("mostly", "layers")
    @classmethod
    def _layer_rules_only(cls, value: float | LayerFilter, info: ValidationInfo) -> float | LayerFilter:
        if info.data.get("scope") == "model":
            raise problem(_LAYER_RULE_FIELDS[info.field_name])
        return value

    @field_validator("when_no_baseline")
    @classmethod
    def _baseline_rules_only(cls, choice: WhenNoBaseline, info: ValidationInfo) -> WhenNoBaseline:
        condition, metric, lineage = (info.data.get(name) for name in ("condition", "metric", "lineage"))
        if None not in (condition, metric, lineage) and not _uses_baseline(condition, metric, lineage):
            raise problem("only rules that compare against a baseline use it")
        return choice

    @field_validator("fit_choice")
    @classmethod
    def _fit_of_power_laws(cls, fit: str | None, info: ValidationInfo) -> str | None:
        _require_schema_2(info, "field", "fit")
        scope, metric = info.data.get("scope"), info.data.get("metric")
        if fit == "well_fitted" and None not in (scope, metric) and not (scope == "layer" and metric in FIT_METRICS):
            raise problem(f"only layer rules on power-law metrics ({', '.join(FIT_METRICS)}) judge fits")
        return fit

    @field_validator("when_inconclusive")
    @classmethod
    def _no_more_than_a_failure(cls, choice: WhenInconclusive, info: ValidationInfo) -> WhenInconclusive:
        _require_schema_2(info, "field", "when_inconclusive")
        if choice == WhenInconclusive.BLOCK and info.data.get("severity") == Verdict.WARN:
            raise problem("a warn rule cannot block: use 'pass' or 'warn'")
        return choice

    @field_validator("min_judged_share", "min_judged_layers")
    @classmethod
    def _share_rules_only(cls, value: float, info: ValidationInfo) -> float:
        _require_schema_2(info, "field", info.field_name)
        scope, metric = info.data.get("scope"), info.data.get("metric")
        if None not in (scope, metric) and not (scope == "model" and metric in FRACTION_METRICS):
            raise problem(f"only model rules on a share of layers ({', '.join(FRACTION_METRICS)}) weigh how much was judged")
        return value

    @field_validator("lineage", "min_well_fitted", "evidence")
    @classmethod
    def _schema_2_only(cls, value: Any, info: ValidationInfo) -> Any:
        _require_schema_2(info, "field", str(info.field_name))
        return " ".join(value.split()) if info.field_name == "evidence" else value

    @property
    def schema_version(self) -> int:
        return self._schema_version

    @property
    def fit(self) -> str:
        """``any`` or ``well_fitted``; in schema 2, layer rules on power-law metrics count only well-fitted
        layers unless they say ``fit: any``."""
        if self.fit_choice is not None:
            return self.fit_choice
        alpha_type = self.scope == "layer" and self.metric in FIT_METRICS
        return "well_fitted" if self.schema_version >= 2 and alpha_type else "any"

    @property
    def needs_baseline(self) -> bool:
        return _uses_baseline(self.condition, self.metric, self.lineage)

    @property
    def scoped(self) -> bool:
        """A schema-2 layer rule: one that selects no layer of a model does not apply to it."""
        return self.schema_version >= 2 and self.scope == "layer"

    @property
    def needs_baseline_weights(self) -> bool:
        return self.metric in PAIR_METRICS or self.lineage == "descendant"


def _uses_baseline(condition: Condition, metric: str, lineage: str) -> bool:
    return condition.kind == "change" or metric in PAIR_METRICS or lineage == "descendant"


class PolicyDocument(DocumentModel):
    """A policy file as written."""

    model_config = ConfigDict(coerce_numbers_to_str=True)  # `name: 2024` names a policy (merged with the base's)
    unknown_key: ClassVar[str] = "unknown top-level field"
    schema_version: StrictInt = Field(ge=SCHEMA_VERSIONS[0], le=SCHEMA_VERSIONS[-1],
                                      description=f"one of {', '.join(map(str, SCHEMA_VERSIONS))}")
    name: str | None = Field(None, description="a text")  # default: the file's name
    description: str = Field("", description="a text")
    rules: list[Rule] = Field(min_length=1, description="a non-empty list of rules")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise problem("a policy must be a mapping with schema_version and rules")
        return data

    @field_validator("description")
    @classmethod
    def _stripped(cls, description: str) -> str:
        return description.strip()


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
            option = METRICS_BY_SCOPE[rule.scope][rule.metric]
            if option in ("mp_fit", "randomize"):
                needed[option] = True
        return needed

    def needs_baseline_weights(self) -> bool:
        """Whether a rule reads the model and baseline weights together (cosine, relative distance)."""
        return any(rule.needs_baseline_weights for rule in self.rules)

    def needs_train_accuracy(self) -> bool:
        return any(METRICS_BY_SCOPE[r.scope][r.metric] == "train_accuracy" for r in self.rules if r.scope == "model")


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
    """The policy in ``text``; a :class:`PolicyError` lists every problem, one a line, named by ``origin``."""
    try:
        # libyaml's loaders where PyYAML was built with it: the pure-Python scanner takes over a second
        # for the default policy on a loaded 2-core machine, and the gate loads a policy per check.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        document = yaml.load(text, Loader=loader)
        lines = line_index(yaml.compose(text, Loader=loader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise PolicyError(f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from err
    try:
        parsed = PolicyDocument.model_validate(document, context=_ParseContext(_declared_version(document)))
    except ValidationError as err:
        raise PolicyError.listing(origin, located_problems(err, PolicyDocument, document, lines, origin)) from err
    return Policy(origin, sha256 or hashlib.sha256(text.encode()).hexdigest(),
                  parsed.name if parsed.name is not None else Path(origin).stem, parsed.description,
                  tuple(parsed.rules), parsed.schema_version)


def _declared_version(document: Any) -> int | None:
    """The schema version the rules are read under, before the document is validated (it decides what
    they may say); None when it is not a valid one, which the document's own validation reports."""
    version = document.get("schema_version") if isinstance(document, dict) else None
    return version if type(version) is int and version in SCHEMA_VERSIONS else None
