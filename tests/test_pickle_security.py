"""Untrusted pickles never run: every opcode path a payload can take, pickle bombs, and a seeded fuzz.

Each payload would create a marker file if anything called what the pickle names. It sits beside a
64x32 weight in the same file; the tests assert that the marker never appears and that the weight
is read with its exact bytes (through ``gate.sources.open_source``, the path ``weightgate scan``
takes: ``torch.load(weights_only=True)`` first, then gate/sources/pickled). Bombs end in a
``GateInputError`` (CLI exit 2) naming the limit they hit, with tracemalloc's peak under 64 MiB.

| payload (what a normal unpickler would run) | opcode path | outcome |
| --- | --- | --- |
| ``os.system`` from ``__reduce__`` | GLOBAL + REDUCE (protocol 2, torch.save) | weight read, payload inert |
| ``subprocess.Popen`` from ``__reduce__`` | STACK_GLOBAL + MEMOIZE + REDUCE (protocol 4) | weight read, payload inert |
| ``builtins.exec`` / ``builtins.eval`` from ``__reduce__`` | GLOBAL / STACK_GLOBAL + REDUCE | weight read, payload inert |
| a function pickled by value by cloudpickle (code object) from a by-value class's ``__reduce__`` | cloudpickle's _make_function, CodeType REDUCE | weight read, payload inert |
| ``__setstate__`` of a class pickled by value (cloudpickle) and of an importable class | NEWOBJ + BUILD | weight read, payload inert |
| ``__new__`` of an importable class | NEWOBJ_EX (protocol 4, ``__getnewargs_ex__``) | weight read, payload inert |
| ``os.system`` | INST (protocol 0), OBJ (protocol 1), hand-assembled | weight read, payload inert |
| ``os.system`` memoized, popped, fetched again and called | BINPUT, POP, BINGET, REDUCE | weight read, payload inert |
| an allowlisted rebuild function fetched from the memo with a payload as its storage | BINGET + REDUCE | weight read, payload inert |
| ``os.system`` as a storage type in a persistent id, and a persistent id called | BINPERSID + REDUCE | weight read, payload inert |
| ``os.system`` through the copyreg extension registry (registered while writing and reading) | EXT1, EXT2, EXT4 | weight read, payload inert |
| ``copyreg._reconstructor(Popen, Popen, [...])`` (runs ``Popen.__init__``) | GLOBAL copy_reg + REDUCE | weight read, payload inert |
| ``torch._tensor._rebuild_from_type_v2(os.system, ...)`` | REDUCE of an allowlisted function | weight read, payload inert |
| ``_rebuild_from_type_v2`` wrapping itself 990 deep | REDUCE of an allowlisted function | inert, not followed (no RecursionError) |
| ``getattr(__import__("os"), "system")(...)`` | three REDUCEs | weight read, payload inert |
| a malicious legacy torch file inside ``torch.storage._load_from_bytes`` (plain pickle) | nested pickle | weight read, payload inert |
| ``os.system`` inside a joblib object array next to an MLP's coefs_ | nested pickle in the joblib stream | coefs_ read, payload inert |

| bomb | outcome |
| --- | --- |
| 5000 lists nested by APPEND; 5000 tuples nested by MARK/TUPLE; 5000 calls of calls (REDUCE on the last result); 5000 persistent ids of persistent ids | GateInputError: nested more than 1000 deep |
| more MARKs or stack items than ``max_stack`` | GateInputError: stack limit |
| more opcodes than ``max_ops`` | GateInputError: opcode limit |
| billion laughs: 40 levels of lists each holding the previous twice (2^40 paths) | read in linear time: no weights, refused (UnsafePickleError) |
| billion laughs as a checkpoint dict beside a weight | weight read in linear time |
| billion-laughs tuple used as a dict key (hashing it would take 2^40 steps) | GateInputError: key too large to hash |
| BINBYTES8 declaring 2^60 bytes; BINUNICODE declaring 4 GiB | GateInputError: not a valid pickle stream (bytes missing) |
| a storage whose persistent id declares 10^12 elements, its record 8 KiB | GateInputError: declares more than its record holds |
| a tensor whose size needs more elements than its storage | GateInputError: addresses more elements than the storage holds |
| a stored zip record whose central directory claims more bytes than the file has | GateInputError: runs past the end of the file |
| a deflated record claiming 4 GiB from 8 KiB | GateInputError: impossible size |
| a tensor of 2^60 elements over one stored float (zero strides) | a skipped row ("broadcast view"), never expanded; the weight beside it read |
| a legacy file whose storage header claims 2^62 elements | GateInputError: runs past the end of the file |
| a joblib array of shape (10^9,) | GateInputError: bytes missing |
| a compressed joblib file inflating beyond ``max_record_bytes`` (100 MB of zeros in ~100 KB) | GateInputError: inflates beyond the limit, before the bytes are made |

Fuzz (seeded): 360 mutants (bit flips, truncations, opcode substitutions) of a torch archive's
data.pkl, of the archive's bytes, of a legacy torch file, of a joblib MLP and of a protocol-2 pickle
of it, each holding an os.system payload: every one ends in a layer table or a GateInputError (about a quarter tables),
the payload never runs, no other exception escapes.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import pickletools
import random
import subprocess
import sys
import tracemalloc
import types
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import joblib
import numpy as np
import pytest
import torch

import gate
from gate.errors import GateInputError
from gate.sources import open_source
from gate.sources.pickled.limits import PickleLimits
from gate.sources.pickled.objects import describe
from gate.sources.pickled.source import read_pickled

from pickle_craft import (
    BINPERSID,
    BUILD,
    MARK,
    POP,
    PROTO2,
    STOP,
    TUPLE,
    call,
    dict_of,
    float_bytes,
    glob,
    integer,
    stack_glob,
    tensor,
    text,
    weights_beside,
    write_torch_zip,
)

WEIGHT = torch.randn(64, 32, generator=torch.Generator().manual_seed(7))


class ReducesTo:
    """Unpickles as ``fn(*args)``: the classic payload."""

    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class WritesOnSetstate:
    """An importable class whose ``__setstate__`` (run by BUILD) writes the file named in its state."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __setstate__(self, state: dict) -> None:
        Path(state["path"]).write_text("pwned")


