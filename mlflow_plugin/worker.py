"""``weightgate worker``: scans pending model versions and records the decisions in MLflow.

Several workers may run against one server (on GPU machines, say): each version is claimed through
the server's database before it is scanned, so exactly one worker records its decision. A worker
killed mid-scan leaves the version pending; its claim expires after the lease and another worker
takes the version over. Versions registered while no worker ran are found on start.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.rest_utils import http_request

from mlflow_plugin import vocabulary as words
from mlflow_plugin.config import GateConfig, GateConfigError
from mlflow_plugin.vocabulary import ERROR, EXPERIMENT, PENDING, STATUS, STATUS_OF_DECISION

_logger = logging.getLogger(__name__)
LAYER_SERIES = ("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "mlh")


@dataclass
class WorkerSettings:
    tracking_uri: str
    policy: str | None = None
    device: str = "auto"
    lease_seconds: float = 900.0
    worker_id: str = ""

    def __post_init__(self) -> None:
        if not self.worker_id:
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Scans against a server with the weightgate plugin: claims and records through its endpoints."""

    def __init__(self, settings: WorkerSettings) -> None:
        if not os.environ.get("WEIGHTGATE_WORKER_TOKEN"):
            raise GateConfigError("WEIGHTGATE_WORKER_TOKEN must be set to the server's worker credential")
        self._connect(settings)

    def _connect(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.config = GateConfig.from_env()
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)

    def run(self, once: bool = False, poll_seconds: float = 5.0) -> int:
        """Process pending versions until stopped (or one pass with ``once``); returns how many."""
        processed = 0
        while True:
            for version in self.pending_versions():
                if self.claim(version):
                    self.process(version)
                    processed += 1
            if once:
                return processed
            time.sleep(poll_seconds)

    def pending_versions(self) -> Iterator[ModelVersion]:
        for version in all_model_versions(self.client):
            if (version.tags or {}).get(STATUS, PENDING) == PENDING:
                yield version

    def claim(self, version: ModelVersion) -> bool:
        body = {"name": version.name, "version": int(version.version), "worker": self.settings.worker_id,
                "lease_seconds": self.settings.lease_seconds}
        return bool(self._call("claim", body).get("claimed"))

    def process(self, version: ModelVersion) -> None:
        """Scan, check, log the evidence as a run, then record the decision tags (fail closed)."""
        from gate.check import check

        uri = f"models:/{version.name}/{version.version}"
        baseline = self.baseline_uri(version)
        _logger.info("weightgate worker %s: checking %s against %s", self.settings.worker_id, uri, baseline)
        try:
            result = check(uri, policy=self.settings.policy, baseline=baseline, device=self.settings.device,
                           tracking_uri=self.settings.tracking_uri, keep_spectra=True)
        except Exception as err:  # the boundary of one version: record the failure, keep serving others
            _logger.exception("weightgate worker: scanning %s failed", uri)
            self.record(version, {STATUS: ERROR, words.REASON: f"scan failed: {type(err).__name__}: {err}",
                                  words.SOURCE: version.source})
            return
        run_id = self.log_run(version, result)
        decision = result.decision
        self.record(version, {
            STATUS: STATUS_OF_DECISION[decision.decision],
            words.REASON: decision.reason(),
            words.DECISION_RUN: run_id,
            words.POLICY_SHA256: decision.policy["sha256"],
            words.POLICY: decision.policy["name"],
            words.WEIGHTS_SHA256: decision.weights_sha256,
            words.BASELINE: decision.baseline or "",
            words.SOURCE: version.source,
            words.DECIDED_AT: words.as_tag_timestamp(decision.timestamp),
            words.INCONCLUSIVE: ",".join(rule.rule_id for rule in decision.inconclusive_rules),
        })

    def baseline_uri(self, version: ModelVersion) -> str | None:
        """The version holding a protected alias, else the previous version, else none."""
        model = self.client.get_registered_model(version.name)
        for alias, aliased in sorted((model.aliases or {}).items()):
            if self.config.is_protected(alias) and str(aliased) != str(version.version):
                return f"models:/{version.name}/{aliased}"
        earlier = [int(v.version) for v in self.client.search_model_versions(f"name='{version.name}'")
                   if int(v.version) < int(version.version)]
        return f"models:/{version.name}/{max(earlier)}" if earlier else None

    def log_run(self, version: ModelVersion, result) -> str:
        """A run in experiment 'weightgate' with model metrics, per-layer series and the artifacts."""
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        run = self.client.create_run(experiment_id, run_name=f"{version.name} v{version.version}", tags={
            words.RUN_MODEL: version.name, words.RUN_VERSION: str(version.version),
            words.RUN_DECISION: result.decision.decision, words.RUN_WORKER: self.settings.worker_id,
        })
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(f"model.{k}", float(v), now, 0) for k, v in result.scan.summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)]
        layers = result.scan.layers
        analysed = layers[layers["status"] == "ok"]
        for column in LAYER_SERIES:
            if column in analysed.columns:
                metrics += [Metric(f"layer.{column}", float(value), now, int(step))
                            for step, value in zip(analysed["layer_id"], analysed[column]) if _finite(value)]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        self.client.log_param(run_id, "source", f"models:/{version.name}/{version.version}")
        self.client.log_param(run_id, "baseline", result.decision.baseline or "none")
        with tempfile.TemporaryDirectory() as scratch:
            from gate.policy.report import write_outputs
            from gate.report.html import write_report

            write_outputs(result, scratch)
            write_report(scratch, result.scan, result.decision, result.baseline_scan)
            self.client.log_artifacts(run_id, scratch, artifact_path="weightgate")
        self.client.set_terminated(run_id)
        return run_id

    def record(self, version: ModelVersion, tags: dict[str, str]) -> None:
        body = {"name": version.name, "version": int(version.version), "worker": self.settings.worker_id,
                "tags": tags}
        self._call("record", body)
        _logger.info("weightgate worker: %s version %s -> %s", version.name, version.version, tags[STATUS])

    def _call(self, endpoint: str, body: dict) -> dict:
        from mlflow.utils.credentials import get_default_host_creds

        response = http_request(get_default_host_creds(self.settings.tracking_uri),
                                f"/api/2.0/weightgate/{endpoint}", "POST", json=body)
        if response.status_code == 409:
            _logger.warning("weightgate worker: %s", response.json().get("message"))
            return {}
        if response.status_code != 200:
            raise MlflowException(f"weightgate server endpoint {endpoint} answered {response.status_code}: "
                                  f"{response.text[:500]} (is the server started with --app-name weightgate?)")
        return response.json()


def all_model_versions(client: MlflowClient) -> Iterator[ModelVersion]:
    """Every model version of the registry, page by page, in name order."""
    token = None
    while True:
        page = client.search_model_versions(max_results=200, page_token=token, order_by=["name ASC"])
        yield from page
        token = page.token
        if not token:
            return


def _finite(value) -> bool:
    import math

    return math.isfinite(float(value))
