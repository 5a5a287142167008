"""The gate page at ``/weightgate/``: what the gate decided, what waits, and who promoted what.

Server-rendered HTML from Jinja2 templates (autoescaped; no scripts, no external assets, so it
works with JavaScript off), plus the ledger as JSON for machines:

- ``/weightgate/``: every registered model with its versions (status badge, reason, links to the
  MLflow version page, the decision run and its report) and the scan queue (pending versions,
  which worker holds each claim, how long each has waited);
- ``/weightgate/model?name=NAME``: one model's versions and its promotion history from the ledger;
- ``/weightgate/api/ledger?name=NAME``: ledger rows as JSON (all readable models without name);
- ``/weightgate/api/ledger/verify``: the chain check as JSON.

With ``--app-name weightgate-basic-auth`` the page is as private as MLflow: requests are
authenticated with basic-auth's configured function (no credentials: 401), a non-admin sees only
the models basic-auth lets them read, and only admins may run the chain check (its messages name
rows of every model). Basic-auth has no validator for these routes, and MLflow 3.17 refuses such
routes to non-admins by default (``MLFLOW_BASIC_AUTH_FAIL_CLOSED``); rather than add entries to
basic-auth's module-level tables, the page serves its routes from a before-request hook installed
ahead of basic-auth's (:func:`mlflow_plugin.server.app.create_app_with_basic_auth` registers the
page first): the hook authenticates, notes the viewer, and answers with the view, so basic-auth's
hook is never asked about a route it does not know. Every other route still meets basic-auth first.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from flask import Flask, Response, current_app, g, jsonify, make_response, request

from gate import vocabulary as words
from gate.vocabulary import NO_STATUS, STATUS, VersionStatus
from mlflow_plugin.responses import UNAUTHENTICATED, Refusal
from mlflow_plugin.server.state import ServerGate, registry_store

_ENDPOINT_PREFIX = "weightgate_page_"
PAGE_PATHS = ("/weightgate/", "/weightgate/model", "/weightgate/api/ledger", "/weightgate/api/ledger/verify")
BADGES = (*VersionStatus, NO_STATUS)


@dataclass
class VersionView:
    """One model version as the page shows it."""

    name: str
    version: str
    status: str
    summary: str
    reason: str
    aliases: list[str]
    version_url: str
    run_url: str | None
    report_url: str | None
    decided_at: str
    override: str

    @property
    def anchor(self) -> str:
        return f"v{self.version}"

    @property
    def reason_lines(self) -> tuple[str, list[str]]:
        """``gate.reason`` as the verdict's fold-out shows it: the first line (the rule counts) and
        then one line per rule that did not pass, the changed layers and the rules that passed
        (gate.report.verdict.reason_text writes it so)."""
        head, *rest = self.reason.splitlines() or [""]
        return head, rest


def model_page_path(name: str, version: Any | None = None) -> str:
    """Where a model (and one version's row) is on the gate page, relative to the server root."""
    return f"/weightgate/model?{urlencode({'name': name})}" + (f"#v{version}" if version is not None else "")


def gate_page_tags(decision, tracking_uri: str, version) -> dict[str, str]:
    """The worker's human-facing tags: ``gate.summary`` and, for an http(s) server, ``gate.page``."""
    from gate.report.verdict import summary_line

    tags = {words.SUMMARY: summary_line(decision)}
    if tracking_uri.startswith(("http://", "https://")):
        tags[words.PAGE] = tracking_uri.rstrip("/") + model_page_path(version.name, version.version)
    return tags


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the page, as basic-auth authenticated them."""

    username: str
    is_admin: bool


class GatePage:
    """The routes, bound to the running gate (its ledger, claims and configuration)."""

    def __init__(self, gate: ServerGate) -> None:
        self.gate = gate
        self._templates = None

    def register(self, app: Flask) -> None:
        views: dict[str, Callable[[], Any]] = dict(zip(PAGE_PATHS, (self.index, self.model, self.ledger_json,
                                                                    self.verify_json)))
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
        versions = self._versions()
        models = sorted({v.name for v in versions})
        by_model: dict[str, list[VersionView]] = defaultdict(list)
        for view in versions:
            by_model[view.name].append(view)
        return self._render("index.html", models=models, by_model=by_model, queue=self._queue(versions),
                            counts=_counts(versions), policy_sha256=self.gate.policy_sha256)

    def model(self) -> Response | str:
        name = request.args.get("name", "")
        if not name or not self._readable([name]):
            return make_response(self._render("missing.html", name=name), 404)
        versions = [v for v in self._versions() if v.name == name]
        history = list(reversed(self.gate.ledger.entries(name)))
        return self._render("model.html", name=name, versions=versions, history=history,
                            queue=[q for q in self._queue(versions)], policy_sha256=self.gate.policy_sha256)

    def ledger_json(self) -> Response:
        name = request.args.get("name")
        entries = self.gate.ledger.entries(name)
        readable = set(self._readable(sorted({e.model for e in entries})))
        return jsonify({"name": name, "entries": [e.to_dict() for e in entries if e.model in readable]})

    def verify_json(self) -> Response:
        viewer = self._viewer()
        if viewer is not None and not viewer.is_admin:
            raise Refusal.denied("only basic-auth admins may verify the whole ledger")
        result = self.gate.ledger.verify()
        return jsonify({"ok": result.ok, "rows": result.rows, "head": result.head, "problems": result.problems})

    # -- data --------------------------------------------------------------------------------
    def _versions(self) -> list[VersionView]:
        store = registry_store()
        found, token = [], None
        while True:
            page = store.search_model_versions(max_results=1000, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        readable = set(self._readable(sorted({v.name for v in found})))
        aliases = self._aliases(store, readable)
        views = [self._view(v, aliases.get((v.name, str(v.version)), [])) for v in found if v.name in readable]
        return sorted(views, key=lambda v: (v.name, -int(v.version)))

    def _aliases(self, store, names: set[str]) -> dict[tuple[str, str], list[str]]:
        result: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name in names:
            for alias, version in (store.get_registered_model(name).aliases or {}).items():
                result[(name, str(version))].append(alias)
        return result

    def _view(self, version, aliases: list[str]) -> VersionView:
        tags = dict(version.tags or {})
        root = request.script_root + "/"
        run_id = tags.get(words.DECISION_RUN)
        run_url = report_url = None
        experiment_id = _experiment_of(run_id) if run_id else None
        if experiment_id is not None:
            run_url = f"{root}#/experiments/{experiment_id}/runs/{run_id}"
            report_url = f"{run_url}/artifacts/weightgate/report.html"
        override = ""
        if tags.get(STATUS) == VersionStatus.OVERRIDDEN:
            override = (f"overridden by {tags.get(words.OVERRIDE_BY, '?')} at {tags.get(words.OVERRIDE_AT, '?')} "
                        f"(was {tags.get(words.OVERRIDE_PREVIOUS_STATUS, '?')}): {tags.get(words.OVERRIDE_REASON, '')}")
        return VersionView(
            name=version.name, version=str(version.version), status=tags.get(STATUS, NO_STATUS),
            summary=tags.get(words.SUMMARY, ""), reason=tags.get(words.REASON, ""), aliases=sorted(aliases),
            version_url=f"{root}#/models/{quote(version.name, safe='')}/versions/{version.version}",
            run_url=run_url, report_url=report_url, decided_at=tags.get(words.DECIDED_AT, ""), override=override)

    def _queue(self, versions: list[VersionView]) -> list[dict[str, Any]]:
        """Versions waiting for a decision, oldest first, with the claim a worker holds on each."""
        waiting = [v for v in versions if v.status in (VersionStatus.PENDING, NO_STATUS)]
        if not waiting:
            return []
        store = registry_store()
        claims = {(claim.name, str(claim.version)): claim for claim in self.gate.claims.open_claims()}
        now = time.time()
        queue = []
        for view in waiting:
            created = store.get_model_version(view.name, view.version).creation_timestamp / 1000
            claim = claims.get((view.name, view.version))
            live = claim is not None and not claim.expired(now)
            queue.append({"view": view, "age": _duration(now - created), "age_seconds": now - created,
                          "claimed_by": claim.worker if live else "",
                          "lease": _duration(claim.expires_at - now) if live else
                          ("expired" if claim is not None else "")})
        return sorted(queue, key=lambda item: -item["age_seconds"])

    def _readable(self, names: list[str]) -> list[str]:
        viewer = self._viewer()
        if viewer is None or viewer.is_admin:
            return names
        from mlflow.server.auth import _rm_or_prompt_read_predicate

        can_read = _rm_or_prompt_read_predicate(viewer.username)
        return [name for name in names if can_read(_Named(name))]

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

            self._templates = Environment(loader=PackageLoader("mlflow_plugin.server", "templates"), autoescape=True)
            self._templates.globals["VersionStatus"] = VersionStatus  # templates compare statuses by name
        root = request.script_root
        return self._templates.get_template(template).render(
            badges=BADGES, request_root=root, model_page_path=lambda name, version=None: root + model_page_path(name, version),
            **context)


@dataclass
class _Named:
    """What basic-auth's read predicate needs of a registered model: its name, and no prompt tag."""

    name: str
    tags: tuple = ()




def _experiment_of(run_id: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.server.handlers import _get_tracking_store

    try:
        return _get_tracking_store().get_run(run_id).info.experiment_id
    except MlflowException:
        return None


def _counts(versions: list[VersionView]) -> dict[str, int]:
    counts = {badge: 0 for badge in BADGES}
    for view in versions:
        counts[view.status if view.status in counts else NO_STATUS] += 1
    return counts


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