class WritesOnNew:
    """An importable class whose ``__new__`` (run by NEWOBJ_EX) writes the file it is given."""

    def __new__(cls, path: str | None = None):
        if path is not None:
            Path(path).write_text("pwned")
        return super().__new__(cls)

    def __init__(self, path: str | None = None) -> None:
        self.target = path

    def __getnewargs_ex__(self):
        return (), {"path": self.target}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def data_pkl_ops(path: Path) -> set[str]:
    """The opcode names of an archive's data.pkl (to show that a payload takes the path it names)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return {opcode.name for opcode, _, _ in pickletools.genops(data)}


def assert_weight_read_inert(path: Path, marker: Path, name: str = "weight", expected: torch.Tensor = WEIGHT) -> None:
    with open_source(path) as source:
        assert name in {info.name for info in source.tensor_infos()}
        assert torch.equal(source.load(name), expected)
    assert not marker.exists()


def saved(path: Path, payload: object, **save_options) -> Path:
    torch.save({"weight": WEIGHT, "evil": payload}, path, **save_options)
    return path


@pytest.mark.parametrize("fn, protocol, opcode", [
    (os.system, 2, "GLOBAL"), (subprocess.Popen, 4, "STACK_GLOBAL"), (exec, 2, "GLOBAL"), (eval, 4, "STACK_GLOBAL"),
])
def test_reduce_payloads_stay_inert(tmp_path, marker, fn, protocol, opcode):
    command = {os.system: f"touch {marker}", subprocess.Popen: ["touch", str(marker)],
               exec: f"open({str(marker)!r}, 'w').close()", eval: f"open({str(marker)!r}, 'w').close()"}[fn]
    path = saved(tmp_path / "evil.pt", ReducesTo(fn, (command,)), pickle_protocol=protocol)
    assert {opcode, "REDUCE"} <= data_pkl_ops(path)
    assert_weight_read_inert(path, marker)


def test_cloudpickle_by_value_class_and_function_stay_inert(tmp_path, marker):
    module = types.ModuleType("throwaway_payloads")
    exec("import pathlib\n"
         "def write(path):\n    pathlib.Path(path).write_text('pwned')\n"
         "class Evil:\n    def __init__(self, path):\n        self.path = path\n"
         "    def __reduce__(self):\n        return write, (self.path,)\n"
         "class Stateful:\n    def __init__(self, path):\n        self.path = path\n"
         "    def __setstate__(self, state):\n        write(state['path'])\n", module.__dict__)
    sys.modules[module.__name__] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        for payload, opcode in ((module.Evil(str(marker)), "REDUCE"), (module.Stateful(str(marker)), "BUILD")):
            path = saved(tmp_path / "by_value.pt", payload, pickle_module=cloudpickle)
            assert opcode in data_pkl_ops(path)
            assert_weight_read_inert(path, marker)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[module.__name__]


def test_setstate_and_newobj_ex_of_importable_classes_stay_inert(tmp_path, marker):
    path = saved(tmp_path / "setstate.pt", WritesOnSetstate(str(marker)))
    assert {"NEWOBJ", "BUILD"} <= data_pkl_ops(path)
    assert_weight_read_inert(path, marker)
    payload = WritesOnNew()
    payload.target = str(marker)  # set after construction: made here, __new__ writes nothing
    path = saved(tmp_path / "newobj_ex.pt", payload, pickle_protocol=4)
    assert "NEWOBJ_EX" in data_pkl_ops(path)
    assert_weight_read_inert(path, marker)


def crafted_payloads(marker: Path) -> dict[str, bytes]:
    """Payload opcodes spelled out (pickle.dumps never writes INST/OBJ, nor these hostile shapes)."""
    cmd = text(f"touch {marker}")
    os_system = glob("os", "system")
    return {
        "INST": MARK + cmd + b"i" + b"os\nsystem\n",
        "OBJ": MARK + os_system + cmd + b"o",
        "STACK_GLOBAL eval": call(stack_glob("builtins", "eval"), text(f"open({str(marker)!r}, 'w').close()")),
        "GLOBAL exec": call(glob("builtins", "exec"), text(f"open({str(marker)!r}, 'w').close()")),
        "memo: callable stored, popped, fetched, called": os_system + b"q\xc8" + POP + b"h\xc8" + MARK + cmd + TUPLE
        + b"R",
        "memo: allowlisted rebuild with a payload storage": glob("torch._utils", "_rebuild_tensor_v2") + b"q\xc9" + POP
        + b"h\xc9" + MARK + call(os_system, cmd) + integer(0) + MARK + integer(4) + TUPLE + MARK + integer(1) + TUPLE
        + b"\x89" + call(glob("collections", "OrderedDict")) + TUPLE + b"R",
        "persistent id with os.system as storage type": MARK + text("storage") + os_system + text("9") + text("cpu")
        + integer(4) + TUPLE + BINPERSID,
        "persistent id called": os_system + BINPERSID + MARK + cmd + TUPLE + b"R",
        "copyreg._reconstructor(Popen, Popen, argv)": call(
            glob("copy_reg", "_reconstructor"), glob("subprocess", "Popen"), glob("subprocess", "Popen"),
            b"]" + MARK + text("touch") + text(str(marker)) + b"e"),
        "_rebuild_from_type_v2(os.system, ...)": call(glob("torch._tensor", "_rebuild_from_type_v2"), os_system,
                                                      glob("torch", "Tensor"), MARK + cmd + TUPLE, b"}"),
        "getattr(__import__('os'), 'system')(...)": call(call(glob("builtins", "getattr"),
                                                              call(glob("builtins", "__import__"), text("os")),
                                                              text("system")), cmd),
        "BUILD with a __setstate__ key on an OrderedDict": call(glob("collections", "OrderedDict"))
        + dict_of(("__setstate__", os_system)) + BUILD,
    }


def test_crafted_opcode_paths_stay_inert(tmp_path, marker):
    for name, payload in crafted_payloads(marker).items():
        path = write_torch_zip(tmp_path / "crafted.pt", weights_beside(payload), {"0": float_bytes(WEIGHT)})
        try:
            assert_weight_read_inert(path, marker)
        except AssertionError as err:
            raise AssertionError(f"payload {name!r}: {err}") from err


@pytest.mark.parametrize("code, opcode", [(200, "EXT1"), (40_000, "EXT2"), (2**20, "EXT4")])
def test_extension_registry_codes_stay_inert(tmp_path, marker, code, opcode):
    """The extension is registered while writing and while reading: the reader still never looks it up."""
    copyreg.add_extension(os.system.__module__, "system", code)  # "posix" on Linux
    try:
        payload = pickle.dumps(ReducesTo(os.system, (f"touch {marker}",)), protocol=2)[2:-1]
        assert opcode in {op.name for op, _, _ in pickletools.genops(PROTO2 + payload + STOP)}
        path = write_torch_zip(tmp_path / "ext.pt", weights_beside(payload), {"0": float_bytes(WEIGHT)})
        assert_weight_read_inert(path, marker)
    finally:
        copyreg.remove_extension(os.system.__module__, "system", code)


def _legacy_file(main_pickle: bytes) -> bytes:
    """A legacy torch file around ``main_pickle`` with no storages (magic, protocol, sys info, keys)."""
    header = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    return header + main_pickle + pickle.dumps([], protocol=2)


def test_malicious_storage_bytes_in_a_plain_pickle_stay_inert(tmp_path, marker):
    evil_legacy = _legacy_file(PROTO2 + call(glob("os", "system"), text(f"touch {marker}")) + STOP)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weight": WEIGHT, "evil": ReducesTo(torch.storage._load_from_bytes, (evil_legacy,))},
                                  protocol=2))
    assert_weight_read_inert(path, marker)


def test_joblib_object_array_payload_stays_inert(tmp_path, marker):
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    mlp.fit(rng.normal(size=(40, 8)), rng.normal(size=40))
    mlp.evil = np.array([ReducesTo(os.system, (f"touch {marker}",))], dtype=object)
    joblib.dump(mlp, tmp_path / "mlp.joblib")
    assert_weight_read_inert(tmp_path / "mlp.joblib", marker, "coefs_.0", torch.from_numpy(mlp.coefs_[0]))


def test_cli_reads_the_weight_beside_a_payload(tmp_path, marker):
    path = saved(tmp_path / "evil.pt", ReducesTo(os.system, (f"touch {marker}",)))
    proc = subprocess.run([sys.executable, "-m", "gate", "scan", str(path), "--format", "csv"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split(",")[1] == "weight"
    assert not marker.exists()


# Payloads that a plain pickle.loads does run (the others abuse torch's persistent ids or are harmless
# there): the control below shows each is live, so that the tests above could fail.
LIVE_UNDER_PICKLE = ("INST", "OBJ", "STACK_GLOBAL eval", "GLOBAL exec",
                     "memo: callable stored, popped, fetched, called",
                     "memo: allowlisted rebuild with a payload storage", "copyreg._reconstructor(Popen, Popen, argv)",
                     "_rebuild_from_type_v2(os.system, ...)", "getattr(__import__('os'), 'system')(...)")


@pytest.mark.parametrize("name", LIVE_UNDER_PICKLE)
def test_control_crafted_payloads_run_under_plain_pickle(tmp_path, marker, name):
    path = tmp_path / "payload.pkl"
    path.write_bytes(PROTO2 + crafted_payloads(marker)[name] + STOP)
    # The parent then waits for any child the payload started (Popen's touch), so the marker is there when it exits.
    script = ("import os, pickle, sys\npickle.loads(open(sys.argv[1], 'rb').read())\n"
              "while True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        break\n")
    subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, timeout=120)
    assert marker.exists()


# --- bombs ---------------------------------------------------------------------------------------------------

def refused_within_bounds(path: Path, fragment: str, limits: PickleLimits = PickleLimits()) -> None:
    """``read_pickled`` ends in a GateInputError mentioning ``fragment``, with Python's peak allocation < 64 MiB."""
    tracemalloc.start()
    try:
        with pytest.raises(GateInputError, match=fragment):
            read_pickled(path, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak} bytes"


