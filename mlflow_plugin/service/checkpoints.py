"""Named points in a worker's handling of one version where a fault-injection test can stop it.

With ``WEIGHTGATE_PAUSE_AT=point[,point]`` and ``WEIGHTGATE_PAUSE_DIR=folder`` set, a worker that
reaches a listed point writes ``folder/point.reached`` (its pid) and waits until
``folder/point.release`` exists. A test then SIGKILLs it, restarts the server or breaks the
database at exactly that point, with no timing luck. Unset (always, outside tests) it costs one
environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POINTS = ("scanning", "scanned", "uploading", "recording")


def reach(point: str) -> None:
    if point not in POINTS:
        raise ValueError(f"unknown checkpoint {point!r}; known: {POINTS}")
    wanted = os.environ.get("WEIGHTGATE_PAUSE_AT", "")
    if point not in wanted.split(","):
        return
    folder = Path(os.environ["WEIGHTGATE_PAUSE_DIR"])
    (folder / f"{point}.reached").write_text(str(os.getpid()))
    while not (folder / f"{point}.release").exists():
        time.sleep(0.2)
