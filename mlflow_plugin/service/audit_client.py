"""Reading the promotion ledger for ``weightgate audit`` (through the server's JSON routes, or
straight from the server's database when given a database URI: an auditor with read access) and a
version's decision row for ``weightgate queue``."""

from __future__ import annotations

from typing import Any

from gate.errors import GateInputError


def ledger_entries(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """Ledger rows of model ``name``, oldest first, as plain dicts."""
    if _is_http(tracking_uri):
        return _get(tracking_uri, "/weightgate/api/ledger", {"name": name})["entries"]
    return [entry.to_dict() for entry in _ledger(tracking_uri).entries(name)]


def verify_ledger(tracking_uri: str) -> dict[str, Any]:
    """``{"ok", "rows", "head", "problems"}`` of the chain check."""
    if _is_http(tracking_uri):
        return _get(tracking_uri, "/weightgate/api/ledger/verify", {})
    result = _ledger(tracking_uri).verify()
    return {"ok": result.ok, "rows": result.rows, "head": result.head, "problems": result.problems}


def decision_row(tracking_uri: str, name: str, version: int | str) -> dict[str, Any] | None:
    """The server's decision row of a version (``/weightgate/api/decision``), None when it has none
    (a version registered before the gate); ``updated_at`` (epoch seconds) is when it last changed:
    for a pending version, when it began to wait (registration, a rescan or a backfill)."""
    return _get(tracking_uri, "/weightgate/api/decision", {"name": name, "version": str(version)}, missing_ok=True)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _get(tracking_uri: str, path: str, params: dict[str, str], missing_ok: bool = False) -> dict[str, Any] | None:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    response = http_request(get_default_host_creds(tracking_uri), path, "GET", params=params, max_retries=0)
    if missing_ok and response.status_code == 404:
        return None
    if response.status_code != 200:
        raise GateInputError(f"{tracking_uri}{path} answered {response.status_code}: {response.text[:300]} "
                             "(is the server started with --app-name weightgate, and are "
                             "MLFLOW_TRACKING_USERNAME/PASSWORD set where it uses basic-auth?)")
    return response.json()


def _ledger(database_uri: str):
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from mlflow_plugin.server.ledger import Ledger, LedgerError

    try:
        return Ledger(sa.create_engine(database_uri), create=False)
    except (ArgumentError, NoSuchModuleError) as err:
        raise GateInputError(f"--tracking-uri {database_uri!r} is neither an http(s) MLflow server nor a database "
                             f"URI SQLAlchemy can open ({err})") from err
    except (OperationalError, LedgerError) as err:
        raise GateInputError(f"cannot read the weightgate ledger from {database_uri}: {err}") from err