def laughs(levels: int, level: Callable[[bytes], bytes], keep: str = "all") -> bytes:
    """Level k holds level k-1 twice by memo reference: 2^levels paths through a few hundred bytes.
    ``level(previous)`` spells one level from the memo GET of the previous one; ``keep="all"`` leaves a
    tuple of every level (the deepest last), ``keep="top"`` only the deepest."""
    ops = MARK + text("lol") + b"q\x00"
    for k in range(1, levels + 1):
        ops += level(b"h" + bytes([k - 1])) + b"q" + bytes([k])
    return ops + (TUPLE if keep == "all" else b"1" + b"h" + bytes([levels]))


def tuple_level(previous: bytes) -> bytes:
    return previous + previous + b"\x86"  # TUPLE2


def list_level(previous: bytes) -> bytes:
    return b"]" + MARK + previous + previous + b"e"  # EMPTY_LIST, APPENDS


def dict_level(previous: bytes) -> bytes:
    return dict_of(("a", previous), ("b", previous))


@pytest.mark.parametrize("name, stream, fragment", [
    ("lists nested by APPEND", b"]" * 5000 + b"a" * 4999, "nested more than 1000 deep"),
    ("tuples nested by MARK/TUPLE", MARK * 5000 + TUPLE * 5000, "nested more than 1000 deep"),
    ("calls of calls of os.system", glob("os", "system") + b")R" * 5000, "nested more than 1000 deep"),
    ("persistent ids of persistent ids", b"N" + BINPERSID * 5000, "nested more than 1000 deep"),
    ("BINBYTES8 declaring 2^60 bytes", b"\x8e" + (2**60).to_bytes(8, "little") + b"abc", "not a valid pickle stream"),
    ("BINUNICODE declaring 4 GiB", b"X" + (2**32 - 1).to_bytes(4, "little") + b"abc", "not a valid pickle stream"),
    ("tuple laughs as a dict key", b"}" + laughs(40, tuple_level) + integer(1) + b"s", "more than 10000 parts"),
    ("tuple laughs in a frozenset", MARK + laughs(40, tuple_level) + b"\x91", "more than 10000 parts"),
])
def test_stream_bombs_are_refused_within_bounds(tmp_path, name, stream, fragment):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(PROTO2 + stream + STOP)
    refused_within_bounds(path, fragment)


