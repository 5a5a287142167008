"""weightgate: judge a model by its weights alone.

The public entry point is :func:`gate.scan`. Importing this package is cheap and has no side
effects; the heavy modules (torch, pandas, mlflow) load only when a scan runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gate.options import ScanOptions
    from gate.scanning.result import ScanResult

__all__ = ["scan"]


def scan(source: Any, options: "ScanOptions | None" = None, **changes: Any) -> "ScanResult":
    """Scan ``source`` (path, URI or ``torch.nn.Module``) with ``options`` and keyword changes
    (``device="cpu"``, ``mp_fit=True``, ...); see :func:`gate.scanning.pipeline.scan`."""
    from gate.scanning.pipeline import scan as _scan

    return _scan(source, options, **changes)
