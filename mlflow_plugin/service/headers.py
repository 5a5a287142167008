"""Adds the worker credential to MLflow client requests of the gate's own processes.

Registered as an ``mlflow.request_header_provider`` entry point; active only in a process where
``WEIGHTGATE_WORKER_TOKEN`` is set (the worker), so ordinary clients never send it.
"""

from __future__ import annotations

import os

from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider

from gate.vocabulary import WORKER_TOKEN_HEADER


class WorkerTokenHeaderProvider(RequestHeaderProvider):
    def in_context(self) -> bool:
        return bool(os.environ.get("WEIGHTGATE_WORKER_TOKEN"))

    def request_headers(self) -> dict[str, str]:
        return {WORKER_TOKEN_HEADER: os.environ["WEIGHTGATE_WORKER_TOKEN"]}
