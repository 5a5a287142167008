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
    """The file needs arbitrary pickled Python objects to load, which could run code on this machine."""