@pytest.mark.parametrize("stream, limits, fragment", [
    (MARK * 20_000, PickleLimits(max_stack=10_000), "open MARKs"),
    (b"N" * 20_000, PickleLimits(max_stack=10_000), "items on the pickle stack"),
    ((b"N" + POP) * 60_000, PickleLimits(max_ops=100_000), "pickle opcodes"),
])
def test_work_limits_are_enforced(tmp_path, stream, limits, fragment):
    """The same bounds at their defaults (10M opcodes, 1M stack items) take seconds to reach; here smaller."""
    path = tmp_path / "bomb.pkl"
    path.write_bytes(PROTO2 + stream + STOP)
    refused_within_bounds(path, fragment, limits)


def test_rebuild_from_type_chain_is_not_followed(tmp_path):
    """_rebuild_from_type_v2 wrapping _rebuild_from_type_v2, 990 deep (within the nesting limit): calling
    each in turn would recurse ~2000 Python frames (RecursionError); only a tensor rebuild function is
    followed."""
    wrapper, inner = glob("torch._tensor", "_rebuild_from_type_v2"), weights_beside(b"N")[2:-1]
    for _ in range(990):
        inner = MARK + wrapper + glob("torch", "Tensor") + inner + b"}" + TUPLE
    path = write_torch_zip(tmp_path / "chain.pt", PROTO2 + wrapper + inner + b"R" + STOP, {"0": float_bytes(WEIGHT)})
    content, found = read_pickled(path)
    assert found == [] and "torch._tensor._rebuild_from_type_v2" in describe(content.root)


