"""Every word weightgate writes: layer and rule statuses, decision words, version statuses, ledger
actions, ``gate.*`` tag keys, the timestamp format and the tag-length rule.

One module owns them so the engine (which computes), the server (which enforces), the worker and the
webhook receiver (which record), and the CLI and pages (which read) cannot drift apart. Other modules
use these names, never string literals of their own (tests/test_vocabulary.py looks for literals).
Importing it has no side effects.
"""

from __future__ import annotations

import enum
import time
from datetime import datetime, timezone


class Word(str, enum.Enum):
    """A word weightgate writes into tables, tags and JSON. It equals its text (``LayerStatus.OK ==
    "ok"``) and prints as it, so layer tables, CSV, JSON and MLflow tags hold plain words."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class LayerStatus(Word):
    """A layer table row's ``status``."""

    OK = "ok"                  # analysed
    SKIPPED = "skipped"        # not analysed, with the reason (too small, unknown kind, unreadable, mask)
    NONFINITE = "nonfinite"    # NaN/Inf weights
    DEGENERATE = "degenerate"  # all-zero weights, or no power-law fit


class RuleStatus(Word):
    """A policy rule's outcome."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"                  # could not be evaluated: fails closed
    SKIPPED = "skipped"              # does not apply (no baseline, not a descendant, no layer in scope)
    INCONCLUSIVE = "inconclusive"    # too little trustworthy evidence for a verdict


class SkipReason(Word):
    """Why a rule did not apply (``RuleOutcome.skipped_because``); verdicts count skipped rules by it."""

    NO_BASELINE = "no-baseline"              # a rule against the baseline, and none was given
    NOT_DESCENDANT = "not-descendant"        # a lineage rule, and the model does not descend from its baseline
    NO_LAYER_IN_SCOPE = "no-layer-in-scope"  # the model has no layer the rule selects


class LeftOut(Word):
    """Why a layer rule did not judge one of the model's layers (``RuleOutcome.left_out`` counts them)."""

    SKIPPED_BY_SCAN = "skipped-by-scan"    # not analysed (too small, unknown kind, unreadable, a mask)
    FIRST_OR_LAST = "first-or-last"        # the rule's exclude_first_last
    FILTERED = "filtered"                  # outside the rule's layer filters (types, M, experts, names)
    OUTPUT_HEAD = "output-head"            # the rule's exclude_heads: the last layer and layers named as heads
    NO_BASELINE_PARTNER = "no-baseline-partner"  # no layer of that name and shape in the baseline
    NO_VALUE = "no-value"                  # no verdict for the metric here or in the baseline (too few values)
    NOT_WELL_FITTED = "not-well-fitted"    # the rule counts well-fitted power laws only
    NOT_EVALUABLE = "not-evaluable"        # NaN/Inf or all-zero weights (here or in the baseline): judged by their own rule
    NOT_NEWLY_QUANTISED = "not-newly-quantised"  # quantisation_error: the layer did not move onto an integer grid


class Verdict(Word):
    """A decision (``Decision.decision``), and the severity of a rule (what its failure does)."""

    APPROVE = "approve"
    WARN = "warn"
    BLOCK = "block"


class WhenNoBaseline(Word):
    """What a policy rule that compares against a baseline does when there is none."""

    ERROR = "error"  # an input error: the check needs --baseline
    SKIP = "skip"    # the rule is skipped and says so


class WhenInconclusive(Word):
    """What a policy rule without a verdict (too little evidence) does to the decision."""

    PASS = "pass"    # recorded and shown, not a violation
    WARN = "warn"    # the decision is at least a warning
    BLOCK = "block"  # the decision is a block (only a block rule may say so)


class WeightProblem(Word):
    """A layer table row's ``weight_problem``: weights no other rule can read (the layer is not
    evaluable; only the rules on these problems judge it)."""

    NONFINITE = "nonfinite"  # NaN or infinite weights, or weights whose squares overflow
    ALL_ZERO = "all_zero"    # every weight is zero


class VersionStatus(Word):
    """The value of the ``gate.status`` tag of a model version."""

    PENDING = "pending"
    APPROVED = "approved"
    WARNED = "warned"
    BLOCKED = "blocked"
    ERROR = "error"
    OVERRIDDEN = "overridden"


NO_STATUS = "none"  # how reports show a version that has no gate.status at all (registered before the gate)
STATUS_OF_DECISION = {Verdict.APPROVE: VersionStatus.APPROVED, Verdict.WARN: VersionStatus.WARNED,
                      Verdict.BLOCK: VersionStatus.BLOCKED}


