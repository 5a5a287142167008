"""Where a pickle's tensors live: torch zip archives (torch.save since 1.6, torch.jit.save) and the
legacy stream format (``_use_new_zipfile_serialization=False``), read without ``torch.load``.

The object graph comes from :class:`~gate.sources.pickled.unpickler.SafeUnpickler`; each storage a
persistent id names becomes a :class:`~gate.sources.pickled.objects.StorageRef` checked against the
bytes really there (its zip record, or its place after the legacy pickle). Tensor data stays on disk:
the file is memory-mapped on first use, as ``torch.load(mmap=True)`` does, and a tensor is a view.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gate.errors import GateInputError
from gate.sources.pickled.constructors import Allowed, BadPickle, StorageType
from gate.sources.pickled.limits import OpBudget, PickleLimits
from gate.sources.pickled.objects import PersistentRef, StorageRef
from gate.sources.pickled.unpickler import SafeUnpickler

# torch/serialization.py: the first three pickles of a legacy file.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # zip local file header: signature ... name length, extra length
_MAGIC_OPS = 8  # PROTO, FRAME, LONG1, STOP: the opcodes of a legacy file's first pickle
# What reading a zip record can raise besides OSError: a bad CRC or header, a name that is not UTF-8
# (ValueError), corrupt deflate data, an unknown compression method, an encrypted record (RuntimeError).
_ZIP_READ_ERRORS = (zipfile.BadZipFile, ValueError, zlib.error, EOFError, NotImplementedError, RuntimeError)
_MAX_KEY = 256  # a storage key (torch writes a decimal number); longer is malformed, and kept out of messages
_MAX_DEFLATE_RATIO = 1100  # deflate expands at most ~1032:1; a record claiming more lies about its size


class FileBlob:
    """A file's bytes, memory-mapped (copy-on-write, never written) when a tensor is first loaded."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._storage: torch.UntypedStorage | None = None

    def untyped(self, offset: int, nbytes: int) -> torch.UntypedStorage:
        if self._storage is None:
            self._storage = torch.UntypedStorage.from_file(str(self.path), False, self.size)
        return self._storage[offset:offset + nbytes]


class BytesBlob:
    """Bytes already in memory: a storage pickled inside a plain pickle, or a compressed zip record."""

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self._data = data

    def untyped(self, offset: int, nbytes: int) -> torch.UntypedStorage:
        if nbytes == 0:
            return torch.UntypedStorage(0)
        chunk = bytearray(self._data[offset:offset + nbytes])
        return torch.frombuffer(chunk, dtype=torch.uint8).untyped_storage()


class ZipRecordBlob:
    """A compressed zip record (torch writes them stored; other zip tools may not): inflated when loaded,
    never beyond the bytes its storage declared."""

    def __init__(self, archive_path: Path, info: zipfile.ZipInfo) -> None:
        self._path = archive_path
        self._info = info

    def untyped(self, offset: int, nbytes: int) -> torch.UntypedStorage:
        try:
            with zipfile.ZipFile(self._path) as archive, archive.open(self._info) as record:
                data = record.read(offset + nbytes)
        except (*_ZIP_READ_ERRORS, OSError) as err:
            raise GateInputError(f"{self._path}: record {self._info.filename} cannot be read: {err}") from None
        if len(data) < offset + nbytes:
            raise GateInputError(f"{self._path}: record {self._info.filename} is shorter than its storage (truncated?)")
        return BytesBlob(data).untyped(offset, nbytes)


@dataclass
class PickledFile:
    """What a pickled file holds, all inert: the root object, and for TorchScript its code's source files."""

    kind: str  # "torch", "torchscript", "torch-legacy" or "pickle"
    root: object
    script_code: dict[str, bytes] = field(default_factory=dict)  # code/ path -> source (TorchScript only)
    inert_globals: list[str] = field(default_factory=list)  # what the file named and nothing imported


def storage_pid(pid: object) -> tuple[torch.dtype, str, int] | None:
    """(dtype, key, numel) of a ``('storage', StorageType, key, location, numel[, view])`` id; ``None``
    when the id names something else, e.g. a storage type that is no torch storage (kept inert);
    malformed storage ids are refused."""
    if type(pid) is not tuple or not pid or pid[0] not in ("storage", b"storage"):
        return None
    if len(pid) not in (5, 6):
        raise BadPickle("a storage persistent id has the wrong number of fields")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if len(pid) == 6 and pid[5] is not None:
        raise BadPickle("storage views (files written by torch < 0.4) are not read")
    if not isinstance(storage_type, StorageType):
        return None
    if not isinstance(key, str) or len(key) > _MAX_KEY or type(numel) is not int or not 0 <= numel < 2**62:
        raise BadPickle("a storage persistent id has a malformed key or size")
    return storage_type.dtype, key, numel


