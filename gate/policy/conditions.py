"""What a policy rule compares: a value against bounds, or its change against the baseline's value.

A rule's ``condition`` is exactly one of ``between: [low, high]``, ``min: x``, ``max: x`` or
``change: {max_decrease: x, max_increase: y, relative: true}``; the evaluation (gate.policy.evaluate)
reads it as ``kind`` with ``low``/``high`` bounds.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic.types import AllowInfNan, Strict, StrictBool

from gate.policy.problems import DocumentModel, problem

# A YAML number: ints count (as floats), booleans, text, infinities and NaN do not.
FiniteNumber = Annotated[float, Strict(), AllowInfNan(False)]


class Change(DocumentModel):
    """How far a value may move from the baseline's: ``max_decrease`` down, ``max_increase`` up."""

    max_decrease: Annotated[FiniteNumber, Field(ge=0)] | None = Field(None, description="a number >= 0")
    max_increase: Annotated[FiniteNumber, Field(ge=0)] | None = Field(None, description="a number >= 0")
    relative: StrictBool = Field(False, description="true or false")  # change as (value - baseline) / |baseline|

    @model_validator(mode="after")
    def _bounded(self) -> Change:
        if self.max_decrease is None and self.max_increase is None:
            raise problem("needs max_decrease and/or max_increase")
        return self


class Condition(DocumentModel):
    """Exactly one of its fields; ``low``/``high`` bound the value (or its change against the baseline)."""

    between: tuple[FiniteNumber, FiniteNumber] | None = Field(None, description="a list of two numbers [low, high]")
    min: FiniteNumber | None = Field(None, description="a finite number")
    max: FiniteNumber | None = Field(None, description="a finite number")
    change: Change | None = Field(
        None, description="a mapping with max_decrease and/or max_increase, and optional relative: true")

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if not (isinstance(data, dict) and len(data) == 1 and next(iter(data)) in cls.model_fields
                and next(iter(data.values())) is not None):
            raise problem(f"must be exactly one of {', '.join(cls.model_fields)} (e.g. 'between: [2, 4]')")
        return data

    @field_validator("between")
    @classmethod
    def _possible(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not bounds[0] < bounds[1]:
            raise problem(f"impossible range: low {bounds[0]:g} is not below high {bounds[1]:g}")
        return bounds

    @property
    def kind(self) -> str:
        """between | min | max | change"""
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def low(self) -> float | None:
        if self.change is not None:
            return -self.change.max_decrease if self.change.max_decrease is not None else None
        return self.between[0] if self.between is not None else self.min

    @property
    def high(self) -> float | None:
        if self.change is not None:
            return self.change.max_increase
        return self.between[1] if self.between is not None else self.max

    @property
    def relative(self) -> bool:
        return self.change is not None and self.change.relative

    def describe(self) -> dict[str, Any]:
        if self.change is not None:
            described: dict[str, Any] = {"change": "relative" if self.relative else "absolute"}
            if self.change.max_decrease is not None:
                described["max_decrease"] = self.change.max_decrease
            if self.change.max_increase is not None:
                described["max_increase"] = self.change.max_increase
            return described
        return {"kind": self.kind, "min": self.low, "max": self.high}
