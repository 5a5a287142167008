"""``mlflow server --app-name weightgate``: the registry refuses promotions the gate has not approved.

Follows MLflow's own basic-auth app: Flask ``before_request``/``after_request`` hooks looked up in
tables keyed by MLflow's own endpoint table, small functions per check. The parts:

- :mod:`~mlflow_plugin.server.routes`: which check runs on which route, for every route prefix
  MLflow registers;
- :mod:`~mlflow_plugin.server.enforcement`: the checks (protected aliases, stages, ``gate.*``
  tags) and the ledger rows written after MLflow answered;
- :mod:`~mlflow_plugin.server.endpoints`:
  ``/api/2.0/weightgate/{hello,claim,record,override,rescan,backfill}``;
- :mod:`~mlflow_plugin.server.gate_page` (with :mod:`~mlflow_plugin.server.page_queries` and
  :mod:`~mlflow_plugin.server.page_views`): ``/weightgate/``, behind MLflow's own authentication
  when composed with basic-auth;
- :mod:`~mlflow_plugin.server.decisions`, :mod:`~mlflow_plugin.server.ledger` and
  :mod:`~mlflow_plugin.server.claims`: the tables in MLflow's database;
  :mod:`~mlflow_plugin.server.version_tags`: the four ``gate.*`` tags a version shows.

Every refusal is MLflow's JSON error body (:mod:`mlflow_plugin.responses`).
"""

from __future__ import annotations

from flask import Flask

from mlflow_plugin.config import GateConfig
from mlflow_plugin.responses import install_error_handler
from mlflow_plugin.server.gate_page import GatePage
from mlflow_plugin.server.state import ServerGate


def create_app(app: Flask | None = None):
    """Factory for ``--app-name weightgate``."""
    from mlflow.server import app as mlflow_app

    flask_app = app or mlflow_app
    gate = ServerGate(GateConfig.from_env())
    install_error_handler(flask_app)
    GatePage(gate).register(flask_app)
    install(flask_app, gate)
    return _asgi_if_needed(flask_app)


def create_app_with_basic_auth(app: Flask | None = None):
    """Factory for ``--app-name weightgate-basic-auth``: MLflow's basic-auth, then the gate.

    Basic-auth's hooks are installed before the gate's, so a registry request is authenticated
    before the gate looks at it; basic-auth admins may override decisions. The gate page alone is
    registered first: it authenticates its own routes (see :mod:`mlflow_plugin.server.gate_page`).
    """
    from mlflow.server import app as mlflow_app
    from mlflow.server.auth import create_app as basic_auth_create_app

    flask_app = app or mlflow_app
    gate = ServerGate(GateConfig.from_env(), basic_auth=True)
    install_error_handler(flask_app)
    GatePage(gate).register(flask_app)  # its hook goes ahead of basic-auth's
    served = basic_auth_create_app(flask_app)
    install(flask_app, gate)
    return served


def install(app: Flask, gate: ServerGate) -> None:
    """Add the gate's hooks and endpoints to ``app``, after any hooks already installed."""
    from mlflow_plugin.server.endpoints import Endpoints
    from mlflow_plugin.server.enforcement import Enforcement
    from mlflow_plugin.server.routes import RequestHooks

    hooks = RequestHooks(Enforcement(gate))
    app.before_request(hooks.before_request)
    app.after_request(hooks.after_request)
    Endpoints(gate).register(app)


def _asgi_if_needed(flask_app: Flask):
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(flask_app)
    return flask_app
