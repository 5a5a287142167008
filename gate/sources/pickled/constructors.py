"""The allowlist: the only pickle globals the safe unpickler turns into real values, each by code of our own.

Every entry is a function written here that checks its arguments and builds plain data (a tensor
description, an ``OrderedDict``, a numpy array over bytes already in the stream); none calls the
function the pickle names. torch's own allowlist (``torch/_weights_only_unpickler.py``) is the model,
with one difference: a global that is not listed here does not fail the load, it becomes an inert
:class:`~gate.sources.pickled.objects.Global` so that the weights beside it can still be read.
"""

from __future__ import annotations

import functools
import math
import re
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from gate.sources.pickled.objects import (
    Global,
    Opaque,
    PendingArray,
    PendingDtype,
    PersistentRef,
    StorageRef,
    StoredTensor,
)

MAX_DIMS = 64  # more dimensions than any tensor needs: a larger size tuple is malformed


class BadPickle(Exception):
    """The stream breaks a rule of the format or of this reader's limits; the caller adds the file name."""


class Allowed:
    """An allowlisted global: ``build(args)`` is our own code that makes the value REDUCE/NEWOBJ asks for."""

    __slots__ = ("qualname", "build")

    def __init__(self, qualname: str, build: Callable[[tuple], object]) -> None:
        self.qualname = qualname
        self.build = build

    def __repr__(self) -> str:
        return f"<allowed {self.qualname}>"


class StorageType:
    """``torch.FloatStorage`` and kin, named in a storage's persistent id: only its dtype matters."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_LEGACY_STORAGES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64,
    "QInt8Storage": torch.qint8, "QInt32Storage": torch.qint32, "QUInt8Storage": torch.quint8,
    "QUInt4x2Storage": torch.quint4x2, "QUInt2x4Storage": torch.quint2x4, "UntypedStorage": torch.uint8,
}
# numpy dtype codes read from a pickle: plain numbers, which arrays are rebuilt from; object arrays ('O',
# their items are pickled objects), strings, bytes, datetimes and structured records ('V<n>'), which are
# recognised only to know their item size (joblib writes their bytes raw) and never rebuilt.
_NUMPY_CODE = re.compile(r"[<>|=]?(b1|bool|[iu][1248]|f(2|4|8|16)|c(8|16|32)|O[48]?|[SUV]\d{1,9}|[Mm]8)")


def check_tensor_geometry(storage: StorageRef, dtype: torch.dtype, offset: object, size: object,
                          stride: object) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Offset, size and stride as ints, refused unless every element they address lies inside the storage."""
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= MAX_DIMS):
        raise BadPickle("tensor size and stride are not tuples of the same length")
    if not all(_is_count(v) for v in (offset, *size, *stride)):
        raise BadPickle("tensor offset, size and stride must be non-negative integers")
    element = dtype.itemsize
    available = storage.nbytes // element
    needed = 0 if 0 in size else offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if needed > available:
        raise BadPickle(f"a tensor of size {list(size)} addresses {needed} elements of {dtype} but its storage "
                        f"{storage.key!r} holds {available}")
    return offset, size, stride


# Keys and set items are hashed, and hashing a tuple walks it: only these types, and tuples of them small
# enough to hash cheaply, are accepted (a tuple that repeats itself by memo reference would hash for ever).
_VALUE_HASHED = frozenset({str, bytes, int, float, complex, bool, type(None), frozenset, torch.dtype})
_IDENTITY_HASHED = (Global, Opaque, PersistentRef, StorageRef, StoredTensor, PendingArray, PendingDtype)
_MAX_KEY_PARTS = 10_000


def check_hashable(key: object) -> None:
    """Refuse a dict key or set item whose hash could run long or be undefined; hashing it is then safe."""
    pending, budget = [key], _MAX_KEY_PARTS
    while pending:
        item = pending.pop()
        budget -= 1
        if budget < 0:
            raise BadPickle(f"a dict key or set item is a tuple of more than {_MAX_KEY_PARTS} parts")
        if type(item) is tuple:
            pending.extend(item)
        elif type(item) not in _VALUE_HASHED and not isinstance(item, (*_IDENTITY_HASHED, Allowed, StorageType)):
            raise BadPickle(f"a dict key or set item of type {type(item).__name__} cannot be hashed")


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**62


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object, dtype: torch.dtype | None = None):
    if not isinstance(storage, StorageRef):
        return Opaque(Global("torch._utils", "_rebuild_tensor_v2"), (storage, offset, size, stride))
    dtype = storage.dtype if dtype is None else dtype
    return StoredTensor(storage, *check_tensor_geometry(storage, dtype, offset, size, stride), dtype)


