"""The gate page at ``/weightgate/``: what the gate decided, what waits, and who promoted what.

Server-rendered HTML from Jinja2 templates (autoescaped; no scripts, no external assets, so it
works with JavaScript off), plus JSON routes for machines. Every listing is one page of a query
(:mod:`mlflow_plugin.server.page_queries`), so a registry of any size answers as fast as a small one:

- ``/weightgate/?name=&status=&promoted=1&page=N``: the count of each status, the scan queue
  (oldest pending versions, which worker holds each claim), and 50 versions a page, newest activity
  first, searchable by model name and status; ``promoted=1`` keeps the versions that hold
  Staging/Production or a protected alias (with ``status=blocked``: blocked but in Production);
- ``/weightgate/model?name=NAME&page=N&before=ID``: one model's versions and its promotion
  history from the ledger, newest first, a page at a time;
- ``/weightgate/api/ledger?name=NAME&after=ID&limit=N``: ledger rows as JSON, oldest first, with
  ``next_after`` while more follow; ``/weightgate/api/ledger/verify``: the chain check;
- ``/weightgate/api/decision?name=NAME&version=N``: a version's decision row as JSON.

With ``--app-name weightgate-basic-auth`` the page is as private as MLflow: requests are
authenticated with basic-auth's configured function (no credentials: 401), a non-admin sees only
the models basic-auth lets them read, and only admins may run the chain check (its messages name
rows of every model). Basic-auth has no validator for these routes, and MLflow refuses such routes
to non-admins by default (``MLFLOW_BASIC_AUTH_FAIL_CLOSED``); rather than add entries to
basic-auth's module-level tables, the page serves its routes from a before-request hook installed
ahead of basic-auth's (:func:`mlflow_plugin.server.app.create_app_with_basic_auth` registers the
page first): the hook authenticates, notes the viewer, and answers with the view, so basic-auth's
hook is never asked about a route it does not know. Every other route still meets basic-auth first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, make_response, request

from mlflow_plugin.responses import RESOURCE_DOES_NOT_EXIST, UNAUTHENTICATED, Refusal
from mlflow_plugin.server.page_queries import PageFilter, RegistryQueries
from mlflow_plugin.server.page_views import BADGES, PAGE_SIZE, page_links, version_view, waiting_view
from mlflow_plugin.server.state import ServerGate
from mlflow_plugin.server.version_tags import model_page_path

_ENDPOINT_PREFIX = "weightgate_page_"
PAGE_PATHS = ("/weightgate/", "/weightgate/model", "/weightgate/api/ledger", "/weightgate/api/ledger/verify",
              "/weightgate/api/decision")
QUEUE_SHOWN = 20
HISTORY_PAGE = 100
LEDGER_JSON_LIMIT = 1000


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the page, as basic-auth authenticated them."""

    username: str
    is_admin: bool


