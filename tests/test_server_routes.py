"""The gate's route tables against MLflow's own endpoint table: every path MLflow serves a guarded
handler on (every prefix: /api/2.0, /ajax-api/2.0, any later one, and --static-prefix in front) is
in the gate's tables, found here through MLflow's handler functions, not the request messages the
tables are keyed by."""

from __future__ import annotations

from collections import defaultdict

import pytest

# MLflow's handler functions (mlflow.server.handlers) the gate must see before MLflow runs them ...
GUARDED_HANDLERS = {"_set_registered_model_alias", "_delete_registered_model_alias", "_transition_stage",
                    "_set_model_version_tag", "_delete_model_version_tag", "_set_registered_model_tag",
                    "_delete_registered_model_tag", "_create_model_version", "_create_registered_model",
                    "_copy_model_version"}  # the last one where an MLflow version has a route for it
# ... and after MLflow answered (pending status, ledger rows, decisions following a renamed model).
RECORDED_HANDLERS = {"_create_model_version", "_set_registered_model_alias", "_delete_registered_model_alias",
                     "_transition_stage", "_set_model_version_tag", "_delete_model_version_tag",
                     "_rename_registered_model"}


def _served(handler_names: set[str]) -> dict[str, set[tuple[str, str]]]:
    """handler name -> every (path, method) MLflow registers it on."""
    from mlflow.server.handlers import get_endpoints

    served: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path, handler, methods in get_endpoints():
        name = getattr(handler, "__name__", "")
        if name in handler_names:
            served[name] |= {(path, method) for method in methods}
    return served


@pytest.mark.parametrize("static_prefix", [None, "/registry"])
def test_every_prefix_of_every_guarded_route_is_in_the_tables(monkeypatch, static_prefix):
    from mlflow_plugin.server.routes import AFTER_REQUEST, BEFORE_REQUEST, route_table

    if static_prefix:
        monkeypatch.setenv("_MLFLOW_STATIC_PREFIX", static_prefix)  # what `mlflow server --static-prefix` sets
    before, after = route_table(BEFORE_REQUEST), route_table(AFTER_REQUEST)
    guarded, recorded = _served(GUARDED_HANDLERS), _served(RECORDED_HANDLERS)
    assert set(guarded) >= GUARDED_HANDLERS - {"_copy_model_version"}  # MLflow 3.17/3.18: copies go through create
    assert set(recorded) == RECORDED_HANDLERS
    for name, routes in guarded.items():
        prefixes = {path.split("/mlflow/")[0] for path, _ in routes}
        assert {f"{static_prefix or ''}/api/2.0", f"{static_prefix or ''}/ajax-api/2.0"} <= prefixes, name
        assert routes <= set(before), (name, routes - set(before))
    for name, routes in recorded.items():
        assert routes <= set(after), (name, routes - set(after))
    # Nothing else is guarded or recorded: every table entry is one of those handlers' routes.
    assert set(before) == set().union(*guarded.values())
    assert set(after) == set().union(*recorded.values())


def test_reading_an_alias_is_not_recorded_as_deleting_it():
    """GET and DELETE share the alias path: the tables tell them apart by request message."""
    from mlflow_plugin.server.enforcement import Enforcement
    from mlflow_plugin.server.routes import AFTER_REQUEST, BEFORE_REQUEST, route_table

    before, after = route_table(BEFORE_REQUEST), route_table(AFTER_REQUEST)
    assert ("/api/2.0/mlflow/registered-models/alias", "GET") not in before
    assert ("/api/2.0/mlflow/registered-models/alias", "GET") not in after
    assert after[("/api/2.0/mlflow/registered-models/alias", "DELETE")].hook is Enforcement.log_alias_delete
    assert after[("/api/2.0/mlflow/registered-models/alias", "POST")].hook is Enforcement.log_alias_set