def _args(args: tuple, low: int, high: int, what: str) -> tuple:
    if not low <= len(args) <= high:
        raise BadPickle(f"{what} takes {low} to {high} arguments, the pickle passes {len(args)}")
    return args


def _tensor_v1(args: tuple):
    return _rebuild_tensor(*_args(args, 4, 4, "_rebuild_tensor"))


def _tensor_v2(args: tuple):
    storage, offset, size, stride = _args(args, 6, 7, "_rebuild_tensor_v2")[:4]
    return _rebuild_tensor(storage, offset, size, stride)


def _tensor_v3(args: tuple):
    storage, offset, size, stride, _grad, _hooks, dtype = _args(args, 7, 8, "_rebuild_tensor_v3")[:7]
    if not isinstance(dtype, torch.dtype):
        raise BadPickle("_rebuild_tensor_v3 needs a torch dtype")
    return _rebuild_tensor(storage, offset, size, stride, dtype)


def _parameter(args: tuple):
    return _args(args, 3, 4, "_rebuild_parameter")[0]  # the tensor; requires_grad, hooks and state are not weights


def _from_type_v2(args: tuple):
    """``_rebuild_from_type_v2(func, new_type, args, state)``: a tensor subclass; its data is what func builds."""
    func, new_type, inner, _state = _args(args, 4, 4, "_rebuild_from_type_v2")
    if isinstance(func, Allowed) and func.qualname in _TENSOR_FUNCTIONS and isinstance(inner, tuple):
        return func.build(inner)  # not itself: a chain of _rebuild_from_type_v2 would recurse
    return Opaque(Global("torch._tensor", "_rebuild_from_type_v2"), args)


def _size(args: tuple):
    (dims,) = _args(args, 1, 1, "torch.Size")
    if not isinstance(dims, tuple):
        raise BadPickle("torch.Size takes a tuple")
    return dims


def _ordered_dict(args: tuple):
    if args:
        raise BadPickle("collections.OrderedDict is pickled with no arguments")
    return OrderedDict()


def _encode(args: tuple):
    """``_codecs.encode(text, 'latin1')``: how protocol 2 writes bytes."""
    text, encoding = _args(args, 2, 2, "_codecs.encode")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise BadPickle("_codecs.encode is only read for latin-1 text")
    return _latin1(text)


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise BadPickle("bytes written as latin-1 text hold a character beyond latin-1") from None


def _bytearray(args: tuple):
    if not args:
        return bytearray()
    data = args[0]
    if len(args) == 1 and isinstance(data, (bytes, bytearray)):
        return bytearray(data)
    return bytearray(_encode(args))


def _complex(args: tuple):
    if not all(type(v) in (int, float) for v in _args(args, 1, 2, "complex")):
        raise BadPickle("complex takes numbers")
    return complex(*args)


def _slice(args: tuple):
    if not all(v is None or type(v) is int for v in _args(args, 1, 3, "slice")):
        raise BadPickle("slice takes integers or None")
    return slice(*args)


def _reconstructor(args: tuple):
    """``copyreg._reconstructor(cls, base, state)`` (protocols 0 and 1): an instance of cls, inert."""
    cls, _base, state = _args(args, 3, 3, "copyreg._reconstructor")
    return Opaque(cls, () if state is None else (state,))


def _newobj(args: tuple):
    if not args:
        raise BadPickle("copyreg.__newobj__ needs a class")
    return Opaque(args[0], args[1:])


def _newobj_ex(args: tuple):
    cls, cls_args, kwargs = _args(args, 3, 3, "copyreg.__newobj_ex__")
    return Opaque(cls, cls_args if isinstance(cls_args, tuple) else (), kwargs if isinstance(kwargs, dict) else None)


def _numpy_reconstruct(args: tuple):
    _args(args, 3, 3, "numpy _reconstruct")
    return PendingArray()


def _numpy_dtype(args: tuple):
    code = _args(args, 1, 3, "numpy.dtype")[0]
    if isinstance(code, str) and _NUMPY_CODE.fullmatch(code):
        return PendingDtype(code)
    return Opaque(Global("numpy", "dtype"), args)


