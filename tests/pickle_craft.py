"""Hand-assembled pickle streams and torch archives for the safe reader's tests.

``pickle.dumps`` never writes some opcodes (INST and OBJ since Python 3, EXT codes without a
registry entry) and never writes malformed or hostile streams; these helpers spell the opcodes
out (names as in ``pickletools``) so that tests can. Archives are written with ``zipfile`` in torch's
layout (``archive/data.pkl``, ``archive/data/<key>``, ``archive/byteorder``, ``archive/version``),
which ``torch.load`` itself reads.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import torch

PROTO2 = b"\x80\x02"
MARK, STOP, TUPLE, TUPLE1, REDUCE, BUILD, DICT_EMPTY, SETITEMS = b"(", b".", b"t", b"\x85", b"R", b"b", b"}", b"u"
EMPTY_TUPLE, NEWFALSE, BINPERSID, MEMOIZE, POP = b")", b"\x89", b"Q", b"\x94", b"0"


def text(value: str) -> bytes:
    """BINUNICODE."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    """BININT, or LONG1 beyond 32 bits."""
    if -2**31 <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def glob(module: str, name: str) -> bytes:
    """GLOBAL (protocol 0-3)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_glob(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4+)."""
    return text(module) + text(name) + b"\x93"


def call(callee: bytes, *args: bytes) -> bytes:
    """callee(*args) with REDUCE."""
    return callee + MARK + b"".join(args) + TUPLE + REDUCE


def tensor(key: str, shape: tuple[int, ...], numel: int | None = None, storage: str = "FloatStorage",
           strides: tuple[int, ...] | None = None) -> bytes:
    """torch._utils._rebuild_tensor_v2 of a tensor on storage ``key`` (``numel`` declared in the persistent
    id, by default the tensor's own element count; ``strides`` by default contiguous)."""
    contiguous, step = [], 1
    for size in reversed(shape):
        contiguous.insert(0, step)
        step *= size
    strides = contiguous if strides is None else strides
    declared = step if numel is None else numel
    pid = MARK + text("storage") + glob("torch", storage) + text(key) + text("cpu") + integer(declared) + TUPLE
    return call(glob("torch._utils", "_rebuild_tensor_v2"),
                pid + BINPERSID, integer(0), MARK + b"".join(map(integer, shape)) + TUPLE,
                MARK + b"".join(map(integer, strides)) + TUPLE, NEWFALSE,
                call(glob("collections", "OrderedDict")))


def dict_of(*pairs: tuple[str, bytes]) -> bytes:
    """A dict of the given values, keys as text (EMPTY_DICT, MARK, SETITEMS)."""
    return DICT_EMPTY + MARK + b"".join(text(key) + value for key, value in pairs) + SETITEMS


def weights_beside(payload: bytes, key: str = "0", shape: tuple[int, int] = (64, 32)) -> bytes:
    """The data.pkl of ``{"weight": <tensor on storage key>, "evil": payload}``."""
    return PROTO2 + dict_of(("weight", tensor(key, shape)), ("evil", payload)) + STOP


def write_torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes],
                    compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", b"3\n")
    return path


def float_bytes(values: torch.Tensor) -> bytes:
    return values.contiguous().numpy().tobytes()