def test_billion_laughs_graphs_are_walked_in_linear_time(tmp_path):
    lists = tmp_path / "lists.pkl"
    lists.write_bytes(PROTO2 + laughs(40, list_level) + STOP)
    with pytest.raises(GateInputError, match="tuple has no weight matrices"):
        open_source(lists)  # searched for estimators through 2^40 paths, each object once
    checkpoint = PROTO2 + dict_of(("weight", tensor("0", (64, 32))), ("laughs", laughs(40, dict_level, "top"))) + STOP
    path = write_torch_zip(tmp_path / "laughs.pt", checkpoint, {"0": float_bytes(WEIGHT)})
    assert_weight_read_inert(path, tmp_path / "never")


def _patch_central_size(path: Path, record: str, size: int) -> None:
    """Make the zip's central directory claim ``size`` uncompressed bytes for ``record`` (the local header
    keeps the true size): a lie the reader must catch before it maps or inflates anything."""
    data = bytearray(path.read_bytes())
    name = record.encode()
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))  # the central directory entry of that record
    assert data[at + 46: at + 46 + len(name)] == name
    data[at + 24: at + 28] = size.to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(data))


def test_declared_sizes_are_checked_against_the_bytes_there(tmp_path):
    weight = float_bytes(WEIGHT)
    huge_numel = write_torch_zip(tmp_path / "numel.pt", PROTO2 + dict_of(("w", tensor("0", (64, 32), 10**12))) + STOP,
                                 {"0": weight})
    refused_within_bounds(huge_numel, "declares 4000000000000 bytes but its record holds 8192")
    too_big = write_torch_zip(tmp_path / "size.pt", PROTO2 + dict_of(("w", tensor("0", (640, 32), 64 * 32))) + STOP,
                              {"0": weight})
    refused_within_bounds(too_big, "addresses 20480 elements")
    past_end = write_torch_zip(tmp_path / "past.pt", weights_beside(b"N"), {"0": weight})
    _patch_central_size(past_end, "archive/data/0", 2**31)
    refused_within_bounds(past_end, "runs past the end of the file")
    inflated = write_torch_zip(tmp_path / "deflate.pt", weights_beside(b"N"), {"0": weight}, zipfile.ZIP_DEFLATED)
    _patch_central_size(inflated, "archive/data/0", 2**32 - 1)
    refused_within_bounds(inflated, "claims 4294967295 bytes")
    huge_view = tensor("1", (2**30, 2**30), 1, strides=(0, 0))  # 2^60 elements over one stored float
    broadcast = write_torch_zip(tmp_path / "broadcast.pt", weights_beside(huge_view), {"0": weight, "1": bytes(4)})
    layers = gate.scan(broadcast, device="cpu").layers.set_index("name")
    assert layers.loc["evil", "status"] == "skipped" and "broadcast view" in layers.loc["evil", "reason"]
    assert layers.loc["weight", "status"] == "ok"


