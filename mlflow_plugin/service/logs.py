"""Logging for the long-running processes (worker, webhook receiver): text for people, or one JSON
object per line for log collectors (``--log-format json``).

Structured fields travel in ``extra={"fields": {...}}`` (event, model, version, outcome,
duration_s, ...) with their types (numbers are numbers): the text format appends them as
key=value, the JSON format merges them into the object.

MLflow's artifact progress bars and its "View run at" links are switched off
(``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``, ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``; with text
logs only where the user has not set them). With JSON, nothing else reaches stdout or stderr:
Python warnings go through logging, an uncaught error is one JSON object, and any other line a
library prints is wrapped as an ``output`` event (:class:`JsonLines`). Output written below Python
(a C library writing to the file descriptor itself) is not seen.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
from typing import Any, TextIO

from gate.vocabulary import utc_timestamp

QUIET_MLFLOW = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": utc_timestamp(record.created), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        return text + "".join(f" {key}={value}" for key, value in fields.items()) if fields else text


class JsonLines(io.TextIOBase):
    """A text stream that passes JSON object lines through and wraps every other line as an
    ``output`` event (a progress bar's carriage-return updates keep only their last state)."""

    def __init__(self, target: TextIO, stream: str) -> None:
        super().__init__()
        self.target, self.stream = target, stream
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # progress bars (tqdm) switch themselves off

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._emit(self._pending)
                self._pending = ""
            self.target.flush()

    def _emit(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1].rstrip()
        if not line:
            return
        if not (line.startswith("{") and line.endswith("}")):
            line = json.dumps({"time": utc_timestamp(), "level": "INFO" if self.stream == "stdout" else "WARNING",
                               "logger": self.stream, "message": line, "event": "output"})
        self.target.write(line + "\n")
        self.target.flush()


def configure(log_format: str) -> None:
    """Root handler on stderr in ``log_format``; weightgate's own loggers at INFO, libraries at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("mlflow_plugin").setLevel(logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs its temp dirs at INFO
    for key, value in QUIET_MLFLOW.items():  # a service's output is its log; JSON logs insist
        if log_format == "json":
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    if log_format == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        sys.stdout = JsonLines(sys.stdout, "stdout")
        sys.stderr = JsonLines(sys.stderr, "stderr")


def event(message: str, **fields: Any) -> None:
    """One event of a service's own (start, end), in the configured format."""
    logging.getLogger("mlflow_plugin.service").info(message, extra={"fields": fields})


def _log_uncaught(kind, value, traceback) -> None:
    logging.getLogger("mlflow_plugin.service").critical("uncaught %s: %s", kind.__name__, value,
                                                         exc_info=(kind, value, traceback),
                                                         extra={"fields": {"event": "crashed"}})
