"""The four ``gate.*`` tags a model version shows, written by the server from its decision row.

MLflow's version page lists tags sorted by key, in a box of a few rows: ``gate.decision_run``,
``gate.page``, ``gate.status`` and ``gate.summary`` (:data:`gate.vocabulary.VERSION_TAGS`) are all
there is to see, so the status and the summary stay in view. Any other ``gate.*`` tag (written by a
weightgate that kept decisions in tags, or left by a client before the gate) is removed when the
row is published. The summary of a decision is the worker's (``gate.report.verdict``); the lines for
versions without one (pending, overridden) are worded here.
"""

from __future__ import annotations

from urllib.parse import urlencode

from flask import has_request_context, request

from gate import vocabulary as words
from gate.vocabulary import DECISION_RUN, PAGE, STATUS, SUMMARY, VersionStatus
from mlflow_plugin.server.decisions import StoredDecision

PENDING_SUMMARY = f"{VersionStatus.PENDING}: waiting for a weightgate worker to scan it"


def pending_summary(why: str = "") -> str:
    return PENDING_SUMMARY + (f" ({why})" if why else "")


def override_summary(actor: str, previous: str, reason: str) -> str:
    return words.fit_tag_value(f"{VersionStatus.OVERRIDDEN}: approved by {actor} despite '{previous}': {reason}")


def model_page_path(name: str, version: object | None = None) -> str:
    """Where a model (and one version's row) is on the gate page, relative to the server root."""
    return f"/weightgate/model?{urlencode({'name': name})}" + (f"#v{version}" if version is not None else "")


def page_link(name: str, version: object) -> str:
    """The version's row on the gate page, as the requesting client reached this server."""
    root = (request.host_url.rstrip("/") + request.script_root) if has_request_context() else ""
    return root + model_page_path(name, version)


def display_tags(decision: StoredDecision) -> dict[str, str]:
    """The row's tags, ``gate.status`` last (a reader never sees a status before its summary)."""
    tags = {SUMMARY: words.fit_tag_value(decision.summary), PAGE: page_link(decision.name, decision.version)}
    if decision.decision_run:
        tags[DECISION_RUN] = decision.decision_run
    tags[STATUS] = decision.status
    return tags


def stale_keys(existing: dict[str, str], published: dict[str, str]) -> list[str]:
    """``gate.*`` keys on the version that the published set does not have."""
    return sorted(key for key in existing if words.is_gate_key(key) and key not in published)
