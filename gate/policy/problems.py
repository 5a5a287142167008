"""Pydantic's validation errors as the lines a policy author reads: ``file:line: field.path: message``.

Pydantic reports every problem of a document at once, each at a ``loc`` (``('rules', 2, 'condition',
'between', 0)``) with a text written for programmers ("Input should be a valid number"). This
module turns each into the product's words: the field path as the author wrote it
(``rules[2].condition.between``), the line of that field in the YAML file, and a message built
from the field's own ``description`` (``must be a share in (0, 1], not 1.5``), so each constraint
and its wording live together on the model. Checks the models make themselves (cross-field rules)
raise :func:`problem` and keep their text.
"""

from __future__ import annotations

import typing
from enum import Enum
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

_OWN = "policy"  # error type of the models' own checks: their message is already the product's


class DocumentModel(BaseModel):
    """A part of a hand-edited document: unknown keys are errors, values are read-only once checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    unknown_key: ClassVar[str] = "unknown field"  # how a key outside the model's fields is reported


def problem(message: str) -> PydanticCustomError:
    """An error a model's validator raises, worded for the author (the text is kept, braces and all)."""
    return PydanticCustomError(_OWN, "{message}", {"message": message})


def line_index(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, int]:
    """1-based line of every mapping key / sequence item, by its path in the document."""
    index: dict[tuple, int] = {}
    if node is None:
        return index
    index[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            index[path + (key.value,)] = key.start_mark.line + 1
            inner = line_index(value, path + (key.value,))
            index.update({p: line for p, line in inner.items() if p != path + (key.value,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.update(line_index(item, path + (i,)))
    return index


def located_problems(error: ValidationError, root: type[DocumentModel], document: Any, lines: dict[tuple, int],
                     origin: str) -> list[str]:
    """Every error of ``error`` as ``origin:line: field.path: message``, in the order of the file."""
    located: dict[str, int] = {}  # one line per problem: a union's branches report the same field twice
    for details in error.errors():
        path, message = _explain(details, root, document)
        line = _line(path, lines)
        located.setdefault(f"{origin}:{line}: {_field_name(path)}: {message}" if line else
                           f"{origin}: {_field_name(path)}: {message}", line or 0)
    return sorted(located, key=located.__getitem__)


def _explain(details: ErrorDetails, root: type[DocumentModel], document: Any) -> tuple[tuple, str]:
    """The path the author wrote and the message, for one of pydantic's errors."""
    loc, kind = tuple(details["loc"]), details["type"]
    if kind == _OWN:
        return loc, details["msg"]
    last = loc[-1] if loc else None
    if kind == "missing" and isinstance(last, str):  # (a missing item of a pair is the pair's problem)
        return loc[:-1], f"missing required field {last!r}"
    depth, field, model = _resolve(root, loc)
    if kind == "extra_forbidden":
        allowed = ", ".join(sorted(f.alias or name for name, f in model.model_fields.items()))
        return loc, f"{model.unknown_key} (allowed: {allowed})"
    if kind == "model_type" and isinstance(last, int):  # an item of a list of mappings
        return loc, f"must be a mapping, not {_shown(details['input'])}"
    if field is None or not field.description:
        return loc, details["msg"]  # a field without a description: tests/test_policy.py keeps there being none
    path = loc[:depth]
    choices = _choices(field.annotation)
    if kind in ("literal_error", "enum") and path == loc and choices:
        return path, f"must be {choices}, not {_shown(details['input'])}"
    value = details["input"] if path == loc else _value_at(document, path)
    return path, f"must be {field.description}, not {_shown(value)}"


def _resolve(root: type[DocumentModel], loc: tuple) -> tuple[int, FieldInfo | None, type[DocumentModel]]:
    """How many parts of ``loc`` lead to its deepest named field, that field, and the model ``loc``
    stops in. The parts after the field are list items or the branches of a union of types: the
    author wrote one value there, so the field is what the message names."""
    model: type[DocumentModel] | None = root
    holder, field, depth = root, None, 0
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()} if model is not None else {}
        if part not in fields:
            break
        holder, field, depth = model, fields[part], i + 1
        model = _model_in(field.annotation)
    return depth, field, model if model is not None else holder


def _model_in(annotation: Any) -> type[DocumentModel] | None:
    """The model a field holds, directly, in a list or as an optional value; None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, DocumentModel):
        return annotation
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def _choices(annotation: Any) -> str:
    """``'a', 'b' or 'c'`` for a field of fixed choices (a Literal or an Enum, maybe optional); '' otherwise."""
    shown = [repr(value) for value in _fixed_values(annotation)]
    return f"{', '.join(shown[:-1])} or {shown[-1]}" if len(shown) > 1 else "".join(shown)


def _fixed_values(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return [v.value if isinstance(v, Enum) else v for v in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [member.value for member in annotation]
    return [value for arg in typing.get_args(annotation) for value in _fixed_values(arg)]


def _value_at(document: Any, path: tuple) -> Any:
    for part in path:
        document = document[part]
    return document


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _line(path: tuple, lines: dict[tuple, int]) -> int | None:
    """The line of ``path``, or of its nearest enclosing field the YAML has (a missing key's rule)."""
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path)


def _field_name(path: tuple) -> str:
    """``rules[2].condition.between`` for ``('rules', 2, 'condition', 'between')``; ``policy`` for the root."""
    name = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))
    return name or "policy"
