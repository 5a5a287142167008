"""The words weightgate writes into MLflow: ``gate.*`` tag keys, statuses, decision words, the
timestamp format and the tag-length rule.

One module owns them so the server (which enforces), the worker and the webhook receiver (which
record), and the CLI (which reads) cannot drift apart. Other modules add their keys here, never as
string literals of their own. Importing it has no side effects.

The decision words (approve/warn/block) are re-exported from :mod:`gate.policy.decision`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from gate.policy.decision import APPROVE, BLOCK, WARN  # noqa: F401 - re-exported

TAG_PREFIX = "gate."

# -- version tag keys -----------------------------------------------------------------------
STATUS = "gate.status"                    # one of STATUSES
REASON = "gate.reason"                    # one line: failed rules, or the error that stopped the scan
DECISION_RUN = "gate.decision_run"        # the MLflow run holding metrics and artifacts
POLICY = "gate.policy"                    # the policy's name
POLICY_SHA256 = "gate.policy_sha256"      # the policy the decision was made under
WEIGHTS_SHA256 = "gate.weights_sha256"
SOURCE = "gate.source"                    # the version's source when it was judged
BASELINE = "gate.baseline"                # models:/name/N compared against, or "" for none
BASELINE_NOTE = "gate.baseline_note"      # why that baseline, and why others were passed over
DECIDED_AT = "gate.decided_at"
INCONCLUSIVE = "gate.inconclusive"        # ids of rules without a verdict (too little trustworthy evidence), comma-separated
ATTEMPTS = "gate.attempts"                # how many tries the last scan took (transient errors retried)
RESCAN_REQUESTED = "gate.rescan_requested_at"
VIOLATION = "gate.violation"              # webhook mode: a protected alias removed after the fact
OVERRIDE_BY = "gate.override_by"
OVERRIDE_AT = "gate.override_at"
OVERRIDE_REASON = "gate.override_reason"
OVERRIDE_PREVIOUS_STATUS = "gate.override_previous_status"
SUMMARY = "gate.summary"                  # one human line built from the decision (gate.report.verdict)
PAGE = "gate.page"                        # link to the version's row on the gate page (/weightgate/)

# -- statuses (the value of gate.status) ----------------------------------------------------
PENDING, APPROVED, WARNED, BLOCKED, ERROR, OVERRIDDEN = "pending", "approved", "warned", "blocked", "error", "overridden"
STATUSES = (PENDING, APPROVED, WARNED, BLOCKED, ERROR, OVERRIDDEN)
NO_STATUS = "none"  # how reports show a version that has no gate.status at all (registered before the gate)

# -- decision words (Decision.decision; gate.policy.decision owns them) and their statuses ----
STATUS_OF_DECISION = {APPROVE: APPROVED, WARN: WARNED, BLOCK: BLOCKED}

# -- run tags of the decision run (experiment "weightgate") ----------------------------------
EXPERIMENT = "weightgate"
RUN_MODEL, RUN_VERSION, RUN_DECISION, RUN_WORKER = ("weightgate.model", "weightgate.version",
                                                    "weightgate.decision", "weightgate.worker")

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
