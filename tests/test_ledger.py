"""The promotion ledger: hash chain checked by hand, tamper detection (edited, deleted, truncated
rows) on sqlite and PostgreSQL, and the server recording every promotion attempt behind basic-auth
(read back through the JSON route and ``weightgate audit``; tampered in the database, then caught)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import save_file

from deploy.local.mlflow_server import mlflow_server
from mlflow_plugin.server.ledger import GENESIS, Entry, Ledger, LedgerError

from registry_helpers import register_file

ADMIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "weightgate-admin-pw1"}
ENV = {"WEIGHTGATE_WORKER_TOKEN": "ledger-worker", "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN["MLFLOW_TRACKING_PASSWORD"],
       "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def database_uri(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    from deploy.local.postgres import create_database

    return create_database(request.getfixturevalue("postgres_uri_prefix"), f"ledger_{uuid.uuid4().hex[:10]}")


def _entry(i: int) -> Entry:
    return Entry(user="alice", model="m", version=str(i), action="alias-set", target="champion",
                 outcome="refused" if i % 2 else "allowed", status="blocked", policy_sha256="ab" * 32, detail=f"try {i}")


def test_chain_is_sha256_of_previous_hash_and_canonical_json(database_uri):
    engine = sa.create_engine(database_uri)
    ledger = Ledger(engine)
    first = ledger.append(_entry(1))
    second = ledger.append(_entry(2))
    content = {"id": 1, "at": first.at, "user": "alice", "model": "m", "version": "1", "action": "alias-set",
               "target": "champion", "outcome": "refused", "status": "blocked", "policy_sha256": "ab" * 32,
               "detail": "try 1"}
    by_hand = hashlib.sha256((GENESIS + json.dumps(content, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()
    assert first.prev_hash == GENESIS and first.hash == by_hand
    assert second.prev_hash == first.hash and second.id == 2
    again = Ledger(engine)  # the server restarting: nothing recreated, nothing lost
    assert [e.hash for e in again.entries()] == [first.hash, second.hash]
    with engine.connect() as connection:
        meta = dict(connection.execute(sa.text("SELECT key, value FROM weightgate_ledger_meta")).all())
    assert meta == {"schema_version": "1", "head": second.hash, "count": "2"}
    assert again.verify().ok


def test_verify_names_edited_and_deleted_rows(database_uri):
    engine = sa.create_engine(database_uri)
    ledger = Ledger(engine)
    for i in range(1, 7):
        ledger.append(_entry(i))
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE weightgate_ledger SET outcome = 'allowed' WHERE id = 3"))
    problems = ledger.verify().problems
    assert problems == ["row 3 (m version 3, alias-set champion) was edited: its content no longer matches its hash"]
    with engine.begin() as connection:  # the forger also rewrites the row's own hash: the next row's link breaks
        stored = connection.execute(sa.text("SELECT * FROM weightgate_ledger WHERE id = 3")).mappings().one()
        content = {k: stored[k] for k in ("id", "at", "user", "model", "version", "action", "target", "outcome",
                                          "status", "policy_sha256", "detail")}
        forged = hashlib.sha256((stored["prev_hash"] + json.dumps(content, sort_keys=True, separators=(",", ":")))
                                .encode()).hexdigest()
        connection.execute(sa.text("UPDATE weightgate_ledger SET hash = :h WHERE id = 3"), {"h": forged})
    assert ledger.verify().problems == [
        "row 4 (m version 4, alias-set champion) does not link to row 3: row 3 was edited (its hash rewritten) or replaced"]
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM weightgate_ledger WHERE id = 5"))
        connection.execute(sa.text("DELETE FROM weightgate_ledger WHERE id = 6"))
    problems = ledger.verify().problems
    assert problems[-1] == "rows 5-6 deleted (the ledger head records 6 rows)"
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM weightgate_ledger WHERE id = 2"))
    assert "row 2 deleted (the chain jumps from row 1 to row 3)" in ledger.verify().problems


def test_newer_schema_is_refused_and_readers_never_create(tmp_path):
    uri = f"sqlite:///{tmp_path / 'l.db'}"
    with pytest.raises(LedgerError, match="holds no weightgate ledger"):
        Ledger(sa.create_engine(uri), create=False)
    engine = sa.create_engine(uri)
    Ledger(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE weightgate_ledger_meta SET value = '2' WHERE key = 'schema_version'"))
    with pytest.raises(LedgerError, match="schema version 2, newer"):
        Ledger(engine)


def _get(url: str, auth: bool = True) -> tuple[int, str]:
    headers = {}
    if auth:
        token = base64.b64encode(f"{ADMIN['MLFLOW_TRACKING_USERNAME']}:{ADMIN['MLFLOW_TRACKING_PASSWORD']}".encode())
        headers["Authorization"] = f"Basic {token.decode()}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _worker_call(url: str, endpoint: str, body: dict) -> dict:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    response = http_request(get_default_host_creds(url), f"/api/2.0/weightgate/{endpoint}", "POST", json=body,
                            extra_headers={"X-Weightgate-Token": ENV["WEIGHTGATE_WORKER_TOKEN"]})
    assert response.status_code == 200, response.text
    return response.json()


def _weightgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gate", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ADMIN})


@pytest.mark.server
def test_server_records_promotions_behind_basic_auth(tmp_path, monkeypatch, postgres_uri_prefix):
    """On PostgreSQL (tests/test_browser.py runs the gate on sqlite): the plugin creates the ledger at
    startup."""
    from deploy.local.postgres import create_database

    backend_store = create_database(postgres_uri_prefix, f"mlflow_{uuid.uuid4().hex[:10]}")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from gate.policy.schema import load_policy

    for key, value in ADMIN.items():
        monkeypatch.setenv(key, value)
    with mlflow_server(tmp_path, ("--app-name", "weightgate-basic-auth"), env=ENV, backend_uri=backend_store) as url:
        for path in ("/weightgate/", "/weightgate/model?name=audited", "/weightgate/api/ledger",
                     "/weightgate/api/ledger/verify"):
            assert _get(url + path, auth=False)[0] == 401, path  # the gate page is behind basic-auth
        client = MlflowClient(url, url)
        save_file({"w.weight": torch.randn(64, 64, generator=torch.Generator().manual_seed(0))},
                  tmp_path / "model.safetensors")
        version = client.get_model_version("audited", register_file(client, "audited", tmp_path / "model.safetensors"))
        with pytest.raises(MlflowException, match="waiting for its weightgate scan"):
            client.set_registered_model_alias("audited", "champion", version.version)
        client.set_registered_model_alias("audited", "candidate", version.version)  # unprotected: not recorded
        with pytest.raises(MlflowException, match="written only by weightgate"):
            client.set_model_version_tag("audited", version.version, "gate.status", "approved")
        sha = load_policy(None).sha256
        assert _worker_call(url, "claim", {"name": "audited", "version": 1, "worker": "w1"})["claimed"]
        _worker_call(url, "record", {"name": "audited", "version": 1, "worker": "w1", "decision": {
            "status": "approved", "summary": "approved: all 9 rules passed", "reason": "all 9 rules passed",
            "policy_sha256": sha, "source": version.source, "decided_at": "2026-12-02T03:04:05Z", "attempts": 1}})
        client.set_registered_model_alias("audited", "champion", version.version)
        client.transition_model_version_stage("audited", version.version, "Production")
        client.delete_registered_model_alias("audited", "champion")

        status, body = _get(f"{url}/weightgate/api/ledger?name=audited")
        assert status == 200
        rows = [(e["user"], e["version"], e["action"], e["target"], e["outcome"], e["status"])
                for e in json.loads(body)["entries"]]
        assert rows == [
            ("admin", "1", "registered", "", "recorded", "pending"),
            ("admin", "1", "alias-set", "champion", "refused", "pending"),
            ("admin", "1", "decision", "approved", "refused", "pending"),
            ("worker:w1", "1", "decision", "approved", "recorded", "approved"),
            ("admin", "1", "alias-set", "champion", "allowed", "approved"),
            ("admin", "1", "stage-transition", "Production", "allowed", "approved"),
            ("admin", "1", "alias-delete", "champion", "allowed", "approved"),
        ]
        entries = json.loads(body)["entries"]
        assert "waiting for its weightgate scan" in entries[1]["detail"]
        assert entries[4]["policy_sha256"] == sha

        shown = _weightgate("audit", "audited", "--tracking-uri", url, "--format", "csv")
        assert shown.returncode == 0, shown.stderr
        parsed = list(csv.DictReader(io.StringIO(shown.stdout)))
        assert [(r["action"], r["outcome"]) for r in parsed] == [(a, o) for _, _, a, _, o, _ in rows]
        table = _weightgate("audit", "audited", "--tracking-uri", url)
        assert "alias-set" in table.stdout and "refused" in table.stdout and "worker:w1" in table.stdout
        assert _weightgate("audit", "verify", "--tracking-uri", url).stdout.startswith("ledger ok: 7 rows")

        page_status, page = _get(f"{url}/weightgate/model?name=audited")
        assert page_status == 200 and "Promotion history" in page and "stage-transition" in page

        engine = sa.create_engine(backend_store)  # tamper: turn the refused promotion into an allowed one
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE weightgate_ledger SET outcome = 'allowed' WHERE id = 2"))
        engine.dispose()
        for where in (url, backend_store):  # through the server, and an auditor reading the database
            verdict = _weightgate("audit", "verify", "--tracking-uri", where)
            assert verdict.returncode == 1, verdict.stderr
            assert "row 2 (audited version 1, alias-set champion) was edited" in verdict.stdout
