"""The worker's liveness signal: a heartbeat file rewritten while the worker loop is healthy.

Kubernetes (deploy/k8s/worker.yaml) runs an exec probe that fails when the file is older than a
few minutes, and restarts the container: a worker whose loop died or hangs is replaced, and the
version it held is taken over by another worker when its claim's lease runs out.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gate.vocabulary import utc_timestamp


class Heartbeat:
    """Writes ``{"time", "pid", "state"}`` to ``path`` (atomically); does nothing without a path."""

    def __init__(self, path: str | Path | None, interval_seconds: float = 15.0) -> None:
        self.path = Path(path) if path else None
        self.interval_seconds = interval_seconds

    def beat(self, state: str) -> None:
        if self.path is None:
            return
        scratch = self.path.with_name(self.path.name + ".tmp")
        scratch.write_text(json.dumps({"time": utc_timestamp(), "pid": os.getpid(), "state": state}))
        os.replace(scratch, self.path)

    @contextmanager
    def during(self, state: str) -> Iterator[None]:
        """Keep beating every ``interval_seconds`` through a long step (a big model's scan)."""
        if self.path is None:
            yield
            return
        done = threading.Event()

        def keep_beating() -> None:
            while not done.wait(self.interval_seconds):
                self.beat(state)

        self.beat(state)
        thread = threading.Thread(target=keep_beating, daemon=True, name="weightgate-heartbeat")
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.beat("idle")

