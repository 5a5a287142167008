"""Every JSON error weightgate answers over HTTP (server plugin, gate page, webhook receiver).

The body is MLflow's own error body, ``{"error_code": ..., "message": ...}``, with the HTTP status
MLflow maps that code to (``mlflow.exceptions.ERROR_CODE_TO_HTTP_STATUS``), so ``MlflowClient``
and the ``weightgate`` commands read the gate's refusals exactly like MLflow's.
"""

from __future__ import annotations

from flask import Flask, Response, make_response
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_CONFLICT,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
    UNAUTHENTICATED,
)

__all__ = ["INVALID_PARAMETER_VALUE", "PERMISSION_DENIED", "RESOURCE_CONFLICT", "RESOURCE_DOES_NOT_EXIST",
           "TEMPORARILY_UNAVAILABLE", "UNAUTHENTICATED", "Refusal", "error_response", "install_error_handler"]


def error_response(error_code: int, message: str) -> Response:
    """The one builder of an error answer: MLflow's JSON error body and status for ``error_code``."""
    error = MlflowException(message, error_code=error_code)
    response = make_response(error.serialize_as_json(), error.get_http_status_code())
    response.mimetype = "application/json"
    return response


class Refusal(Exception):
    """A request the gate answers with an error; raised where the reason is found, answered by
    :func:`install_error_handler`'s handler."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message

    @classmethod
    def denied(cls, message: str) -> "Refusal":
        return cls(PERMISSION_DENIED, message)

    @classmethod
    def invalid(cls, message: str) -> "Refusal":
        return cls(INVALID_PARAMETER_VALUE, message)

    def response(self) -> Response:
        return error_response(self.error_code, self.message)


def install_error_handler(app: Flask) -> None:
    """Answer a :class:`Refusal` raised in a hook or view of ``app`` (only that exception type:
    MLflow's own errors keep their handling)."""
    app.register_error_handler(Refusal, Refusal.response)
