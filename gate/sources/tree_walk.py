"""A bounded depth-first search of a deserialised object tree for the estimators in it: what the
safe unpickler's object graph (gate.sources.pickled.module_graph) and a skops file's schema tree
(gate.sources.skops_file) both need to find scikit-learn MLPs nested in pipelines and searches.

Iterative (no recursion limit to hit on a deep, hostile file) and bounded by a visit count, so a
file that declares a huge or cyclic tree ends in the caller's clear error instead of running on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Found = TypeVar("Found")
MAX_VISITS = 5_000_000  # nodes looked at while searching a tree for estimators


def collect_depth_first(root: object, match: Callable[[str, object], list[Found] | None],
                        children: Callable[[object], list[tuple[str, object]]], too_many: Callable[[], Exception],
                        once_per_object: bool = False) -> list[Found]:
    """What ``match`` finds, in depth-first order of the children. ``match(path, node)`` returns the
    node's findings (the search does not descend into it) or None (it descends into ``children(node)``,
    named ``path + key + "."``). ``once_per_object``: a graph with shared references (a pickle's
    memo) visits each object once. Past :data:`MAX_VISITS` nodes, ``too_many()`` is raised."""
    found: list[Found] = []
    seen: set[int] = set()
    pending: list[tuple[str, object]] = [("", root)]
    visits = 0
    while pending:
        path, node = pending.pop()
        visits += 1
        if visits > MAX_VISITS:
            raise too_many()
        if once_per_object:
            if id(node) in seen:
                continue
            seen.add(id(node))
        matched = match(path, node)
        if matched is not None:
            found += matched
            continue
        pending.extend(reversed([(f"{path}{key}.", child) for key, child in children(node)]))
    return found
