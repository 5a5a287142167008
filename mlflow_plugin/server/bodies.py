"""What the gate reads from a request, validated once at the boundary (pydantic v2).

Two kinds of request reach the gate:

- its own endpoints (``/api/2.0/weightgate/{claim,record,override,rescan,backfill}``): the body must
  be the model; anything else is answered ``400 INVALID_PARAMETER_VALUE`` naming the field (a
  record's decision is :class:`mlflow_plugin.decision_record.DecisionRecord`);
- MLflow's registry routes the hooks read (alias, stage, tags, create): only the fields a check
  reads are declared, each optional where MLflow itself requires it, so a request without
  ``alias`` or ``stage`` still reaches MLflow and gets MLflow's own 400. A field of the wrong type
  (a list where MLflow expects a string) is the gate's 400, as MLflow would refuse it too.

Numbers are accepted where a string is declared (``"version": 2``), as MLflow's JSON parsing does.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from mlflow_plugin.decision_record import DecisionRecord
from mlflow_plugin.responses import Refusal

Text = Annotated[str, StringConstraints(min_length=1)]
LeaseSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Version = Annotated[int, Field(ge=1)]


class Body(BaseModel):
    """A request's fields; unknown fields are ignored, as MLflow ignores them."""

    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)


# -- the gate's own endpoints --------------------------------------------------------------------
class ClaimBody(Body):
    name: Text
    version: Version
    worker: Text
    lease_seconds: LeaseSeconds = 900.0


class RecordBody(ClaimBody):
    decision: DecisionRecord


class RescanBody(Body):
    name: Text
    version: Version


class OverrideBody(RescanBody):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class BackfillBody(Body):
    """One batch of ``weightgate backfill``: at most ``limit`` versions without a decision are queued."""

    limit: Annotated[int, Field(ge=1, le=1000)] = 200


# -- MLflow's registry routes, as far as the hooks read them ---------------------------------------
class VersionParams(Body):
    """A request naming a model version (``version`` is absent on alias deletes)."""

    name: str = ""
    version: str = ""


class AliasParams(VersionParams):
    alias: str = ""


class StageParams(VersionParams):
    stage: str = ""


class TagParams(VersionParams):
    key: str = ""
    value: str = ""


class RenameParams(Body):
    name: str = ""
    new_name: str = ""


class InitialTag(Body):
    key: str = ""
    value: str = ""


class CreateParams(Body):
    """A model or version created with tags (``registered-models/create``, ``model-versions/create``)."""

    tags: list[InitialTag] | None = None


M = TypeVar("M", bound=Body)


def parse(model: type[M], data: Any, what: str) -> M:
    """``data`` as ``model``, or a :class:`Refusal` (400) naming each field that is missing or wrong."""
    if not isinstance(data, dict):
        raise Refusal.invalid(f"invalid {what} request: the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"field '{'.'.join(map(str, error['loc']))}': {error['msg']}" for error in err.errors())
        raise Refusal.invalid(f"invalid {what} request: {problems}") from None