class GatePage:
    """The routes, bound to the running gate (its tables and configuration)."""

    def __init__(self, gate: ServerGate) -> None:
        self.gate = gate
        self.queries = RegistryQueries(gate.decisions.engine, gate.config.protected_aliases)
        self._templates = None

    def register(self, app: Flask) -> None:
        views: dict[str, Callable[[], Any]] = dict(zip(PAGE_PATHS, (self.index, self.model, self.ledger_json,
                                                                    self.verify_json, self.decision_json)))
        for path, view in views.items():
            app.add_url_rule(path, endpoint=_ENDPOINT_PREFIX + path.strip("/").replace("/", "_"), view_func=view,
                             methods=["GET"])
        if self.gate.basic_auth:
            app.before_request(self.serve_authenticated)

    def serve_authenticated(self) -> Response | None:
        """On the page's routes: authenticate through basic-auth's configured function, note the
        viewer, and answer with the view (the hooks after this one, basic-auth's included, do not
        run for these routes; after-request hooks do). Other routes pass on untouched."""
        if not (request.endpoint or "").startswith(_ENDPOINT_PREFIX):
            return None
        from mlflow.server.auth import authenticate_request
        from mlflow.server.auth import store as users

        authorization = authenticate_request()
        if isinstance(authorization, Response):
            return authorization  # 401 with basic-auth's challenge
        g.weightgate_viewer = Viewer(authorization.username, bool(users.get_user(authorization.username).is_admin))
        return current_app.make_response(current_app.dispatch_request())

    # -- views -------------------------------------------------------------------------------
    def index(self) -> str:
        readable = self._readable_names()
        where = PageFilter(name=request.args.get("name", "").strip(), status=_status_arg(),
                           promoted=request.args.get("promoted") == "1")
        number = _page_number()
        rows, total = self.queries.page(where, (number - 1) * PAGE_SIZE, PAGE_SIZE, readable)
        waiting, waiting_total = self.queries.queue(QUEUE_SHOWN, readable)
        return self._render(
            "index.html", where=where, versions=self._views(rows), total=total,
            pages=page_links(request.path, request.args, number, total), counts=self.queries.counts(readable),
            promoted_unapproved=self.queries.promoted_unapproved(self.gate.config.approving_statuses(), readable),
            queue=self._queue(waiting), queue_total=waiting_total)

    def model(self) -> Response | str:
        name = request.args.get("name", "")
        readable = self._readable_names()
        if not name or (readable is not None and name not in readable) or not self.queries.model_exists(name):
            return make_response(self._render("missing.html", name=name), 404)
        number = _page_number()
        rows, total = self.queries.page(PageFilter(), (number - 1) * PAGE_SIZE, PAGE_SIZE, [name])
        waiting, _ = self.queries.queue(QUEUE_SHOWN, [name])
        before = _int_arg("before")
        history = self.gate.ledger.page(name, before=before, limit=HISTORY_PAGE, newest_first=True)
        older = history[-1].id if len(history) == HISTORY_PAGE else None
        return self._render("model.html", name=name, versions=self._views(rows),
                            total=total, pages=page_links(request.path, request.args, number, total),
                            history=history, older=older, queue=self._queue(waiting))

    def ledger_json(self) -> Response:
        name = request.args.get("name")
        limit = min(max(_int_arg("limit") or LEDGER_JSON_LIMIT, 1), LEDGER_JSON_LIMIT)
        readable = self._readable_names()
        if name is not None and readable is not None and name not in readable:
            return jsonify({"name": name, "entries": [], "next_after": None})
        entries = self.gate.ledger.page(name, after=_int_arg("after"), limit=limit, models=readable)
        return jsonify({"name": name, "entries": [e.to_dict() for e in entries],
                        "next_after": entries[-1].id if len(entries) == limit else None})

    def verify_json(self) -> Response:
        viewer = self._viewer()
        if viewer is not None and not viewer.is_admin:
            raise Refusal.denied("only basic-auth admins may verify the whole ledger")
        result = self.gate.ledger.verify()
        return jsonify({"ok": result.ok, "rows": result.rows, "head": result.head, "problems": result.problems})

    def decision_json(self) -> Response:
        name, version = request.args.get("name", ""), request.args.get("version", "")
        readable = self._readable_names()
        decision = self.gate.decisions.get(name, version) if version.isdigit() else None
        if decision is None or (readable is not None and name not in readable):
            raise Refusal(RESOURCE_DOES_NOT_EXIST, f"no weightgate decision for {name!r} version {version!r}")
        return jsonify(decision.to_dict())

    # -- helpers -----------------------------------------------------------------------------
    def _views(self, rows) -> list:
        approving = self.gate.config.approving_statuses()
        return [version_view(row, approving, self.gate.config.is_protected) for row in rows]

    def _queue(self, rows) -> list[dict[str, Any]]:
        claims = {(claim.name, claim.version): claim for claim in self.gate.claims.open_claims(
            [(row.name, row.version) for row in rows])}
        return [waiting_view(row, claims.get((row.name, row.version))) for row in rows]

    def _readable_names(self) -> list[str] | None:
        """The model names the viewer may read, or None for all (no basic-auth, or an admin)."""
        viewer = self._viewer()
        if viewer is None or viewer.is_admin:
            return None
        from mlflow.server.auth import _rm_or_prompt_read_predicate

        can_read = _rm_or_prompt_read_predicate(viewer.username)
        return [name for name in self.queries.model_names() if can_read(_Named(name))]

    def _viewer(self) -> Viewer | None:
        """The authenticated viewer; None without basic-auth (the page is then as open as the server)."""
        if not self.gate.basic_auth:
            return None
        viewer = g.get("weightgate_viewer")
        if viewer is None:  # serve_authenticated runs on every page route: never show the page to no one in particular
            raise Refusal(UNAUTHENTICATED, "the gate page needs an authenticated user")
        return viewer

    def _render(self, template: str, **context: Any) -> str:
        if self._templates is None:
            from jinja2 import Environment, PackageLoader

            from gate.vocabulary import NO_STATUS, VersionStatus

            self._templates = Environment(loader=PackageLoader("mlflow_plugin.server", "templates"), autoescape=True)
            self._templates.globals.update(VersionStatus=VersionStatus, NO_STATUS=NO_STATUS)
        root = request.script_root
        return self._templates.get_template(template).render(
            badges=BADGES, request_root=root, policy_sha256=self.gate.policy_sha256,
            model_page_path=lambda name, version=None: root + model_page_path(name, version), **context)


@dataclass
class _Named:
    """What basic-auth's read predicate needs of a registered model: its name, and no prompt tag."""

    name: str
    tags: tuple = ()


def _int_arg(key: str) -> int | None:
    value = request.args.get(key, "")
    return int(value) if value.isdigit() else None


def _page_number() -> int:
    return max(_int_arg("page") or 1, 1)


def _status_arg() -> str:
    status = request.args.get("status", "")
    return status if status in BADGES else ""
