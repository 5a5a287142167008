"""Numbers as strict JSON and MLflow metrics take them: the one owner of that conversion.

Scan results hold NaN for "no measurement" (a layer too small to fit, a mean over no layers) and
numpy scalars from pandas tables. ``json.dumps(..., allow_nan=False)`` refuses the first and cannot
encode the second, and MLflow has no use for a NaN metric (some stores refuse it). Every place that
writes a JSON record or logs a metric from those numbers converts them here.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def json_value(value: Any) -> Any:
    """A value json.dumps accepts with allow_nan=False: NaN/Inf -> None, numpy scalars -> Python
    (lists and tuples element by element), pandas' missing value -> None."""
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is None:
        return None
    return value


def metric_value(value: Any) -> float | None:
    """``value`` as an MLflow metric value (a finite float), or None where it is no measurement:
    NaN, infinities, missing values, booleans (flags, not quantities) and non-numbers."""
    value = json_value(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
