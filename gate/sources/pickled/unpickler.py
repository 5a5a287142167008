"""A pickle reader that never runs code from the stream: an opcode loop of its own over ``pickletools.genops``.

``pickle.Unpickler`` calls whatever REDUCE, NEWOBJ, INST, OBJ and BUILD name (``__setstate__``,
``append``, ``__setitem__`` of the object built) and ``find_class`` imports modules; overriding
``find_class`` leaves the rest of those paths in place. This loop instead interprets every opcode
itself (``pickletools.genops`` only decodes the bytes of each opcode and its argument), in the
manner of ``torch/_weights_only_unpickler.py``, with these rules:

* a global resolves to an entry of :func:`gate.sources.pickled.constructors.allowlist` (our own code
  that builds plain data) or to an inert :class:`~gate.sources.pickled.objects.Global`; nothing is imported;
* REDUCE, NEWOBJ, NEWOBJ_EX, INST and OBJ on anything not allowlisted make an inert
  :class:`~gate.sources.pickled.objects.Opaque`; BUILD, APPEND(S), SETITEM(S) and ADDITEMS only
  touch real ``list``/``dict``/``OrderedDict``/``set`` objects created here, or are recorded on an
  :class:`Opaque`; anything else is a malformed stream;
* persistent ids go to the caller's resolver (torch storages), or become inert references;
* EXT1/2/4 name extension codes, kept as inert globals (the process's copyreg registry is not consulted);
* dict keys and set items are checked before they are hashed (:func:`check_hashable`);
* :class:`~gate.sources.pickled.limits.PickleLimits` bounds the work: opcodes, nesting depth, stack size.

Every failure is a :class:`~gate.sources.pickled.constructors.BadPickle` naming the byte offset.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gate.sources.pickled.constructors import Allowed, BadPickle, allowlist, check_hashable
from gate.sources.pickled.limits import OpBudget
from gate.sources.pickled.numpy_state import JOBLIB_WRAPPER, read_joblib_array, set_array_state, set_dtype_state
from gate.sources.pickled.objects import (
    Global,
    Opaque,
    PendingArray,
    PendingDtype,
    PersistentRef,
    StoredTensor,
    class_qualname,
)


class SafeUnpickler:
    """Reads one pickle from ``stream`` (anything with ``read``/``readline``/``tell``/``seek``, e.g. an mmap)."""

    def __init__(self, stream: Any, budget: OpBudget, *, persistent_load: Callable[[object], object] | None = None,
                 extra: dict[str, Allowed] | None = None, joblib_arrays: bool = False) -> None:
        self._stream = stream
        self._budget = budget
        self._limits = budget.limits
        self._persistent_load = persistent_load or PersistentRef
        self._extra = extra or {}
        self._joblib_arrays = joblib_arrays
        self._stack: list = []
        self._metastack: list[list] = []
        self._memo: dict[int, object] = {}
        self._depth: dict[int, int] = {}  # id -> nesting depth, for containers made here
        self._alive: list = []  # keeps those containers alive so that their ids are not reused
        self._done = False
        self._result: object = None

    def load(self) -> object:
        ops = pickletools.genops(self._stream)
        while not self._done:
            position = self._stream.tell()
            try:
                opcode, arg, _ = next(ops)
            except (ValueError, StopIteration) as err:  # genops: truncated data, unknown opcode, bad text
                raise BadPickle(f"not a valid pickle stream at byte {position}: {err}") from None
            self._budget.spend()
            try:
                getattr(self, f"_op_{opcode.name}")(arg)
            except BadPickle as err:
                raise BadPickle(f"{err} ({opcode.name} at byte {position})") from None
        return self._result

    # --- stack -----------------------------------------------------------------------------------------
    def _push(self, value: object) -> None:
        if len(self._stack) >= self._limits.max_stack:
            raise BadPickle(f"more than {self._limits.max_stack} items on the pickle stack (limit)")
        self._stack.append(value)

    def _pop(self) -> object:
        if not self._stack:
            raise BadPickle("the pickle pops from an empty stack")
        return self._stack.pop()

    def _top(self) -> object:
        if not self._stack:
            raise BadPickle("the pickle reads from an empty stack")
        return self._stack[-1]

    def _pop_mark(self) -> list:
        if not self._metastack:
            raise BadPickle("the pickle closes a MARK it never opened")
        items = self._stack
        self._stack = self._metastack.pop()
        return items

    def _made(self, value: object, children: object = ()) -> object:
        """Register a container built here with its depth (1 + its deepest child) and return it."""
        depth = 1 + max((self._depth.get(id(c), 0) for c in children), default=0)
        if depth > self._limits.max_depth:
            raise BadPickle(f"objects nested more than {self._limits.max_depth} deep (limit)")
        self._depth[id(value)] = depth
        self._alive.append(value)
        return value

    def _nest(self, parent: object, children: object) -> None:
        depth = 1 + max((self._depth.get(id(c), 0) for c in children), default=0)
        if depth > self._limits.max_depth:
            raise BadPickle(f"objects nested more than {self._limits.max_depth} deep (limit)")
        if depth > self._depth.get(id(parent), 0):
            self._depth[id(parent)] = depth

    # --- constants ---------------------------------------------------------------------------------------
    def _op_constant(self, arg: object) -> None:
        self._push(arg)

    _op_INT = _op_BININT = _op_BININT1 = _op_BININT2 = _op_LONG = _op_LONG1 = _op_LONG4 = _op_constant
    _op_FLOAT = _op_BINFLOAT = _op_STRING = _op_BINSTRING = _op_SHORT_BINSTRING = _op_constant
    _op_BINBYTES = _op_SHORT_BINBYTES = _op_BINBYTES8 = _op_BYTEARRAY8 = _op_constant
    _op_UNICODE = _op_SHORT_BINUNICODE = _op_BINUNICODE = _op_BINUNICODE8 = _op_constant

    def _op_NONE(self, _: None) -> None:
        self._push(None)

    def _op_NEWTRUE(self, _: None) -> None:
        self._push(True)

    def _op_NEWFALSE(self, _: None) -> None:
        self._push(False)

    def _op_EMPTY_TUPLE(self, _: None) -> None:
        self._push(())

    def _op_PROTO(self, version: int) -> None:
        if version > 5:
            raise BadPickle(f"pickle protocol {version} is newer than 5")

    def _op_FRAME(self, _: int) -> None:
        pass  # framing only groups opcodes for buffered reading

    def _op_STOP(self, _: None) -> None:
        self._result = self._pop()
        self._done = True

    def _op_NEXT_BUFFER(self, _: None) -> None:
        raise BadPickle("the pickle refers to out-of-band buffers (protocol 5) that are not in the file")

    def _op_READONLY_BUFFER(self, _: None) -> None:
        self._top()

    # --- stack and memo --------------------------------------------------------------------------------------
    def _op_MARK(self, _: None) -> None:
        if len(self._metastack) >= self._limits.max_stack:
            raise BadPickle(f"more than {self._limits.max_stack} open MARKs (limit)")
        self._metastack.append(self._stack)
        self._stack = []

    def _op_POP(self, _: None) -> None:
        if self._stack:
            self._stack.pop()
        else:
            self._pop_mark()

    def _op_POP_MARK(self, _: None) -> None:
        self._pop_mark()

    def _op_DUP(self, _: None) -> None:
        self._push(self._top())

    def _op_PUT(self, index: int) -> None:
        if index < 0:
            raise BadPickle("negative memo index")
        self._memo[index] = self._top()

    _op_BINPUT = _op_LONG_BINPUT = _op_PUT

    def _op_MEMOIZE(self, _: None) -> None:
        self._memo[len(self._memo)] = self._top()

    def _op_GET(self, index: int) -> None:
        if index not in self._memo:
            raise BadPickle(f"memo entry {index} was never stored")
        self._push(self._memo[index])

    _op_BINGET = _op_LONG_BINGET = _op_GET

    # --- containers -----------------------------------------------------------------------------------------
    def _op_EMPTY_LIST(self, _: None) -> None:
        self._push(self._made([]))

    def _op_EMPTY_DICT(self, _: None) -> None:
        self._push(self._made({}))

    def _op_EMPTY_SET(self, _: None) -> None:
        self._push(self._made(set()))

    def _op_LIST(self, _: None) -> None:
        items = self._pop_mark()
        self._push(self._made(items, items))

    def _op_TUPLE(self, _: None) -> None:
        items = tuple(self._pop_mark())
        self._push(self._made(items, items))

    def _tuple_of(self, count: int) -> None:
        items = tuple(self._pop() for _ in range(count))[::-1]
        self._push(self._made(items, items))

    def _op_TUPLE1(self, _: None) -> None:
        self._tuple_of(1)

    def _op_TUPLE2(self, _: None) -> None:
        self._tuple_of(2)

    def _op_TUPLE3(self, _: None) -> None:
        self._tuple_of(3)

    def _op_DICT(self, _: None) -> None:
        items = self._pop_mark()
        target = self._made({})
        self._set_items(target, items)
        self._push(target)

    def _op_APPEND(self, _: None) -> None:
        value = self._pop()
        self._append(self._top(), [value])

    def _op_APPENDS(self, _: None) -> None:
        items = self._pop_mark()
        self._append(self._top(), items)

    def _append(self, target: object, items: list) -> None:
        self._fill(target, items, "APPEND", {list: lambda values: values.extend(items)},
                   lambda opaque: opaque.items.extend(items))

    def _op_SETITEM(self, _: None) -> None:
        value = self._pop()
        key = self._pop()
        self._set_items(self._top(), [key, value])

    def _op_SETITEMS(self, _: None) -> None:
        items = self._pop_mark()
        self._set_items(self._top(), items)

    def _set_items(self, target: object, items: list) -> None:
        if len(items) % 2:
            raise BadPickle("a dict is given an odd number of keys and values")
        pairs = list(zip(items[::2], items[1::2]))

        def into_dict(mapping: dict) -> None:
            for key, value in pairs:
                check_hashable(key)
                mapping[key] = value

        self._fill(target, items, "SETITEM", {dict: into_dict, OrderedDict: into_dict},
                   lambda opaque: opaque.entries.extend(pairs))

    def _op_ADDITEMS(self, _: None) -> None:
        items = self._pop_mark()

        def into_set(values: set) -> None:
            for item in items:
                check_hashable(item)
            values.update(items)

        self._fill(self._top(), items, "ADDITEMS", {set: into_set}, lambda opaque: opaque.items.extend(items))

    def _fill(self, target: object, items: list, opcode: str, native: dict[type, Callable[[Any], None]],
              inert: Callable[[Opaque], None]) -> None:
        """Adds ``items`` to ``target``: a native container by its own rule (``native`` by exact type,
        keys checked before they are hashed), an inert placeholder keeps them as given; adding to
        anything else is a malformed pickle."""
        if type(target) in native:
            native[type(target)](target)
        elif isinstance(target, Opaque):
            inert(target)
        else:
            raise BadPickle(f"{opcode} on a {type(target).__name__}")
        self._nest(target, items)

    def _op_FROZENSET(self, _: None) -> None:
        items = self._pop_mark()
        for item in items:
            check_hashable(item)
        self._push(self._made(frozenset(items), items))

    # --- globals and calls: the paths that run code in pickle.Unpickler ----------------------------------------
    def _resolve(self, module: object, name: object) -> object:
        if not isinstance(module, str) or not isinstance(name, str):
            raise BadPickle("a global's module and name must be text")
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as pickle's fix_imports maps them
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        known = self._extra.get(qualname) or allowlist().get(qualname)
        if known is None:
            self._budget.inert_globals[qualname] = None
            return Global(module, name)
        return known

    def _op_GLOBAL(self, arg: str) -> None:
        module, _, name = arg.partition(" ")
        self._push(self._resolve(module, name))

    def _op_STACK_GLOBAL(self, _: None) -> None:
        name = self._pop()
        module = self._pop()
        self._push(self._resolve(module, name))

    def _op_EXT1(self, code: int) -> None:
        self._budget.inert_globals[f"extension code {code}"] = None
        self._push(Global("copyreg._extension_registry", str(code)))

    _op_EXT2 = _op_EXT4 = _op_EXT1

    def _op_REDUCE(self, _: None) -> None:
        args = self._pop()
        callee = self._pop()
        self._push(self._call(callee, args, {}))

    def _op_NEWOBJ(self, _: None) -> None:
        args = self._pop()
        cls = self._pop()
        self._push(self._call(cls, args, {}))

    def _op_NEWOBJ_EX(self, _: None) -> None:
        kwargs = self._pop()
        args = self._pop()
        cls = self._pop()
        if type(kwargs) is not dict:
            raise BadPickle("NEWOBJ_EX keyword arguments are not a dict")
        self._push(self._call(cls, args, kwargs))

    def _op_INST(self, arg: str) -> None:
        args = self._pop_mark()
        module, _, name = arg.partition(" ")
        self._push(self._call(self._resolve(module, name), tuple(args), {}))

    def _op_OBJ(self, _: None) -> None:
        items = self._pop_mark()
        if not items:
            raise BadPickle("OBJ without a class")
        self._push(self._call(items[0], tuple(items[1:]), {}))

    def _call(self, callee: object, args: object, kwargs: dict) -> object:
        if type(args) is not tuple:
            raise BadPickle(f"call arguments are a {type(args).__name__}, not a tuple")
        if isinstance(callee, Allowed):
            if kwargs:
                raise BadPickle(f"{callee.qualname} is called with keyword arguments")
            return self._made(callee.build(args), args)
        if isinstance(callee, (Global, Opaque, PersistentRef)):  # the callee counts: calls of calls nest too
            return self._made(Opaque(callee, args, kwargs), (callee, args, kwargs))
        raise BadPickle(f"the pickle calls a {type(callee).__name__}, which is not a class or function")

    def _op_BUILD(self, _: None) -> None:
        state = self._pop()
        target = self._top()
        if isinstance(target, Opaque):
            target.state = state
            self._nest(target, [state])
            if self._joblib_arrays and class_qualname(target.origin) == JOBLIB_WRAPPER:
                self._stack[-1] = self._made(read_joblib_array(self._stream, target, self._nested_load), [target])
        elif isinstance(target, PendingArray):
            set_array_state(target, state)
            self._nest(target, [state])
        elif isinstance(target, PendingDtype):
            set_dtype_state(target, state)
        elif type(target) is not OrderedDict and not isinstance(target, StoredTensor):
            # OrderedDict and tensor state is Python attributes (a state dict's _metadata): not weights, dropped
            raise BadPickle(f"BUILD on a {type(target).__name__}")

    def _nested_load(self) -> object:
        """A pickle nested in this stream at the current position (joblib's object arrays)."""
        return SafeUnpickler(self._stream, self._budget, extra=self._extra, joblib_arrays=True).load()

    # --- persistent ids ----------------------------------------------------------------------------------
    def _op_PERSID(self, pid: str) -> None:
        self._push(self._persistent_load(pid))

    def _op_BINPERSID(self, _: None) -> None:
        pid = self._pop()
        self._push(self._made(self._persistent_load(pid), [pid]))  # an id of an id of ... nests too
