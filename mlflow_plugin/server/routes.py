"""Which check runs on which MLflow route, keyed by MLflow's own endpoint table.

As MLflow's basic-auth plugin does (``mlflow/server/auth/__init__.py``), the tables are built from
``mlflow.server.handlers.get_endpoints``, which lists every (path, handler, methods) the server
registers for each request message: ``/api/2.0/...``, ``/ajax-api/2.0/...``, any later version
prefix, and the ``--static-prefix`` in front of all of them. A route MLflow adds under a new prefix
is guarded by construction; there is no path pattern to keep up to date.

``MlflowClient.copy_model_version`` and the UI's "Promote model" dialog create the copy through
``model-versions/create`` with the source's tags (MLflow 3.17 and 3.18 have no separate copy route):
the copy's ``gate.*`` tags are dropped from the request and it starts pending like any new version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response, g, request
from mlflow.protos.model_registry_pb2 import (
    CreateModelVersion,
    CreateRegisteredModel,
    DeleteModelVersionTag,
    DeleteRegisteredModelAlias,
    DeleteRegisteredModelTag,
    RenameRegisteredModel,
    SetModelVersionTag,
    SetRegisteredModelAlias,
    SetRegisteredModelTag,
    TransitionModelVersionStage,
)

from mlflow_plugin.responses import Refusal
from mlflow_plugin.server.bodies import AliasParams, Body, CreateParams, RenameParams, StageParams, TagParams, parse
from mlflow_plugin.server.enforcement import Enforcement


@dataclass(frozen=True)
class Route:
    """What the gate reads from a request (``params``) and what it does with it (``hook``)."""

    params: type[Body]
    hook: Callable[..., None]


# Request message -> the check run before MLflow handles it (it raises a Refusal to refuse).
BEFORE_REQUEST: dict[type, Route] = {
    SetRegisteredModelAlias: Route(AliasParams, Enforcement.check_alias),
    DeleteRegisteredModelAlias: Route(AliasParams, Enforcement.note_alias_target),
    TransitionModelVersionStage: Route(StageParams, Enforcement.check_stage),
    SetModelVersionTag: Route(TagParams, Enforcement.guard_tag),
    DeleteModelVersionTag: Route(TagParams, Enforcement.guard_tag),
    SetRegisteredModelTag: Route(TagParams, Enforcement.guard_tag),
    DeleteRegisteredModelTag: Route(TagParams, Enforcement.guard_tag),
    CreateModelVersion: Route(CreateParams, Enforcement.drop_initial_tags),
    CreateRegisteredModel: Route(CreateParams, Enforcement.guard_model_tags),
}

# Request message -> what is recorded once MLflow has answered (pending status, ledger rows).
AFTER_REQUEST: dict[type, Route] = {
    CreateModelVersion: Route(CreateParams, Enforcement.mark_pending),
    SetRegisteredModelAlias: Route(AliasParams, Enforcement.log_alias_set),
    DeleteRegisteredModelAlias: Route(AliasParams, Enforcement.log_alias_delete),
    TransitionModelVersionStage: Route(StageParams, Enforcement.log_stage),
    SetModelVersionTag: Route(TagParams, Enforcement.log_status_set),
    DeleteModelVersionTag: Route(TagParams, Enforcement.log_status_delete),
    RenameRegisteredModel: Route(RenameParams, Enforcement.follow_rename),
}


def route_table(routes: Mapping[type, Route]) -> dict[tuple[str, str], Route]:
    """(path, method) -> route, for every path and method MLflow serves each request message on."""
    from mlflow.server.handlers import get_endpoints

    # get_endpoints asks for a handler per request message; endpoints MLflow declares with a fixed
    # view function (graphql, server-info, ...) come back with that function and are left out.
    return {(path, method): route
            for path, route, methods in get_endpoints(routes.get)
            if isinstance(route, Route)
            for method in methods}


class RequestHooks:
    """The Flask hooks: look the request up in the tables, read its parameters once, run the hook."""

    def __init__(self, enforcement: Enforcement) -> None:
        self.enforcement = enforcement
        self.before = route_table(BEFORE_REQUEST)
        self.after = route_table(AFTER_REQUEST)

    def before_request(self) -> None:
        route = self.before.get((request.path, request.method))
        if route is not None:
            route.hook(self.enforcement, request_params(route.params))

    def after_request(self, response: Response) -> Response:
        route = self.after.get((request.path, request.method))
        if route is None:
            return response
        try:
            params = request_params(route.params)
        except Refusal:
            return response  # unreadable parameters were answered 400: nothing was attempted on a version
        route.hook(self.enforcement, params, response)
        return response


def request_params(model: type[Body]) -> Any:
    """The request's query and JSON body parameters as ``model``, parsed once per request (the
    before and after hooks of one route read the same model). A JSON null counts as absent, as in
    MLflow's own parsing of the request message."""
    cached = g.get("weightgate_params")
    if cached is None or cached[0] is not model:
        raw = dict(request.args)
        body = request.get_json(force=True, silent=True)
        if isinstance(body, dict):
            raw.update(body)
        try:
            cached = (model, parse(model, {k: v for k, v in raw.items() if v is not None}, request.path))
        except Refusal as refusal:
            cached = (model, refusal)
        g.weightgate_params = cached
    if isinstance(cached[1], Refusal):
        raise cached[1]
    return cached[1]
