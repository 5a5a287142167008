"""Inert stand-ins for what a pickle asks to create: they record names, arguments and state, and run nothing.

The safe unpickler (:mod:`gate.sources.pickled.unpickler`) never imports a module or calls a callable
named by a pickle. A global becomes a :class:`Global` (its qualified name); calling it (REDUCE, NEWOBJ,
NEWOBJ_EX, INST, OBJ, ``copyreg._reconstructor``) makes an :class:`Opaque` that keeps the callee and its
arguments; BUILD, APPEND and SETITEM on an :class:`Opaque` only record their operands. The weights are
then found by reading this inert graph (:mod:`gate.sources.pickled.module_graph`). None of these classes
defines ``__eq__`` or ``__hash__``: they hash by identity, so using one as a dict key runs nothing.
"""

from __future__ import annotations

import numpy as np
import torch


class Global:
    """A class or function a pickle names (GLOBAL, STACK_GLOBAL, INST, EXT*): never imported."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.qualname}>"


class Opaque:
    """The object a pickle builds by calling ``origin`` (a :class:`Global` or another :class:`Opaque`).

    ``state`` is what BUILD passed (a module's ``__dict__``, an estimator's attributes); ``items`` and
    ``entries`` what APPEND(S) and SETITEM(S) passed. Nothing is ever applied to a real object.
    """

    __slots__ = ("origin", "args", "kwargs", "state", "items", "entries")

    def __init__(self, origin: object, args: tuple = (), kwargs: dict | None = None) -> None:
        self.origin = origin
        self.args = args
        self.kwargs = kwargs or {}
        self.state: object = None
        self.items: list = []
        self.entries: list[tuple[object, object]] = []

    def __repr__(self) -> str:
        return f"<object made by {describe(self.origin)}>"


class PersistentRef:
    """A persistent id that names no storage this reader knows (kept, never resolved)."""

    __slots__ = ("pid",)

    def __init__(self, pid: object) -> None:
        self.pid = pid


class StorageRef:
    """One tensor storage: ``nbytes`` bytes at ``offset`` of a :class:`gate.sources.pickled.torch_archive.Blob`."""

    __slots__ = ("blob", "offset", "nbytes", "dtype", "key")

    def __init__(self, blob: object, offset: int, nbytes: int, dtype: torch.dtype, key: str) -> None:
        self.blob = blob
        self.offset = offset
        self.nbytes = nbytes
        self.dtype = dtype
        self.key = key


class StoredTensor:
    """A tensor described by torch's rebuild arguments; its bytes are read only by :meth:`materialize`."""

    __slots__ = ("storage", "storage_offset", "size", "stride", "dtype")

    def __init__(self, storage: StorageRef, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                 dtype: torch.dtype) -> None:
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = size
        self.stride = stride
        self.dtype = dtype

    def materialize(self) -> torch.Tensor:
        untyped = self.storage.blob.untyped(self.storage.offset, self.storage.nbytes)
        tensor = torch.empty(0, dtype=self.dtype)
        return tensor.set_(untyped, self.storage_offset, self.size, self.stride)


class PendingArray:
    """``numpy...._reconstruct(ndarray, (0,), b'b')``: an array whose dtype, shape and bytes BUILD supplies.

    ``array`` stays ``None`` for object arrays (their items are pickled objects, kept in ``state``)."""

    __slots__ = ("array", "state")

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.state: object = None


class PendingDtype:
    """``numpy.dtype(code, False, True)``; BUILD's state then sets the byte order, or says the dtype is
    structured (fields or a subarray over ``code``'s ``V<n>`` bytes: not plain numbers)."""

    __slots__ = ("code", "byteorder", "structured")

    def __init__(self, code: str) -> None:
        self.code = code
        self.byteorder = "="
        self.structured = False

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" and dtype.itemsize > 1 else dtype


def describe(obj: object) -> str:
    """A short name for what an inert object stands for: a qualified class name, or a type name.
    Never a repr of the graph (a shared sub-graph repeated by reference would make that exponential)."""
    calls = 0
    while isinstance(obj, Opaque) and class_qualname(obj.origin) is None:
        obj, calls = obj.origin, calls + 1  # a call of a call of ...: named after the first callee
    if isinstance(obj, Opaque):
        name = class_qualname(obj.origin)
    elif isinstance(obj, Global):
        name = obj.qualname
    else:
        name = "a tensor" if isinstance(obj, StoredTensor) else type(obj).__name__
    return f"the result of calling {name} {calls} times over" if calls > 1 else \
        f"a call of {name}" if calls else name


# cloudpickle's by-value classes: _make_skeleton_class(type, name, bases, ...), wrapped in _class_setstate(cls, state).
_SKELETON = "cloudpickle.cloudpickle._make_skeleton_class"
_CLASS_SETSTATE = "cloudpickle.cloudpickle._class_setstate"


def class_qualname(origin: object) -> str | None:
    """The qualified name of the class an :class:`Opaque` was made from, when the pickle says it:
    a :class:`Global`, or a class cloudpickle pickled by value (defined in ``__main__`` or a notebook)."""
    for _ in range(8):  # _class_setstate(_make_skeleton_class(...)) nests two deep; bounded anyway
        if isinstance(origin, Global):
            return origin.qualname
        if not isinstance(origin, Opaque) or not isinstance(origin.origin, Global):
            return None
        callee = origin.origin.qualname
        if callee == _CLASS_SETSTATE and origin.args:
            origin = origin.args[0]
        elif callee == _SKELETON and len(origin.args) > 1 and isinstance(origin.args[1], str):
            module = _skeleton_module(origin)
            return f"{module}.{origin.args[1]}" if module else origin.args[1]
        else:
            return None
    return None


def class_name(origin: object) -> str | None:
    """The class name without its module (``Linear``): what the layer planner keys on."""
    qualname = class_qualname(origin)
    return qualname.rsplit(".", 1)[-1] if qualname else None


def _skeleton_module(skeleton: Opaque) -> str | None:
    type_kwargs = skeleton.args[3] if len(skeleton.args) > 3 else None
    module = type_kwargs.get("__module__") if isinstance(type_kwargs, dict) else None
    return module if isinstance(module, str) else None
