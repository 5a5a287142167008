"""Bounds on the work one pickled file may ask of the safe reader (opcodes, nesting, stack size).

A pickle is a program for a stack machine: without bounds a small file could ask for unbounded time
or memory (a billion-laughs memo, nesting a million lists deep). Streams beyond a bound are refused
with a :class:`~gate.sources.pickled.constructors.BadPickle`, never read partly. Sizes of declared
data (BINBYTES, strings, storages) need no bound of their own: each is checked against the bytes
actually in the file (see gate/sources/pickled/torch_archive.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from gate.sources.pickled.constructors import BadPickle


@dataclass(frozen=True)
class PickleLimits:
    """Bounds on the work one file may ask for; a stream beyond any of them is refused, not read.

    ``max_ops``: opcodes over all the pickles of one file (each pushes at most one object, so this
    also bounds memory); ``max_depth``: containers nested in containers (counted as they are filled);
    ``max_stack``: items on the stack and open MARKs at any time; ``max_record_bytes``: a pickle read
    into memory from a zip record (``data.pkl``) or a compressed joblib file (compressed data can
    claim any size).
    """

    max_ops: int = 10_000_000
    max_depth: int = 1_000
    max_stack: int = 1_000_000
    max_record_bytes: int = 1 << 30


class OpBudget:
    """Opcodes left for one file, shared by the several pickles of a torch archive or a joblib file;
    and the globals the file named that were left inert (for messages: what the file wanted to create)."""

    def __init__(self, limits: PickleLimits) -> None:
        self.limits = limits
        self.left = limits.max_ops
        self.inert_globals: dict[str, None] = {}  # qualified names, in order of first appearance

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise BadPickle(f"more than {self.limits.max_ops} pickle opcodes (limit)")
