"""Scan options, each declared once: its type, what it allows, its default and its help text.

After scikit-learn's ``sklearn/utils/_param_validation.py``: every option carries a constraint
object that says whether a value is allowed (``is_satisfied_by``) and, as text, what is
(``str``); one check raises one error type, :class:`gate.errors.InvalidOptionError`, whose message
names the option, the value given and what is allowed. Everything that takes scan options reads
this table: :class:`ScanOptions` checks itself whenever it is built (``gate.scan``, check, compare,
rank, the Ray executor, the training tracker), the CLI derives its click options from it
(gate/cli/app.py), the worker checks its device with it. :func:`resolve_device` is the one place
that turns a device name into the torch device a scan runs on.

This module imports neither torch nor any other part of gate but gate.errors: the CLI builds its
options from it at start-up (``weightgate --help`` loads no engine), and the solver takes its
option words (:class:`Precision`, :data:`STRATEGIES`) from here.
"""

from __future__ import annotations

import enum
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

from gate.errors import GateInputError, InvalidOptionError

if TYPE_CHECKING:
    import torch


class Precision(str, enum.Enum):
    """The ``precision`` option: the eigensolver's dtype (gate.solver.precision says how auto chooses)."""

    AUTO = "auto"
    FLOAT64 = "float64"
    FLOAT32 = "float32"

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        """The option from its name; a clear error names the allowed values."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"precision must be one of {[p.value for p in cls]}, not {value!r}") from None


STRATEGIES = ("pool", "batched")  # how the spectra are solved (gate.solver.spectrum)
CONV2D_METHODS = ("pooled", "per_slice")  # one ESD of all kernel positions, or one row per position


class Constraint(ABC):
    """What one option allows (sklearn's ``_Constraint``)."""

    @abstractmethod
    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` is allowed."""

    @abstractmethod
    def __str__(self) -> str:
        """What is allowed, in words that complete "must be ..."."""

    @abstractmethod
    def refused_example(self) -> Any:
        """A value this constraint refuses (sklearn's ``generate_invalid_param_val``): the tests
        give it to every option in the table, so a new option's message is tested too."""


@dataclass(frozen=True)
class Choices(Constraint):
    """One of a few words."""

    values: tuple[str, ...]

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(value) for value in self.values)

    def refused_example(self) -> Any:
        return "none-of-" + "-".join(self.values)


@dataclass(frozen=True)
class Interval(Constraint):
    """A whole number (``kind=int``) or any number (``kind=float``) between ``low`` and ``high``
    (``None``: unbounded), bounds included unless ``low_open``. Booleans are not numbers here,
    NaN is in no interval."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int else Real):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        noun = "a whole number" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{noun} <= {self.high}"
        return noun

    def refused_example(self) -> Any:
        if self.low is not None:
            return self.low - 1
        if self.high is not None:
            return self.high + 1
        return 0.5 if self.kind is int else "a string"


@dataclass(frozen=True)
class Boolean(Constraint):
    """True or False (not 0/1 or "yes": a typo should not switch a metric on)."""

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, bool)

    def __str__(self) -> str:
        return "True or False"

    def refused_example(self) -> Any:
        return "yes"


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class Device(Constraint):
    """A device name; whether this machine has it is :func:`resolve_device`'s question."""

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str) and _DEVICE.fullmatch(value) is not None

    def __str__(self) -> str:
        return "auto, cpu, cuda or cuda:N (N: a GPU's index)"

    def refused_example(self) -> Any:
        return "tpu"


@dataclass(frozen=True)
class OrNone(Constraint):
    """``constraint``, or None (no limit, not given)."""

    constraint: Constraint

    def is_satisfied_by(self, value: Any) -> bool:
        return value is None or self.constraint.is_satisfied_by(value)

    def __str__(self) -> str:
        return f"{self.constraint}, or None"

    def refused_example(self) -> Any:
        return self.constraint.refused_example()


def check_value(name: str, value: Any, allowed: Constraint) -> None:
    """Raise the one error of a refused option: it names the option, the value and what is allowed."""
    if not allowed.is_satisfied_by(value):
        raise InvalidOptionError(f"{name} must be {allowed}; got {value!r}")


def _option(default: Any, allowed: Constraint, help: str) -> Any:
    """A :class:`ScanOptions` field with its table entry (read back through :data:`SCAN_OPTIONS`)."""
    return field(default=default, metadata={"allowed": allowed, "help": help})


@dataclass(frozen=True)
class ScanOptions:
    """Everything that changes a scan's numbers; checked when built, recorded in the result."""

    device: str = _option("auto", Device(), "auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda[:N]")
    precision: str = _option(Precision.AUTO.value, Choices(tuple(p.value for p in Precision)),
                             "eigensolver precision; auto: float32 for float16/bfloat16 weights unless the fitted "
                             "tail needs float64, float64 otherwise (float32 loses small eigenvalues)")
    strategy: str = _option("auto", Choices(("auto", *STRATEGIES)),
                            "how spectra are solved: pool (the CPU default) or batched (the GPU default, any device)")
    min_evals: int = _option(8, Interval(int, 1), "skip layers with fewer eigenvalues (M*rf)")
    max_evals: int | None = _option(None, OrNone(Interval(int, 1)), "skip layers with more eigenvalues")
    max_N: int | None = _option(None, OrNone(Interval(int, 1)), "skip layers whose matrices have more rows (N)")
    conv2d_method: str = _option(CONV2D_METHODS[0], Choices(CONV2D_METHODS),
                                 "pool the kh*kw kernel slices into one ESD, or one row per slice")
    mp_fit: bool = _option(False, Boolean(),
                           "also fit the Marchenko-Pastur bulk (num_spikes, mp_softrank, sigma_mp)")
    randomize: bool = _option(False, Boolean(),
                              "also compare with the ESD of shuffled weights (correlation traps)")
    # seed + a matrix's size seeds torch's generator (gate.metrics.marchenko_pastur); numpy's range for seeds
    seed: int = _option(0, Interval(int, 0, 2**32 - 1), "seed of the randomize shuffle")
    benford: bool = _option(True, Boolean(), "first-digit counts and MLH per layer and for the model")
    # The weights' sha256 (gate.scanning.fingerprint), from the same read: what a decision is recorded against.
    # Callers that record no decision (the training tracker, rank) turn it off: hashing is ~10% of a
    # CPU scan's work, and ~8 s per measurement of a 7B model.
    fingerprint: bool = _option(True, Boolean(),
                                "the weights' sha256 (weights_sha256), what decisions are recorded against; "
                                "off saves hashing every byte when none is recorded")
    tail_estimators: bool = _option(False, Boolean(),
                                    "also alpha_hill (Hill, xmin at the median) and alpha_farms (FARMS): "
                                    "optional metrics")
    keep_spectra: bool = _option(False, Boolean(), "keep each layer's eigenvalues in the result (for ESD plots)")
    train_accuracy: float | None = _option(None, OrNone(Interval(float, 0, 1)),
                                           "training accuracy (a fraction) of the model: adds the EIC criteria")

    def __post_init__(self) -> None:
        for spec in SCAN_OPTIONS.values():
            spec.check(getattr(self, spec.name))

    @classmethod
    def of(cls, options: ScanOptions | None = None, **changes: Any) -> ScanOptions:
        """``options`` (default: the defaults) with ``changes``: keyword arguments of the Python API,
        checked by name, so an unknown one is refused rather than ignored."""
        unknown = sorted(set(changes) - set(SCAN_OPTIONS))
        if unknown:
            raise InvalidOptionError(f"unknown scan option(s) {unknown}; valid: {sorted(SCAN_OPTIONS)}")
        return cls(**changes) if options is None else replace(options, **changes)


@dataclass(frozen=True)
class OptionSpec:
    """One row of the table: a :class:`ScanOptions` field with its constraint and help text."""

    name: str
    allowed: Constraint
    default: Any
    help: str

    def check(self, value: Any) -> None:
        check_value(self.name, value, self.allowed)


SCAN_OPTIONS: dict[str, OptionSpec] = {
    item.name: OptionSpec(item.name, item.metadata["allowed"], item.default, item.metadata["help"])
    for item in fields(ScanOptions)
}


def resolve_device(device: str, *, gpus: int | None = None, where: str = "torch sees") -> torch.device:
    """The torch device a scan on ``device`` runs on: ``auto`` is a CUDA GPU when there is one, the
    CPU otherwise; ``cuda`` or ``cuda:N`` that is not there is an input error naming what was asked.

    ``gpus``: how many CUDA GPUs there are (default: as many as torch sees on this machine);
    ``where`` says whose they are in the message (the Ray executor passes its cluster's).
    """
    import torch

    SCAN_OPTIONS["device"].check(device)
    count = torch.cuda.device_count() if gpus is None else gpus
    if device == "auto":
        return torch.device("cuda" if count else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        there = ("no CUDA GPU" if count == 0 else "1 CUDA GPU (cuda:0)" if count == 1
                 else f"{count} CUDA GPUs (cuda:0 to cuda:{count - 1})")
        raise GateInputError(f"device {device!r} was requested, but {where} {there}; "
                             f"use device cpu{', auto or cuda:0' if count else ' or auto'}")
    return torch.device(device)
