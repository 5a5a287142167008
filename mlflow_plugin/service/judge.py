"""Judging one model version: choose its baseline, check it, log the decision run, record the outcome.

Shared by ``weightgate worker`` (:mod:`mlflow_plugin.service.worker`) and the webhook receiver
(:mod:`mlflow_plugin.service.webhook`); they differ only in how a version is claimed and how its
decision is recorded, the :class:`Recorder` each passes in.

Each version is handled in isolation: whatever goes wrong with it (unreadable weights, a report
that cannot be written, an artifact store that refuses the upload) ends as a recorded ``error``
with the reason, after transient errors were retried with backoff (:mod:`mlflow_plugin.service.retry`).
What is recorded is a :class:`mlflow_plugin.decision_record.DecisionRecord`; the decision run
(:mod:`mlflow_plugin.service.decision_run`) holds the evidence.
Another version's trouble (an unreadable baseline) never makes a version ``error``: the next
eligible baseline is used, or none.

Each model is read once per attempt: the judge opens the version and its baseline, owns both
(closes them), and hands them to :func:`gate.check.check` already opened, which reads them and
leaves them open. A baseline that cannot be opened is the baseline's fault, told apart right where
it is opened.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from gate import vocabulary as words
from gate.options import SCAN_OPTIONS, resolve_device
from gate.sources import WeightSource
from gate.vocabulary import STATUS, STATUS_OF_DECISION, VersionStatus
from mlflow_plugin.config import GateConfig
from mlflow_plugin.decision_record import DecisionRecord
from mlflow_plugin.service import checkpoints
from mlflow_plugin.service.decision_run import log_decision_run
from mlflow_plugin.service.liveness import Heartbeat
from mlflow_plugin.service.retry import RetryPolicy, error_chain, with_retries

_logger = logging.getLogger(__name__)
BASELINE_STATUSES = frozenset({VersionStatus.APPROVED, VersionStatus.OVERRIDDEN})  # fit to be a yardstick


@dataclass
class WorkerSettings:
    tracking_uri: str
    policy: str | None = None
    device: str = "auto"
    lease_seconds: float = 900.0
    worker_id: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    heartbeat_file: str | None = None
    max_baselines_tried: int = 3  # unreadable baselines tried before deciding without one
    ray_address: str | None = None  # scan on this Ray cluster (--executor ray); None: in this process

    def __post_init__(self) -> None:
        # A device this worker cannot scan on would fail every version: refused at start, by the
        # option's declaration (gate.options); on Ray the cluster's GPUs are the executor's matter.
        if self.ray_address is None:
            resolve_device(self.device)
        else:
            SCAN_OPTIONS["device"].check(self.device)
        if not self.worker_id:
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Recorder(Protocol):
    """How a version is claimed before it is judged, and how its decision tags are recorded."""

    def claim(self, version: ModelVersion) -> bool:
        """True when this process may judge ``version`` now."""

    def record(self, version: ModelVersion, record: DecisionRecord) -> None:
        """Record the outcome (the status becomes visible last); raises when nothing could be recorded."""


class BaselineUnusable(RuntimeError):
    """The baseline could not be opened; the version itself is not at fault."""

    def __init__(self, uri: str, err: BaseException) -> None:
        super().__init__(f"{uri}: {type(err).__name__}: {err}")
        self.uri = uri


@dataclass
class BaselineChoice:
    """The baselines to try, best first, and why the versions left out were left out."""

    candidates: list[tuple[str, str]]  # (uri, why it qualifies)
    passed_over: list[str]


class VersionJudge:
    """Scans, decides and logs model versions against one registry, recording through ``recorder``.

    ``open_weights`` opens a model URI (default: :func:`gate.sources.open_source` against the
    registry); it is the one place the judge reads weights from, so a caller can wrap the sources.
    """

    def __init__(self, settings: WorkerSettings, recorder: Recorder, client: MlflowClient | None = None,
                 open_weights: Callable[[str], WeightSource] | None = None) -> None:
        self.settings = settings
        self.recorder = recorder
        self.config = GateConfig.from_env()
        self.client = client or MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        self.heartbeat = Heartbeat(settings.heartbeat_file)
        self.open_weights = open_weights or self._open_from_registry

    def pending_versions(self) -> list[ModelVersion]:
        """Pending versions, oldest first per model, so a predecessor decided in the same pass can
        be its successor's baseline."""
        pending = [v for v in all_model_versions(self.client)
                   if (v.tags or {}).get(STATUS, VersionStatus.PENDING) == VersionStatus.PENDING]
        return sorted(pending, key=lambda v: (v.name, int(v.version)))

    def claim_or_skip(self, version: ModelVersion) -> bool:
        try:
            claimed, _ = with_retries(f"claiming {_uri(version)}", lambda: self.recorder.claim(version),
                                      self.settings.retry)
        except Exception:  # the server is unreachable: the version stays pending for the next poll
            _logger.exception("weightgate worker: could not claim %s", _uri(version),
                              extra={"fields": {"event": "claim_failed", **_ids(version)}})
            return False
        return claimed

    # -- one version -------------------------------------------------------------------------
    def process(self, version: ModelVersion) -> str:
        """Decide one claimed version and record the outcome; returns the status recorded."""
        started = time.monotonic()
        uri = _uri(version)
        checkpoints.reach("scanning")
        with self.heartbeat.during(f"checking {uri}"):
            record = self.decide(version)
        checkpoints.reach("recording")
        outcome = record.status
        try:
            with_retries(f"recording the decision on {uri}", lambda: self.recorder.record(version, record),
                         self.settings.retry)
        except Exception:  # nothing recorded: the claim's lease runs out and another worker tries again
            _logger.exception("weightgate worker: could not record the decision on %s; it stays pending", uri,
                              extra={"fields": {"event": "record_failed", **_ids(version)}})
            outcome = "unrecorded"
        _logger.info("weightgate worker: %s -> %s", uri, outcome, extra={"fields": {
            "event": "version_done", **_ids(version), "outcome": outcome,
            "duration_s": round(time.monotonic() - started, 3), "attempts": record.attempts,
            "reason": record.reason[:300], "worker": self.settings.worker_id}})
        return outcome

    def decide(self, version: ModelVersion) -> DecisionRecord:
        """What to record: a decision, or ``error`` with the stage that failed and why.

        This is the boundary of one version: every failure ends here as a recorded status.
        """
        uri = _uri(version)
        stage, attempts = "looking up the baseline", 1
        try:
            choice, _ = with_retries(f"looking up the baseline of {uri}", lambda: self.baseline_choice(version),
                                     self.settings.retry)
            stage = "scanning"
            result, note, attempts = self.check_with_baselines(uri, choice)
            checkpoints.reach("scanned")
            record = _decision_record(version, result, note, attempts)
            stage = "writing the decision run (metrics, report, artifact upload)"
            (run_id, experiment_id), _ = with_retries(
                f"writing the decision run of {uri}",
                lambda: log_decision_run(self.client, version, result, record.run_params(), self.settings.worker_id),
                self.settings.retry)
        except Exception as err:  # any failure of this version is recorded as its error status
            _logger.exception("weightgate worker: %s failed while %s", uri, stage,
                              extra={"fields": {"event": "version_error", **_ids(version), "stage": stage}})
            return error_record(version, f"{stage} failed: {type(err).__name__}: {err}",
                                getattr(err, "attempts", attempts))
        return record.model_copy(update={"decision_run": run_id, "experiment_id": experiment_id})

    # -- baselines ---------------------------------------------------------------------------
    def baseline_choice(self, version: ModelVersion) -> BaselineChoice:
        """Protected-alias holders first, then earlier versions newest first; only approved or
        overridden ones qualify (a blocked, errored or pending version is no yardstick)."""
        this = int(version.version)
        model = self.client.get_registered_model(version.name)
        versions = {int(v.version): v for v in self.client.search_model_versions(f"name='{version.name}'")}

        def status(number: int) -> str:
            found = versions.get(number)
            return (found.tags or {}).get(STATUS, words.NO_STATUS) if found else "deleted"

        candidates: list[tuple[str, str]] = []
        passed_over: list[str] = []
        chosen: set[int] = set()
        for alias, aliased in sorted((model.aliases or {}).items()):
            number = int(aliased)
            if not self.config.is_protected(alias) or number == this:
                continue
            label = f"models:/{version.name}/{number}"
            if status(number) in BASELINE_STATUSES and number not in chosen:
                candidates.append((label, f"holds the protected alias '{alias}'"))
                chosen.add(number)
            elif number not in chosen:
                passed_over.append(f"{label} holds '{alias}' but is {status(number)}")
        for number in sorted((n for n in versions if n < this), reverse=True):
            label = f"models:/{version.name}/{number}"
            if status(number) in BASELINE_STATUSES and number not in chosen:
                candidates.append((label, f"the latest {status(number)} version before this one"))
                chosen.add(number)
            elif number not in chosen and len(candidates) == 0:
                passed_over.append(f"{label} is {status(number)}")
        return BaselineChoice(candidates[:self.settings.max_baselines_tried], passed_over)

    def check_with_baselines(self, uri: str, choice: BaselineChoice):
        """Check ``uri`` against the first usable baseline; returns (result, note, attempts).

        A baseline that cannot be opened is passed over for the next; if the check fails with a
        baseline for a reason that cannot be told apart, it is tried once without one, and only a
        failure without a baseline is this version's own error.
        """
        passed_over = list(choice.passed_over)
        for baseline, why in [*choice.candidates, (None, "")]:
            try:
                result, attempts = with_retries(f"checking {uri}", lambda: self.check(uri, baseline),
                                                self.settings.retry)
            except Exception as err:
                if baseline is None:
                    raise
                unusable = _find(err, BaselineUnusable)
                passed_over.append(f"{baseline} could not be read ({unusable or err})" if unusable else
                                   f"{baseline}: the check failed with it ({type(err).__name__}: {err})")
                if unusable is None:
                    return self._without_baseline(uri, passed_over)
                continue
            head = f"baseline {baseline}: {why}" if baseline else "no baseline: no approved or overridden version"
            if baseline is None:  # the verdict's words for the rules that need one (gate.report.verdict)
                result.decision.baseline_note = ("first version" if not choice.candidates and not choice.passed_over
                                                 else "no approved earlier version" if not choice.candidates
                                                 else "no readable baseline")
            return result, head + ("; passed over: " + "; ".join(passed_over) if passed_over else ""), attempts
        raise AssertionError("unreachable: the last candidate (no baseline) returns or raises")

    def _without_baseline(self, uri: str, passed_over: list[str]):
        result, attempts = with_retries(f"checking {uri}", lambda: self.check(uri, None), self.settings.retry)
        result.decision.baseline_note = "no usable baseline"
        return result, "no baseline; passed over: " + "; ".join(passed_over), attempts

    def check(self, uri: str, baseline: str | None):
        """One attempt: the version against ``baseline`` (or none), each model opened and read once."""
        from gate.check import check

        options = {"policy": self.settings.policy, "device": self.settings.device,
                   "tracking_uri": self.settings.tracking_uri, "keep_spectra": True}
        if self.settings.ray_address is not None:
            # Ray tasks open the shards on the cluster's nodes; here only the baseline's listing is read.
            if baseline is not None:
                self._plan_on_ray(baseline)
            return check(uri, baseline=baseline, ray_address=self.settings.ray_address, **options)
        with self.open_weights(uri) as weights, self._opened_baseline(baseline) as base_weights:
            return check(weights, baseline=base_weights, **options)

    @contextmanager
    def _opened_baseline(self, baseline: str | None) -> Iterator[WeightSource | None]:
        """The baseline opened (and closed after), a failure to open it raised as :class:`BaselineUnusable`."""
        if baseline is None:
            yield None
            return
        try:
            weights = self.open_weights(baseline)
        except Exception as err:  # classified by check_with_baselines: the baseline, not this version
            raise BaselineUnusable(baseline, err) from err
        with weights:
            yield weights

    def _plan_on_ray(self, baseline: str) -> None:
        from gate.distributed.plan import plan_scan

        try:
            plan_scan(baseline, tracking_uri=self.settings.tracking_uri)
        except Exception as err:  # classified by check_with_baselines: the baseline, not this version
            raise BaselineUnusable(baseline, err) from err

    def _open_from_registry(self, uri: str) -> WeightSource:
        from gate.sources import open_source

        return open_source(uri, tracking_uri=self.settings.tracking_uri)


