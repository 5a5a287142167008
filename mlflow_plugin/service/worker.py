"""``weightgate worker``: scans pending model versions and records the decisions in MLflow.

Several workers may run against one server (on GPU machines, say): each version is claimed through
the server's database before it is scanned, so exactly one worker records its decision. A worker
killed mid-scan leaves the version pending; its claim expires after the lease and another worker
takes the version over. Versions registered while no worker ran are found on start.

Judging a version (baseline, check, decision run, error status) is
:class:`mlflow_plugin.service.judge.VersionJudge`'s; this module adds the polling loop,
:class:`PluginRecorder`, which claims and records through the server plugin's endpoints, and
:func:`check_in`, the worker's look at the server before it starts: a server that cannot be reached,
that does not run the plugin, that refuses the worker's credential, or that enforces another
policy ends the worker at once with the cause (exit 2), instead of one error per version.
"""

from __future__ import annotations

import logging
import os
import time

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.rest_utils import http_request

from gate.mlflow_connection import unreachable_cause
from mlflow_plugin.config import GateConfigError
from mlflow_plugin.decision_record import DecisionRecord
from mlflow_plugin.service.judge import VersionJudge, WorkerSettings, all_model_versions
from mlflow_plugin.service.retry import with_retries

__all__ = ["PluginRecorder", "Worker", "WorkerSettings", "all_model_versions", "check_in"]

_logger = logging.getLogger(__name__)


class PluginRecorder:
    """Claims and records through ``/api/2.0/weightgate/{claim,record}`` with the worker credential
    (``WEIGHTGATE_WORKER_TOKEN``, sent by MLflow's client as ``X-Weightgate-Token``)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings

    def claim(self, version: ModelVersion) -> bool:
        body = {"name": version.name, "version": int(version.version), "worker": self.settings.worker_id,
                "lease_seconds": self.settings.lease_seconds}
        return bool(self._call("claim", body).get("claimed"))

    def record(self, version: ModelVersion, record: DecisionRecord) -> None:
        body = {"name": version.name, "version": int(version.version), "worker": self.settings.worker_id,
                "decision": record.model_dump(), "lease_seconds": self.settings.lease_seconds}
        self._call("record", body)

    def _call(self, endpoint: str, body: dict) -> dict:
        from mlflow.utils.credentials import get_default_host_creds

        response = http_request(get_default_host_creds(self.settings.tracking_uri),
                                f"/api/2.0/weightgate/{endpoint}", "POST", json=body)
        if response.status_code == 409:
            _logger.warning("weightgate worker: %s", response.json().get("message"))
            return {}
        if response.status_code >= 500:
            raise MlflowException(f"weightgate server endpoint {endpoint} answered {response.status_code}: "
                                  f"{response.text[:500]}", error_code="TEMPORARILY_UNAVAILABLE")
        if response.status_code != 200:
            raise MlflowException(f"weightgate server endpoint {endpoint} answered {response.status_code}: "
                                  f"{response.text[:500]}")
        return response.json()


def check_in(settings: WorkerSettings, policy_sha256: str) -> dict:
    """``GET /api/2.0/weightgate/hello`` with the worker credential; a server the worker cannot
    work with is a :class:`GateConfigError` naming the server and the cause."""
    from mlflow.utils.credentials import get_default_host_creds

    uri = settings.tracking_uri
    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/weightgate/hello", "GET", max_retries=0)
    except MlflowException as err:
        cause = unreachable_cause(err)
        raise GateConfigError(f"cannot reach the MLflow server at {uri} ({cause or err.message}); check that it is "
                              "running and --tracking-uri / MLFLOW_TRACKING_URI") from err
    if response.status_code == 404:
        raise GateConfigError(f"the MLflow server at {uri} does not run the weightgate plugin (no "
                              "/api/2.0/weightgate/hello): start it with `mlflow server --app-name weightgate` (or "
                              "weightgate-basic-auth), or use `weightgate webhook-receiver` for a server without it")
    if response.status_code == 403:
        raise GateConfigError(f"the MLflow server at {uri} refused this worker's credential: WEIGHTGATE_WORKER_TOKEN "
                              "must be the token the server was started with")
    if response.status_code == 401:
        raise GateConfigError(f"the MLflow server at {uri} wants a login (basic-auth): set MLFLOW_TRACKING_USERNAME "
                              "and MLFLOW_TRACKING_PASSWORD for the worker")
    if response.status_code != 200:
        raise GateConfigError(f"the MLflow server at {uri} answered the worker's check-in with "
                              f"{response.status_code}: {response.text[:300]}")
    server = response.json()
    if server.get("policy_sha256") != policy_sha256:
        raise GateConfigError(
            f"this worker's policy (sha256 {policy_sha256[:12]}) is not the one the server at {uri} enforces "
            f"(sha256 {str(server.get('policy_sha256'))[:12]}): every decision it recorded would be refused at "
            "promotion; give the worker the server's WEIGHTGATE_POLICY file")
    return server


class Worker:
    """Polls a server with the weightgate plugin for pending versions and judges each it claims."""

    def __init__(self, settings: WorkerSettings, policy_sha256: str) -> None:
        if not os.environ.get("WEIGHTGATE_WORKER_TOKEN"):
            raise GateConfigError("WEIGHTGATE_WORKER_TOKEN must be set to the server's worker credential")
        check_in(settings, policy_sha256)
        self.judge = VersionJudge(settings, PluginRecorder(settings))

    def run(self, once: bool = False, poll_seconds: float = 5.0) -> int:
        """Process pending versions until stopped (or one pass with ``once``); returns how many.

        A registry that stays unreachable through every retry ends a ``once`` pass with the error;
        the long-running loop logs it and polls again.
        """
        judge = self.judge
        processed = 0
        while True:
            judge.heartbeat.beat("polling")
            try:
                pending, _ = with_retries("listing pending versions", judge.pending_versions, judge.settings.retry)
            except Exception:
                if once:
                    raise
                _logger.exception("weightgate worker: cannot list pending versions; polling again",
                                  extra={"fields": {"event": "poll_failed"}})
                pending = []
            for version in pending:
                if judge.claim_or_skip(version):
                    judge.process(version)
                    processed += 1
            if once:
                return processed
            time.sleep(poll_seconds)
