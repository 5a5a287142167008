"""Which errors the worker retries, and how: real exception objects as the libraries raise them."""

from __future__ import annotations

import sqlite3

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException

from gate.errors import GateInputError, UnsafePickleError
from mlflow_plugin.service.retry import RetriesExhausted, RetryPolicy, is_transient, with_retries


def _wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised from ``inner``, as MLflow wraps a requests error."""
    try:
        try:
            raise inner
        except BaseException as err:
            raise outer from err
    except BaseException as raised:
        return raised


@pytest.mark.parametrize("error", [
    requests.ConnectionError("Connection refused"),
    requests.Timeout("read timed out"),
    RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}),  # 500
    RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}),
    sqlite3.OperationalError("database is locked"),
    _wrapped(requests.ConnectionError("reset"), MlflowException("API request to /x failed with exception reset")),
    _wrapped(sqlite3.OperationalError("database is locked"), GateInputError("models:/m/1: could not download")),
    OSError(5, "Input/output error"),
], ids=lambda e: type(e).__name__)
def test_transient_errors(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    GateInputError("models:/m/1: no weights found"),
    UnsafePickleError("models:/m/1: needs pickled Python objects"),
    RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such version"}),  # 404
    RestException({"error_code": "PERMISSION_DENIED", "message": "no"}),  # 403
    FileNotFoundError(2, "No such file"),
    ValueError("a bug"),
], ids=lambda e: type(e).__name__)
def test_permanent_errors(error):
    assert not is_transient(error)


def test_transient_errors_are_retried_with_growing_waits_then_given_up():
    waits: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise requests.ConnectionError("Connection refused")
        return "done"

    assert with_retries("flaky", flaky, RetryPolicy(5, 1.0, 60.0), sleep=waits.append) == ("done", 3)
    assert len(waits) == 2 and 0.75 <= waits[0] <= 1.25 and 1.5 <= waits[1] <= 2.5

    def down() -> None:
        raise requests.ConnectionError("Connection refused")

    waits.clear()
    with pytest.raises(RetriesExhausted, match="still failing after 4 attempts") as exhausted:
        with_retries("down", down, RetryPolicy(4, 10.0, 15.0), sleep=waits.append)
    assert exhausted.value.attempts == 4 and isinstance(exhausted.value.__cause__, requests.ConnectionError)
    assert len(waits) == 3 and max(waits) <= 15.0 * 1.25  # capped


def test_permanent_errors_are_not_retried():
    waits: list[float] = []

    def broken() -> None:
        raise GateInputError("models:/m/1: no weights found")

    with pytest.raises(GateInputError):
        with_retries("broken", broken, RetryPolicy(5, 1.0), sleep=waits.append)
    assert waits == []
