"""``weightgate worker``: scans pending model versions and records the decisions in MLflow.

Several workers may run against one server (on GPU machines, say): each version is claimed through
the server's database before it is scanned, so exactly one worker records its decision. A worker
killed mid-scan leaves the version pending; its claim expires after the lease and another worker
takes the version over. Versions registered while no worker ran are found on start.

Judging a version (baseline, check, decision run, error status) is
:class:`mlflow_plugin.service.judge.VersionJudge`'s; this module adds the polling loop and
:class:`PluginRecorder`, which claims and records through the server plugin's endpoints.
"""

from __future__ import annotations

import logging
import os
import time

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.rest_utils import http_request

from mlflow_plugin.config import GateConfigError
from mlflow_plugin.service.judge import VersionJudge, WorkerSettings, all_model_versions
from mlflow_plugin.service.retry import with_retries

__all__ = ["PluginRecorder", "Worker", "WorkerSettings", "all_model_versions"]

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

    def record(self, version: ModelVersion, tags: dict[str, str]) -> None:
        body = {"name": version.name, "version": int(version.version), "worker": self.settings.worker_id,
                "tags": tags, "lease_seconds": self.settings.lease_seconds}
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
                                  f"{response.text[:500]} (is the server started with --app-name weightgate?)")
        return response.json()


class Worker:
    """Polls a server with the weightgate plugin for pending versions and judges each it claims."""

    def __init__(self, settings: WorkerSettings) -> None:
        if not os.environ.get("WEIGHTGATE_WORKER_TOKEN"):
            raise GateConfigError("WEIGHTGATE_WORKER_TOKEN must be set to the server's worker credential")
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
