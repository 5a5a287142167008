"""What the gate page's templates show of a version, a waiting version and the page links: plain
values built from the query rows (:mod:`mlflow_plugin.server.page_queries`), so the templates only
lay them out."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from flask import request

from gate.vocabulary import NO_STATUS, VersionStatus
from mlflow_plugin.server.claims import Claim
from mlflow_plugin.server.page_queries import PROMOTING_STAGES, VersionRow

BADGES = (*VersionStatus, NO_STATUS)
PAGE_SIZE = 50


@dataclass
class VersionView:
    """One model version as the page shows it."""

    name: str
    version: int
    status: str
    summary: str
    reason: str
    aliases: list[str]
    stage: str
    held: str            # "Production, @champion": the promoting stage and protected aliases it holds
    unapproved_but_held: bool
    version_url: str
    run_url: str | None
    report_url: str | None
    decided_at: str
    override: str
    inconclusive: str
    baseline_note: str

    @property
    def anchor(self) -> str:
        return f"v{self.version}"

    @property
    def reason_lines(self) -> tuple[str, list[str]]:
        """``gate.reason`` as the verdict's fold-out shows it: the first line (the rule counts) and
        then one line per rule that did not pass, the changed layers and the rules that passed
        (gate.report.verdict.reason_text writes it so)."""
        head, *rest = self.reason.splitlines() or [""]
        return head, rest


def version_view(row: VersionRow, approving: Collection[str], is_protected: Callable[[str], bool]) -> VersionView:
    decision = row.decision
    root = request.script_root + "/"
    run_url = report_url = None
    if decision is not None and decision.decision_run and decision.experiment_id:
        run_url = f"{root}#/experiments/{decision.experiment_id}/runs/{decision.decision_run}"
        report_url = f"{run_url}/artifacts/weightgate/report.html"
    override = ""
    if decision is not None and decision.status == VersionStatus.OVERRIDDEN:
        override = (f"overridden by {decision.override_by} at {decision.override_at} "
                    f"(was {decision.override_previous_status}): {decision.override_reason}")
    held = [row.stage] if row.stage in PROMOTING_STAGES else []
    held += [f"@{alias}" for alias in row.aliases if is_protected(alias)]
    return VersionView(
        name=row.name, version=row.version, status=row.status, summary=decision.summary if decision else "",
        reason=decision.reason if decision else "", aliases=row.aliases, stage=row.stage, held=", ".join(held),
        unapproved_but_held=bool(held) and row.status not in approving,
        version_url=f"{root}#/models/{quote(row.name, safe='')}/versions/{row.version}",
        run_url=run_url, report_url=report_url, decided_at=decision.decided_at if decision else "",
        override=override, inconclusive=decision.inconclusive_rules if decision else "",
        baseline_note=decision.baseline_note if decision else "")


def waiting_view(row: VersionRow, claim: Claim | None) -> dict[str, Any]:
    """A pending version with how long it has waited and the claim a worker holds on it."""
    now = time.time()
    live = claim is not None and not claim.expired(now)
    # a version waits since its decision row became pending (a rescan, a backfill), else since its registration
    since = row.decision.updated_at if row.decision is not None else row.created_ms / 1000
    return {"name": row.name, "version": row.version, "status": row.status, "age": _duration(now - since),
            "claimed_by": claim.worker if live else "",
            "lease": _duration(claim.expires_at - now) if live else ("expired" if claim is not None else "")}


def page_links(path: str, args: Mapping[str, str], number: int, total: int) -> dict[str, Any]:
    """Previous/next links keeping the search, and where this page is."""
    last = max(1, math.ceil(total / PAGE_SIZE))

    def link(page: int) -> str:
        return path + "?" + urlencode({**{k: v for k, v in args.items() if k != "page"}, "page": page})

    return {"number": number, "last": last, "first_row": (number - 1) * PAGE_SIZE + 1 if total else 0,
            "last_row": min(number * PAGE_SIZE, total), "total": total,
            "previous": link(number - 1) if number > 1 else None, "next": link(number + 1) if number < last else None}


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
