"""Exceptions that carry a message meant for the person running weightgate.

The CLI maps every :class:`GateInputError` to exit status 2 and prints only its message, so each
message must name the offending thing (file, option, layer) and say what to do about it.
"""

from __future__ import annotations


class GateInputError(Exception):
    """Input that weightgate cannot use: missing/corrupt/unknown file, bad option, unsafe pickle."""


class InvalidOptionError(GateInputError):
    """An option's value is not one its declaration allows (gate.options), or no such option exists."""


class UnsafePickleError(GateInputError):
    """A pickle weightgate does not load: a file in which its safe reader finds no weights
    (gate/sources/torch_files.py), or a tensor a .pt2 archive stores pickled (gate/sources/pt2_archive.py).
    Only a full load could read it, and that could run code from the file on this machine."""
