"""Logging for the long-running processes (worker, webhook receiver): text for people, or one JSON
object per line for log collectors (``--log-format json``).

Structured fields travel in ``extra={"fields": {...}}`` (event, model, version, outcome,
duration_s, ...): the text format appends them as key=value, the JSON format merges them into the
object.
"""

from __future__ import annotations

import json
import logging

from gate.vocabulary import utc_timestamp


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


def configure(log_format: str) -> None:
    """Root handler on stderr in ``log_format``; weightgate's own loggers at INFO, libraries at WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("mlflow_plugin").setLevel(logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs its temp dirs at INFO