class LedgerAction(Word):
    """What a promotion-ledger row records."""

    REGISTERED = "registered"
    ALIAS_SET = "alias-set"
    ALIAS_DELETE = "alias-delete"
    STAGE_TRANSITION = "stage-transition"
    DECISION = "decision"
    OVERRIDE = "override"
    RESCAN = "rescan"
    BACKFILL = "backfill"                    # a version without a decision queued by `weightgate backfill`
    GATE_TAGS_DROPPED = "gate-tags-dropped"  # client-supplied gate.* tags left out of a new version (a copy's)


class LedgerOutcome(Word):
    """How the registry answered the request a ledger row records."""

    ALLOWED = "allowed"      # the registry did it
    REFUSED = "refused"      # the gate or basic-auth said no (401/403)
    FAILED = "failed"        # another error
    RECORDED = "recorded"    # the gate's own writes (registration, decision, override, rescan)
    NOT_FOUND = "not-found"  # a deletion of something that did not exist: nothing happened


class EventOutcome(Word):
    """How the webhook receiver's handling of one delivered event ended (its log's ``outcome``)."""

    HANDLED = "handled"
    FAILED = "failed"
    DUPLICATE = "duplicate"  # a delivery id already accepted: MLflow delivered it again


TAG_PREFIX = "gate."

# -- the version tags: at most these four on a model version ------------------------------------
# Everything else about a decision (reason, policy, fingerprint, baseline and why, attempts, time,
# inconclusive rules, overrides) is in the decision run and, with the server plugin, in the gate's
# table in the server's database (mlflow_plugin/server/decisions.py), which enforcement reads.
STATUS = "gate.status"                    # a VersionStatus
SUMMARY = "gate.summary"                  # one human line (gate.report.verdict for decisions)
PAGE = "gate.page"                        # link to the version's row on the gate page (webhook mode: its report)
DECISION_RUN = "gate.decision_run"        # the MLflow run holding metrics, artifacts and the decision's details
VERSION_TAGS = (STATUS, SUMMARY, PAGE, DECISION_RUN)

# -- the decision run (experiment "weightgate") ------------------------------------------------
EXPERIMENT = "weightgate"
# MLflow 3's UI opens an experiment in the view its kind names (mlflow/server/js: "genai_development",
# "custom_model_development", ...); decision runs are model runs, not GenAI evaluations.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
RUN_MODEL, RUN_VERSION, RUN_DECISION, RUN_WORKER = ("weightgate.model", "weightgate.version",
                                                    "weightgate.decision", "weightgate.worker")
RUN_REASON = "weightgate.reason"              # one line: failed rules (the report has the rest)
RUN_INCONCLUSIVE = "weightgate.inconclusive"  # ids of rules without a verdict, comma-separated
RUN_OVERRIDE = "weightgate.override"          # who overrode the decision, when, why, and the status before
RUN_VIOLATION = "weightgate.violation"        # webhook mode: a protected alias removed after the fact

# -- HTTP headers ------------------------------------------------------------------------------
WORKER_TOKEN_HEADER = "X-Weightgate-Token"
OVERRIDE_TOKEN_HEADER = "X-Weightgate-Override"
ACTOR_HEADER = "X-Weightgate-Actor"

# -- one timestamp format ----------------------------------------------------------------------
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # UTC, seconds, e.g. 2026-12-02T03:04:05Z


def utc_timestamp(epoch_seconds: float | None = None) -> str:
    """``epoch_seconds`` (default: now) in :data:`TIMESTAMP_FORMAT`."""
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime(time.time() if epoch_seconds is None else epoch_seconds))


def as_tag_timestamp(iso_text: str) -> str:
    """An ISO-8601 time with offset (``Decision.timestamp``) rewritten in :data:`TIMESTAMP_FORMAT`."""
    return datetime.fromisoformat(iso_text).astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


# -- one tag-length rule -------------------------------------------------------------------------
MAX_TAG_VALUE = 5000  # MLflow accepts far more; a tag is for reading in the UI, the run holds the rest
_TRUNCATED = " ... [truncated, {} characters in all; the decision run has the full text]"


def fit_tag_value(value: object) -> str:
    """``value`` as a tag value of at most :data:`MAX_TAG_VALUE` characters, saying when it was cut."""
    text = str(value)
    if len(text) <= MAX_TAG_VALUE:
        return text
    marker = _TRUNCATED.format(len(text))
    return text[:MAX_TAG_VALUE - len(marker)] + marker


def is_gate_key(key: str) -> bool:
    return key.startswith(TAG_PREFIX)