def test_compressed_joblib_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = tmp_path / "bomb.joblib"  # 100 MB of zeros in about 100 KB of zlib
    bomb.write_bytes(zlib.compress(PROTO2 + b"\x8e" + (100 << 20).to_bytes(8, "little") + bytes(100 << 20) + STOP, 9))
    refused_within_bounds(bomb, "inflates to more than 16777216 bytes", PickleLimits(max_record_bytes=16 << 20))


def test_legacy_and_joblib_sizes_are_checked(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"weight": WEIGHT}, legacy, _use_new_zipfile_serialization=False)
    data = bytearray(legacy.read_bytes())
    header = len(data) - 64 * 32 * 4 - 8  # the one storage: an int64 element count, then its bytes
    assert int.from_bytes(data[header:header + 8], "little") == 64 * 32
    data[header:header + 8] = (2**62).to_bytes(8, "little")
    legacy.write_bytes(bytes(data))
    refused_within_bounds(legacy, "runs past the end of the file")
    wrapped = tmp_path / "array.joblib"
    joblib.dump({"w": np.zeros(1000)}, wrapped)
    data = wrapped.read_bytes()
    assert data.count(b"\x8d\xe8\x03\x00\x00\x00\x00\x00\x00") == 0 and data.count(b"M\xe8\x03") == 1  # shape (1000,)
    wrapped.write_bytes(data.replace(b"M\xe8\x03", b"J\x00\xca\x9a\x3b"))  # shape (10^9,)
    refused_within_bounds(wrapped, "needs 8000000000 bytes")


# --- fuzz ----------------------------------------------------------------------------------------------------

class SmallCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8 * 6 * 6, 24)


def _mutations(data: bytes, region: tuple[int, int], rng: random.Random, count: int):
    """``count`` mutants of ``data`` changed inside ``region``: bit flips, a truncation, an opcode swapped."""
    start, end = region
    opcode_offsets = _opcode_offsets(data[start:end])
    codes = [op.code.encode("latin-1") for op in pickletools.opcodes]
    for case in range(count):
        mutant = bytearray(data)
        kind = ("flip", "truncate", "opcode")[case % 3]
        if kind == "flip":
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(start, end)
                mutant[at] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del mutant[rng.randrange(start, end):]
        else:
            at = rng.choice(opcode_offsets) if opcode_offsets else rng.randrange(start, end)
            mutant[at:at + 1] = rng.choice(codes)
        yield kind, bytes(mutant)


