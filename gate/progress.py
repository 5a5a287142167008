"""Progress bars for people at a terminal: tensors read, layers solved, MLflow's downloads.

Bars are shown only inside ``with shown(True):`` (the CLI's reading commands enter it unless
``--quiet`` or a machine format is asked for) and only when stderr is a terminal, so a pipe, a log
file or a CI job gets a clean stderr. MLflow draws its own download bars with tqdm even on a pipe;
its ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` (read at each download) is set off wherever ours are
off. The switch is a context variable: threads that a scan starts get the bar objects themselves,
so they need not see it.
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

MLFLOW_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("weightgate_progress", default=False)
Item = TypeVar("Item")


@contextmanager
def shown(wanted: bool) -> Iterator[bool]:
    """Bars on inside the block if ``wanted`` and stderr is a terminal (yields whether they are);
    when they are off, MLflow's are too (its variable is restored afterwards)."""
    on = bool(wanted) and sys.stderr.isatty()
    token = _SHOWN.set(on)
    previous = os.environ.get(MLFLOW_BARS)
    if not on:
        os.environ[MLFLOW_BARS] = "false"
    try:
        yield on
    finally:
        _SHOWN.reset(token)
        if not on:
            if previous is None:
                os.environ.pop(MLFLOW_BARS, None)
            else:
                os.environ[MLFLOW_BARS] = previous


def bar(description: str, unit: str, total: int | None = None) -> tqdm:
    """A bar on stderr, or (bars off) one whose updates do nothing; close it when done."""
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not _SHOWN.get())


def iterate(items: Collection[Item], description: str, unit: str) -> Iterator[Item]:
    """``items``, counted on a bar (of ``len(items)``) as they are consumed."""
    with bar(description, unit, len(items)) as counter:
        for item in items:
            yield item
            counter.update(1)