def numpy_dtype(obj: object) -> np.dtype | None:
    """The numpy dtype a pickle described, or ``None`` (structured, unknown, object arrays are not numbers)."""
    if not isinstance(obj, PendingDtype) or obj.structured:
        return None
    dtype = obj.resolve()
    return dtype if dtype.kind in "biufc" else None


def array_from_bytes(data: object, dtype: np.dtype, shape: object, fortran: bool) -> np.ndarray:
    """A read-only array over bytes of the stream, refused unless the bytes are exactly shape x itemsize."""
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DIMS and all(_is_count(n) for n in shape)):
        raise BadPickle("a numpy array's shape must be a tuple of non-negative integers")
    if isinstance(data, str):  # protocol 0-2 pickles written by Python 2 carry the bytes as latin-1 text
        data = _latin1(data)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadPickle("a numpy array's data must be bytes")
    if math.prod(shape) * dtype.itemsize != len(data):
        raise BadPickle(f"a numpy array of shape {list(shape)} and dtype {dtype} needs "
                        f"{math.prod(shape) * dtype.itemsize} bytes, the pickle holds {len(data)}")
    flat = np.frombuffer(data, dtype=dtype)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _numpy_frombuffer(args: tuple):
    """``numpy._core.numeric._frombuffer(buffer, dtype, shape, order)``: protocol 5's in-band arrays."""
    data, dtype, shape, order = _args(args, 4, 4, "numpy _frombuffer")
    resolved = numpy_dtype(dtype)
    if resolved is None:
        return Opaque(Global("numpy._core.numeric", "_frombuffer"), args)
    return array_from_bytes(data, resolved, shape, order == "F")


def _set_of(kind: type) -> Callable[[tuple], object]:
    def build(args: tuple):
        items = _args(args, 0, 1, kind.__name__)
        if items and not isinstance(items[0], list):
            raise BadPickle(f"{kind.__name__} is pickled with a list of items")
        for item in items[0] if items else ():
            check_hashable(item)
        return kind(items[0]) if items else kind()
    return build


# The rebuild functions _rebuild_from_type_v2 may wrap (torch's own: tensors and parameters).
_TENSOR_FUNCTIONS = frozenset({"torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
                               "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
                               "torch._utils._rebuild_parameter_with_state"})
_TORCH_REBUILDS = {
    "torch._utils._rebuild_tensor": _tensor_v1,
    "torch._utils._rebuild_tensor_v2": _tensor_v2,
    "torch._utils._rebuild_tensor_v3": _tensor_v3,
    "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter,
    "torch._tensor._rebuild_from_type_v2": _from_type_v2,
    "torch.Size": _size,
}
_PLAIN = {
    "collections.OrderedDict": _ordered_dict,
    "_codecs.encode": _encode,
    "builtins.bytearray": _bytearray,
    "builtins.complex": _complex,
    "builtins.slice": _slice,
    "builtins.set": _set_of(set),
    "builtins.frozenset": _set_of(frozenset),
    "copyreg._reconstructor": _reconstructor,
    "copyreg.__newobj__": _newobj,
    "copyreg.__newobj_ex__": _newobj_ex,
}
_NUMPY = {
    f"{package}.{name}": build
    for package in ("numpy.core", "numpy._core")
    for name, build in (("multiarray._reconstruct", _numpy_reconstruct), ("numeric._frombuffer", _numpy_frombuffer))
}
_NUMPY["numpy.dtype"] = _numpy_dtype


@functools.cache
def allowlist() -> dict[str, object]:
    """Qualified name -> the value a GLOBAL of that name stands for (an :class:`Allowed`, a torch dtype, or a
    :class:`StorageType`). Built once on first use from fixed tables; no module named by a pickle is imported."""
    builders = {**_TORCH_REBUILDS, **_PLAIN, **_NUMPY}
    table: dict[str, object] = {name: Allowed(name, build) for name, build in builders.items()}
    for module in ("torch", "torch.cuda"):
        for name, dtype in _LEGACY_STORAGES.items():
            table[f"{module}.{name}"] = StorageType(dtype)
    for value in vars(torch).values():
        if isinstance(value, torch.dtype):
            table[str(value)] = value  # "torch.float8_e4m3fn": the dtype argument of _rebuild_tensor_v3
    return table