def all_model_versions(client: MlflowClient) -> Iterator[ModelVersion]:
    """Every model version of the registry, page by page, in name order."""
    token = None
    while True:
        page = client.search_model_versions(max_results=200, page_token=token, order_by=["name ASC"])
        yield from page
        token = page.token
        if not token:
            return


def _uri(version: ModelVersion) -> str:
    return f"models:/{version.name}/{version.version}"


def _ids(version: ModelVersion) -> dict[str, object]:
    return {"model": version.name, "version": int(version.version)}


def _find(err: BaseException, kind: type[BaseException]):
    """The first error of type ``kind`` in ``err``'s cause chain, or None."""
    return next((link for link in error_chain(err) if isinstance(link, kind)), None)


def _decision_record(version: ModelVersion, result, baseline_note: str, attempts: int) -> DecisionRecord:
    """The record of a decision (the decision run's ids are added once it is logged)."""
    from gate.report.verdict import reason_text, summary_line

    decision = result.decision
    return DecisionRecord(
        status=STATUS_OF_DECISION[decision.decision], summary=summary_line(decision),
        reason=words.fit_tag_value(reason_text(decision)), source=version.source,
        decided_at=words.as_tag_timestamp(decision.timestamp), attempts=attempts,
        policy=decision.policy["name"], policy_sha256=decision.policy["sha256"],
        weights_sha256=decision.weights_sha256, baseline=decision.baseline or "",
        baseline_note=words.fit_tag_value(baseline_note),
        inconclusive_rules=[rule.rule_id for rule in decision.inconclusive_rules])


def error_record(version: ModelVersion, reason: str, attempts: int) -> DecisionRecord:
    """An ``error`` outcome: the stage that failed and why; no decision run."""
    from gate.report.verdict import MAX_SUMMARY

    summary = f"{VersionStatus.ERROR}: {reason}"
    return DecisionRecord(
        status=VersionStatus.ERROR, reason=words.fit_tag_value(reason), source=version.source,
        summary=summary if len(summary) <= MAX_SUMMARY else summary[:MAX_SUMMARY - 1] + "…",
        decided_at=words.utc_timestamp(), attempts=max(int(attempts), 1))
