"""Judging one model version: choose its baseline, check it, log the decision run, record the tags.

Shared by ``weightgate worker`` (:mod:`mlflow_plugin.service.worker`) and the webhook receiver
(:mod:`mlflow_plugin.service.webhook`); they differ only in how a version is claimed and how its
decision is recorded, the :class:`Recorder` each passes in.

Each version is handled in isolation: whatever goes wrong with it (unreadable weights, a report
that cannot be written, an artifact store that refuses the upload) ends as ``gate.status=error``
with the reason, after transient errors were retried with backoff (:mod:`mlflow_plugin.service.retry`).
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
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from gate import vocabulary as words
from gate.jsonvalues import metric_value
from gate.options import SCAN_OPTIONS, resolve_device
from gate.sources import WeightSource
from gate.vocabulary import EXPERIMENT, STATUS, STATUS_OF_DECISION, LayerStatus, VersionStatus
from mlflow_plugin.config import GateConfig
from mlflow_plugin.server.gate_page import gate_page_tags
from mlflow_plugin.service import checkpoints
from mlflow_plugin.service.liveness import Heartbeat
from mlflow_plugin.service.retry import RetryPolicy, error_chain, with_retries

_logger = logging.getLogger(__name__)
LAYER_SERIES = ("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "mlh")
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

    def record(self, version: ModelVersion, tags: dict[str, str]) -> None:
        """Write the decision tags (``gate.status`` last); raises when nothing could be recorded."""


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
            tags = self.decide(version)
        checkpoints.reach("recording")
        outcome = tags[STATUS]
        try:
            with_retries(f"recording the decision on {uri}", lambda: self.recorder.record(version, tags),
                         self.settings.retry)
        except Exception:  # nothing recorded: the claim's lease runs out and another worker tries again
            _logger.exception("weightgate worker: could not record the decision on %s; it stays pending", uri,
                              extra={"fields": {"event": "record_failed", **_ids(version)}})
            outcome = "unrecorded"
        _logger.info("weightgate worker: %s -> %s", uri, outcome, extra={"fields": {
            "event": "version_done", **_ids(version), "outcome": outcome,
            "duration_s": round(time.monotonic() - started, 3), "attempts": tags.get(words.ATTEMPTS),
            "reason": tags.get(words.REASON, "")[:300], "worker": self.settings.worker_id}})
        return outcome

    def decide(self, version: ModelVersion) -> dict[str, str]:
        """The tags to record: a decision, or ``error`` with the stage that failed and why.

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
            stage = "writing the decision run (metrics, report, artifact upload)"
            run_id, _ = with_retries(f"writing the decision run of {uri}",
                                     lambda: self.log_run(version, result, note), self.settings.retry)
        except Exception as err:  # any failure of this version is recorded as its error status
            _logger.exception("weightgate worker: %s failed while %s", uri, stage,
                              extra={"fields": {"event": "version_error", **_ids(version), "stage": stage}})
            return {STATUS: VersionStatus.ERROR, words.REASON: words.fit_tag_value(f"{stage} failed: {type(err).__name__}: {err}"),
                    words.SOURCE: version.source, words.DECIDED_AT: words.utc_timestamp(),
                    words.ATTEMPTS: str(getattr(err, "attempts", attempts))}
        decision = result.decision
        from gate.report.verdict import reason_text

        return {
            words.REASON: words.fit_tag_value(reason_text(decision)),
            words.DECISION_RUN: run_id,
            words.POLICY_SHA256: decision.policy["sha256"],
            words.POLICY: decision.policy["name"],
            words.WEIGHTS_SHA256: decision.weights_sha256,
            words.BASELINE: decision.baseline or "",
            words.BASELINE_NOTE: words.fit_tag_value(note),
            words.SOURCE: version.source,
            words.DECIDED_AT: words.as_tag_timestamp(decision.timestamp),
            words.INCONCLUSIVE: ",".join(rule.rule_id for rule in decision.inconclusive_rules),
            words.ATTEMPTS: str(attempts),
            STATUS: STATUS_OF_DECISION[decision.decision],
            **gate_page_tags(decision, self.settings.tracking_uri, version),
        }

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

    # -- evidence ----------------------------------------------------------------------------
    def log_run(self, version: ModelVersion, result, baseline_note: str) -> str:
        """A run in experiment 'weightgate' with model metrics, per-layer series and the artifacts."""
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        self._fail_abandoned_runs(experiment_id, version)
        run = self.client.create_run(experiment_id, run_name=f"{version.name} v{version.version}", tags={
            words.RUN_MODEL: version.name, words.RUN_VERSION: str(version.version),
            words.RUN_DECISION: result.decision.decision, words.RUN_WORKER: self.settings.worker_id,
        })
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(f"model.{k}", v, now, 0) for k, v in _metric_values(result.scan.summary.items())]
        layers = result.scan.layers
        analysed = layers[layers["status"] == LayerStatus.OK]
        for column in LAYER_SERIES:
            if column in analysed.columns:
                metrics += [Metric(f"layer.{column}", value, now, int(step))
                            for step, value in _metric_values(zip(analysed["layer_id"], analysed[column]))]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        self.client.log_param(run_id, "source", _uri(version))
        self.client.log_param(run_id, "baseline", result.decision.baseline or "none")
        self.client.log_param(run_id, "baseline_note", baseline_note[:6000])
        checkpoints.reach("uploading")
        with tempfile.TemporaryDirectory() as scratch:
            from gate.policy.report import write_outputs
            from gate.report.html import write_report

            write_outputs(result, scratch)
            write_report(scratch, result.scan, result.decision, result.baseline_scan, pairs=result.pairs)
            self.client.log_artifacts(run_id, scratch, artifact_path="weightgate")
        self.client.set_terminated(run_id)
        return run_id

    def _fail_abandoned_runs(self, experiment_id: str, version: ModelVersion) -> None:
        """Runs of this version still RUNNING belong to a worker that died (or an attempt that failed):
        this worker holds the claim now, so they are marked FAILED and only one run is FINISHED."""
        query = (f"tags.`{words.RUN_MODEL}` = '{version.name}' and tags.`{words.RUN_VERSION}` = '{version.version}'"
                 " and attributes.status = 'RUNNING'")
        for run in self.client.search_runs([experiment_id], query, max_results=100):
            self.client.set_terminated(run.info.run_id, "FAILED")


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


def _ids(version: ModelVersion) -> dict[str, str]:
    return {"model": version.name, "version": str(version.version)}


def _find(err: BaseException, kind: type[BaseException]):
    """The first error of type ``kind`` in ``err``'s cause chain, or None."""
    return next((link for link in error_chain(err) if isinstance(link, kind)), None)


def _metric_values(pairs: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, float]]:
    """(key, value) pairs whose value is a measurement (gate.jsonvalues.metric_value), as floats."""
    for key, value in pairs:
        number = metric_value(value)
        if number is not None:
            yield key, number
