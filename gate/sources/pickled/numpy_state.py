"""numpy arrays in a pickle, rebuilt from bytes already in the file: ``ndarray``/``dtype`` BUILD states and
joblib's arrays, which follow their ``NumpyArrayWrapper`` raw in the stream.

An array is only ever made with ``numpy.frombuffer`` over plain bytes of a numeric dtype; object
arrays (whose items are pickled objects) are never rebuilt, only kept inert.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gate.sources.pickled.constructors import BadPickle, array_from_bytes, numpy_dtype
from gate.sources.pickled.objects import Global, Opaque, PendingArray, PendingDtype

JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"


def set_array_state(target: PendingArray, state: object) -> None:
    """ndarray.__setstate__'s tuple: (version, shape, dtype, is_fortran, data), or the same without version."""
    if type(state) is not tuple or len(state) not in (4, 5):
        raise BadPickle("a numpy array's state is not a 4- or 5-tuple")
    shape, dtype, fortran, data = state[-4:]
    target.state = state
    resolved = numpy_dtype(dtype)
    if resolved is not None and not isinstance(data, list):
        target.array = array_from_bytes(data, resolved, shape, bool(fortran))


def set_dtype_state(target: PendingDtype, state: object) -> None:
    """numpy.dtype.__setstate__'s tuple: (version, byteorder, subarray, names, fields, ...)."""
    if type(state) is not tuple or len(state) < 5:
        raise BadPickle("a numpy dtype's state is not a tuple")
    if state[2] is not None or state[3] is not None:
        target.structured = True  # a record or subarray dtype: its V<n> code still gives the item size
    elif state[1] in ("<", ">", "|", "="):
        target.byteorder = state[1]


def read_joblib_array(stream: Any, wrapper: Opaque, nested_load: Callable[[], object]) -> object:
    """What joblib's NumpyUnpickler.load_build reads after a NumpyArrayWrapper (joblib/numpy_pickle.py):
    a padding length byte and its padding (joblib >= 1.2), then the array's bytes in its order; an object
    array is a nested pickle instead, read by ``nested_load`` into inert objects."""
    state = wrapper.state if type(wrapper.state) is dict else {}
    declared, shape = state.get("dtype"), state.get("shape")
    if not isinstance(declared, PendingDtype) or type(shape) is not tuple \
            or not all(type(n) is int and n >= 0 for n in shape):
        raise BadPickle("a joblib array without a known dtype and shape: its bytes cannot be skipped")
    if declared.resolve().hasobject:
        return Opaque(Global("numpy", "ndarray"), (nested_load(),))
    if state.get("numpy_array_alignment_bytes") is not None:
        padding = stream.read(1)
        stream.read(padding[0] if padding else 0)
    nbytes = math.prod(shape) * declared.resolve().itemsize
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise BadPickle(f"a joblib array needs {nbytes} bytes, the file has {len(data)} left")
    dtype = numpy_dtype(declared)
    if dtype is None:  # records, strings, datetimes: skipped over, kept inert
        return Opaque(Global("numpy", "ndarray"), (declared.code,))
    return array_from_bytes(data, dtype, shape, state.get("order") == "F")
