"""gate.jsonvalues: what strict JSON and MLflow metrics receive from scan numbers. The reference is
json.dumps(allow_nan=False) itself (it refuses NaN, infinities and numpy scalars it cannot encode)
and hand-written expected values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from gate.jsonvalues import json_value, metric_value

RAW = [np.float32(1.5), np.float64(math.nan), math.inf, -math.inf, pd.NA, None, np.int64(3), np.bool_(True),
       "alpha", (np.float16(0.25), math.nan)]


def test_strict_json_refuses_the_raw_values():
    assert all(_refused(value) for value in (np.float32(1.5), math.nan, math.inf, pd.NA, np.int64(3)))


def test_json_value_gives_what_strict_json_encodes():
    converted = [json_value(value) for value in RAW]
    assert json.loads(json.dumps(converted, allow_nan=False)) == [1.5, None, None, None, None, None, 3, True, "alpha",
                                                                   [0.25, None]]
    assert type(converted[0]) is float and type(converted[6]) is int and type(converted[7]) is bool


@pytest.mark.parametrize(("value", "expected"), [
    (np.float32(1.5), 1.5), (np.int64(3), 3.0), (7, 7.0), (math.nan, None), (np.float64(-math.inf), None),
    (pd.NA, None), (None, None), (True, None), (np.bool_(False), None), ("alpha", None), ([1.0], None),
])
def test_metric_value_is_a_finite_float_or_none(value, expected):
    got = metric_value(value)
    assert got == expected and (got is None or type(got) is float)


def _refused(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return True
    return False