def _opcode_offsets(data: bytes) -> list[int]:
    """Where the opcodes of the pickles at the start of ``data`` are (several in a row, as in a legacy
    torch file), up to the first bytes that are no pickle (a joblib array, legacy storages)."""
    offsets: list[int] = []
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):
            offsets.extend(pos for _, _, pos in pickletools.genops(stream))
    except ValueError:
        pass  # raw array or storage bytes: not opcodes
    return offsets


def _rezip(original: Path, data_pkl: bytes, target: Path) -> Path:
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(target, "w") as archive:
        for info in source.infolist():
            archive.writestr(info.filename, data_pkl if info.filename.endswith("data.pkl") else source.read(info))
    return target


@pytest.mark.slow
def test_fuzzed_model_pickles_end_in_a_table_or_a_clear_error(tmp_path, marker):
    """360 seeded mutants of real model pickles (a torch zip archive's data.pkl, the archive's bytes
    themselves, a legacy torch file, a joblib MLP, a protocol-2 pickle of the MLP, each with an
    os.system payload beside the weights): each scan ends in a layer table or a GateInputError, the
    payload never runs, and no other exception escapes."""
    from sklearn.neural_network import MLPRegressor

    torch.manual_seed(0)
    payload, model = ReducesTo(os.system, (f"touch {marker}",)), SmallCnn()
    zipped, legacy, joblib_file = tmp_path / "model.pt", tmp_path / "legacy.pt", tmp_path / "mlp.joblib"
    torch.save({"model": model, "evil": payload}, zipped)
    torch.save({"model": model, "evil": payload}, legacy, _use_new_zipfile_serialization=False)
    rng_np = np.random.default_rng(0)
    mlp = MLPRegressor(hidden_layer_sizes=(32,), max_iter=3, random_state=0).fit(rng_np.normal(size=(50, 16)),
                                                                                 rng_np.normal(size=50))
    mlp.evil = payload
    joblib.dump(mlp, joblib_file)
    with zipfile.ZipFile(zipped) as archive:
        data_pkl = archive.read("model/data.pkl")
    legacy_bytes = legacy.read_bytes()
    # the pickles come first, then each storage as an int64 count and its float32 bytes
    legacy_pickles = len(legacy_bytes) - sum(8 + 4 * t.numel() for t in model.state_dict().values())
    mlp_protocol_2 = pickle.dumps(mlp, protocol=2)  # arrays through numpy's _reconstruct and _codecs.encode
    bases = {"zip": (zipped, data_pkl), "zip file": (zipped, zipped.read_bytes()),
             "legacy": (legacy, legacy_bytes), "joblib": (joblib_file, joblib_file.read_bytes()),
             "pickle protocol 2": (tmp_path / "m.pkl", mlp_protocol_2)}
    regions = {"legacy": (0, legacy_pickles)}
    rng = random.Random(20240525)
    cases = []
    for base, (original, data) in bases.items():
        for i, (kind, mutant) in enumerate(_mutations(data, regions.get(base, (0, len(data))), rng, 72)):
            path = tmp_path / f"{base.replace(' ', '_')}{i}{original.suffix}"
            if base == "zip":
                _rezip(original, mutant, path)
            else:
                path.write_bytes(mutant)
            cases.append((base, path, kind))
    outcomes: dict[tuple[str, str], int] = {}
    for base, path, kind in cases:
        try:
            gate.scan(path, device="cpu")
            outcome = "table"
        except GateInputError:
            outcome = "GateInputError"
        outcomes[(base, outcome)] = outcomes.get((base, outcome), 0) + 1
        assert not marker.exists(), f"{base} mutant {path.name} ({kind}) ran the payload"
    assert sum(outcomes.values()) == 360
    for base in bases:  # both outcomes occur for each base: the fuzz reaches both paths
        assert outcomes.get((base, "table")) and outcomes.get((base, "GateInputError")), outcomes
