"""Which MLflow server a ``models:/`` or ``runs:/`` source is read from, and failing fast, naming
it, when it cannot be reached.

MLflow's client retries a failed request 7 times with backoff and waits up to 120 s for each
answer: an unreachable server takes about four minutes to report, as a long urllib3 message. The
``weightgate`` commands therefore set MLflow's own HTTP settings (:data:`HTTP_DEFAULTS`) unless the
user set them: a refused connection is reported at once, a server that does not answer within 30
seconds. And MLflow's client with no tracking URI at all uses ``./mlflow.db``, creating it: a
source that names a registry needs a server the user named (``--tracking-uri``,
``MLFLOW_TRACKING_URI``, or ``mlflow.set_tracking_uri`` in Python), never a new local database.
"""

from __future__ import annotations

import os

from gate.errors import GateInputError

# MLflow's names (mlflow/environment_variables.py). Two tries of at most 12 s each (connect or
# answer), 1 s between them: a server that does not answer is reported within 26 s.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "12",
}
HOW_TO_NAME_A_SERVER = ("pass --tracking-uri URI (e.g. http://mlflow.example:5000) or set MLFLOW_TRACKING_URI; "
                        "weightgate never falls back to a new local ./mlflow.db")


def apply_http_defaults() -> None:
    """Set :data:`HTTP_DEFAULTS` in this process's environment where the user has not set them."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def resolve_tracking_uri(given: str | None, source: str) -> str:
    """The tracking URI to read ``source`` from: ``given``, else the one MLflow was given in this
    process (``MLFLOW_TRACKING_URI``, ``mlflow.set_tracking_uri``); else an input error saying how
    to name one."""
    if given:
        return given
    from mlflow.tracking._tracking_service.utils import get_tracking_uri, is_tracking_uri_set

    if is_tracking_uri_set():
        return get_tracking_uri()
    raise GateInputError(f"{source} is read from an MLflow server, and none was named: {HOW_TO_NAME_A_SERVER}")


def unreachable_cause(err: BaseException) -> str | None:
    """A short cause when ``err`` (or an error it was raised from) is a failure to reach a server
    (refused, timed out, unknown host); None for anything else."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return _short(str(current))
        text = str(current)
        if "Max retries exceeded" in text or "Failed to establish a new connection" in text:
            return _short(text)
        current = current.__cause__ or current.__context__
    return None


def unreachable_error(tracking_uri: str, what: str, cause: str) -> GateInputError:
    return GateInputError(f"{what}: cannot reach the MLflow tracking server at {tracking_uri} ({cause}); check that "
                          "it is running and the URI is right (--tracking-uri / MLFLOW_TRACKING_URI)")


def _short(text: str) -> str:
    lowered = text.lower()
    for needle, cause in (("connection refused", "connection refused"), ("timed out", "timed out"),
                          ("read timeout", "timed out"), ("name or service not known", "unknown host"),
                          ("nodename nor servname", "unknown host"), ("temporary failure in name resolution",
                                                                      "unknown host"),
                          ("no route to host", "no route to host"), ("network is unreachable", "network unreachable"),
                          ("connection reset", "connection reset"), ("remote end closed", "connection closed")):
        if needle in lowered:
            return cause
    return text.splitlines()[0][:160] if text else "no answer"