def read_torch_zip(path: Path, budget: OpBudget) -> PickledFile:
    """``data.pkl`` of a torch zip archive, its storages checked against their ``data/`` records."""
    size = path.stat().st_size
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_READ_ERRORS as err:
        raise BadPickle(f"a corrupt zip archive: {err}") from None
    with path.open("rb") as raw, archive:
        records = {info.filename: info for info in archive.infolist()}
        pickles = sorted((name for name in records if name.rsplit("/", 1)[-1] == "data.pkl"), key=len)
        if not pickles:
            raise BadPickle("a zip archive without data.pkl: not a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        if archive_read(archive, records.get(prefix + "byteorder"), 16) == b"big":
            raise BadPickle("the archive was written on a big-endian machine; weightgate reads little-endian archives")
        blob = FileBlob(path, size)
        refs: dict[str, StorageRef] = {}

        def persistent_load(pid: object) -> object:
            parsed = storage_pid(pid)
            if parsed is None:
                return PersistentRef(pid)
            dtype, key, numel = parsed
            if key not in refs:
                refs[key] = _record_storage(raw, records, f"{prefix}data/{key}", blob, key)
            ref = refs[key]
            if numel * dtype.itemsize > ref.nbytes:
                raise BadPickle(f"storage {key!r} declares {numel * dtype.itemsize} bytes but its record "
                                f"holds {ref.nbytes}")
            return StorageRef(ref.blob, ref.offset, numel * dtype.itemsize, dtype, key)

        data = archive_read(archive, records[pickles[0]], budget.limits.max_record_bytes)
        root = SafeUnpickler(io.BytesIO(data), budget, persistent_load=persistent_load).load()
        if prefix + "constants.pkl" not in records:
            return PickledFile("torch", root)
        code = {name[len(prefix) + len("code/"):]: archive_read(archive, info, budget.limits.max_record_bytes)
                for name, info in records.items() if name.startswith(prefix + "code/") and name.endswith(".py")}
        return PickledFile("torchscript", root, code)


def archive_read(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None, limit: int) -> bytes:
    """A small record's bytes, never more than ``limit`` (a compressed record can claim any size)."""
    if info is None:
        return b""
    try:
        with archive.open(info) as record:
            data = record.read(limit + 1)
    except _ZIP_READ_ERRORS as err:
        raise BadPickle(f"record {info.filename} cannot be read: {err}") from None
    if len(data) > limit:
        raise BadPickle(f"record {info.filename} is larger than {limit} bytes")
    return data


def _record_storage(raw: io.BufferedReader, records: dict[str, zipfile.ZipInfo], name: str, blob: FileBlob,
                    key: str) -> StorageRef:
    """Where a storage's record lies in the file (stored records), or how to inflate it (deflated ones)."""
    info = records.get(name)
    if info is None:
        raise BadPickle(f"the pickle names storage {key!r} but the archive has no record {name}")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise BadPickle(f"record {name} claims {info.file_size} bytes from {info.compress_size} compressed")
        return StorageRef(ZipRecordBlob(blob.path, info), 0, info.file_size, torch.uint8, key)
    if info.compress_type != zipfile.ZIP_STORED:
        raise BadPickle(f"record {name} uses zip compression method {info.compress_type}; torch stores records")
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise BadPickle(f"record {name} has a corrupt zip header")
    _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if offset + info.file_size > blob.size:
        raise BadPickle(f"record {name} runs past the end of the file (truncated?)")
    return StorageRef(blob, offset, info.file_size, torch.uint8, key)


def read_torch_legacy(stream: io.BufferedIOBase, blob: FileBlob | BytesBlob, budget: OpBudget,
                      extra: dict[str, Allowed] | None = None) -> PickledFile | None:
    """A legacy torch file (magic number, protocol, system info, the object, storage keys, raw storages);
    ``None`` when the first pickle is not torch's magic number (a plain pickle)."""
    try:  # the magic number is a pickle of a few opcodes: a plain pickle is not read twice to find out
        magic = SafeUnpickler(stream, OpBudget(PickleLimits(max_ops=_MAGIC_OPS))).load()
    except BadPickle:
        return None
    if magic != LEGACY_MAGIC:
        return None
    if SafeUnpickler(stream, budget).load() != LEGACY_PROTOCOL:
        raise BadPickle("a legacy torch file with an unknown protocol version")
    sys_info = SafeUnpickler(stream, budget).load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise BadPickle("the file was written on a big-endian machine; weightgate reads little-endian files")
    refs: dict[str, list[StorageRef]] = {}

    def persistent_load(pid: object) -> object:
        if type(pid) is tuple and pid and pid[0] in ("module", b"module") and len(pid) > 1:
            return pid[1]  # ("module", cls, source file, source): the class of a pickled module
        parsed = storage_pid(pid)
        if parsed is None:
            return PersistentRef(pid)
        dtype, key, numel = parsed
        ref = StorageRef(blob, -1, numel * dtype.itemsize, dtype, key)  # offset known once the keys are read
        refs.setdefault(key, []).append(ref)
        return ref

    root = SafeUnpickler(stream, budget, persistent_load=persistent_load, extra=extra).load()
    keys = SafeUnpickler(stream, budget).load()
    if type(keys) is not list or not all(isinstance(k, str) and len(k) <= _MAX_KEY for k in keys):
        raise BadPickle("a legacy torch file whose storage key list is malformed")
    position = stream.tell()
    for key in keys:
        if key not in refs:
            raise BadPickle(f"storage {key!r} is listed but no tensor uses it")
        header = blob_bytes(stream, position, 8)
        (numel,) = struct.unpack("<q", header)
        element = refs[key][0].dtype.itemsize
        if numel < 0 or position + 8 + numel * element > blob.size:
            raise BadPickle(f"storage {key!r} runs past the end of the file (truncated?)")
        for ref in refs[key]:
            if ref.nbytes > numel * element:
                raise BadPickle(f"storage {key!r} declares {ref.nbytes} bytes but the file holds {numel * element}")
            ref.offset = position + 8
        position += 8 + numel * element
    missing = sorted(key for key, found in refs.items() if found[0].offset < 0)
    if missing:
        raise BadPickle(f"storages {missing[:3]} are used but not in the file")
    return PickledFile("torch-legacy", root)


def blob_bytes(stream: io.BufferedIOBase, position: int, count: int) -> bytes:
    stream.seek(position)
    data = stream.read(count)
    if len(data) != count:
        raise BadPickle("the file ends inside a storage header (truncated?)")
    return data
