"""The gate inside MLflow, against a real ``mlflow server --app-name weightgate`` process: pending on
registration, decisions by the worker, promotion refused or allowed on both route prefixes, tag
spoofing refused, overrides with their audit record, durability across worker and server restarts,
and concurrent workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deploy.local.mlflow_server import free_port, mlflow_server

from registry_helpers import decision_of, register_file, two_minilm_matrices

pytestmark = pytest.mark.server  # every test here runs against real servers

GATE_ENV = {"WEIGHTGATE_WORKER_TOKEN": "worker-secret", "WEIGHTGATE_OVERRIDE_TOKEN": "override-secret",
            "MLFLOW_DISABLE_TELEMETRY": "true"}


def _alias_paths() -> list[str]:
    """Every path MLflow serves "set a registered model alias" on (each API prefix), from its own table."""
    from mlflow.server.handlers import _set_registered_model_alias, get_endpoints

    return sorted(path for path, handler, methods in get_endpoints()
                  if handler is _set_registered_model_alias and "POST" in methods)


ALIAS_PATHS = _alias_paths()


@pytest.fixture(scope="module")
def weights(minilm_dir, tmp_path_factory):
    """A small healthy model (MiniLM's first encoder block) and copies with NaN / rank collapse."""
    folder = tmp_path_factory.mktemp("gate-weights")
    full = load_file(str(minilm_dir / "model.safetensors"))
    block = {k: v for k, v in full.items() if k.startswith("encoder.layer.0.")}
    broken = {k: v.clone() for k, v in block.items()}
    broken["encoder.layer.0.attention.self.key.weight"][0, 0] = float("nan")
    paths = {}
    for name, state in (("healthy", block), ("nan", broken)):
        (folder / name).mkdir()
        save_file(state, str(folder / name / "model.safetensors"))
        paths[name] = folder / name / "model.safetensors"
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory, backend_store):
    workdir = tmp_path_factory.mktemp("gate-server")
    port = free_port()
    with mlflow_server(workdir, ("--app-name", "weightgate"), env=GATE_ENV, port=port,
                       backend_uri=backend_store) as url:
        yield {"url": url, "workdir": workdir, "port": port, "backend": backend_store}


@pytest.fixture(scope="module")
def client(server):
    from mlflow import MlflowClient

    return MlflowClient(server["url"], server["url"])


def run_worker(url: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once", "--device", "cpu",
                           *extra], capture_output=True, text=True, timeout=1800, env={**os.environ, **GATE_ENV, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def post(url: str, path: str, body, headers: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def decided(server, client, weights):
    """Version 1 healthy, version 2 with NaN, scanned by one worker pass."""
    healthy = register_file(client, "encoder", weights["healthy"])
    broken = register_file(client, "encoder", weights["nan"])
    pending = {v: client.get_model_version("encoder", v).tags.get("gate.status") for v in (healthy, broken)}
    output = run_worker(server["url"])
    return {"healthy": healthy, "broken": broken, "pending_before": pending, "worker_output": output.stdout}


def test_registration_is_pending_until_the_worker_decides(server, client, decided):
    assert decided["pending_before"] == {decided["healthy"]: "pending", decided["broken"]: "pending"}
    assert "processed 2 model version(s)" in decided["worker_output"]
    healthy = client.get_model_version("encoder", decided["healthy"]).tags
    broken = client.get_model_version("encoder", decided["broken"]).tags
    assert healthy["gate.status"] == "approved", healthy
    assert broken["gate.status"] == "blocked"
    assert broken["gate.summary"].startswith(f"blocked: encoder.layer.0.attention.self.key: 1 NaN weight (of {384 * 384})")
    # The version shows four gate.* tags; the rest of the decision is in the server's table and the run.
    assert set(healthy) == set(broken) == {"gate.status", "gate.summary", "gate.page", "gate.decision_run"}
    assert broken["gate.page"] == f"{server['url']}/weightgate/model?name=encoder#v{decided['broken']}"
    row = decision_of(server["url"], "encoder", decided["broken"])
    assert row["status"] == "blocked" and "no-nonfinite-layers" in row["reason"]
    assert row["baseline"] == f"models:/encoder/{decided['healthy']}"  # the previous version
    assert row["decision_run"] == broken["gate.decision_run"] and isinstance(row["attempts"], int)
    from gate.policy.schema import load_policy

    healthy_row = decision_of(server["url"], "encoder", decided["healthy"])
    assert healthy_row["policy_sha256"] == load_policy().sha256
    assert len(healthy_row["weights_sha256"]) == 64
    assert healthy_row["source"] == client.get_model_version("encoder", decided["healthy"]).source


def test_decision_run_holds_metrics_series_and_artifacts(server, client, decided, tmp_path):
    run_id = client.get_model_version("encoder", decided["healthy"]).tags["gate.decision_run"]
    run = client.get_run(run_id)
    assert run.data.tags["weightgate.decision"] == "approve"
    row = decision_of(server["url"], "encoder", decided["healthy"])
    # the decision's details, beside the evidence
    assert {key: run.data.params[key] for key in ("policy_sha256", "weights_sha256", "source", "decided_at")} == \
        {key: row[key] for key in ("policy_sha256", "weights_sha256", "source", "decided_at")}
    assert run.data.params["attempts"] == str(row["attempts"]) and run.data.tags["weightgate.reason"] == row["reason"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's model-training view
    assert run.data.metrics["model.num_analysed"] == 6
    # what `weightgate rank` orders by, so the MLflow UI compares versions on the same numbers
    assert {"model.alpha_weighted", "model.alpha", "model.log_alpha_norm", "model.mlh"} <= set(run.data.metrics)
    series = client.get_metric_history(run_id, "layer.alpha")
    assert len(series) == 6 and sorted(m.step for m in series) == sorted(set(m.step for m in series))
    files = {f.path for f in client.list_artifacts(run_id, "weightgate")}
    assert {"weightgate/decision.json", "weightgate/layers.csv"} <= files
    local = client.download_artifacts(run_id, "weightgate/decision.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["decision"] == "approve"


def test_alias_route_has_every_prefix():
    assert {"/api/2.0/mlflow/registered-models/alias", "/ajax-api/2.0/mlflow/registered-models/alias"} <= set(ALIAS_PATHS)


@pytest.mark.parametrize("path", ALIAS_PATHS)
def test_protected_alias_refused_unless_approved(server, decided, path):
    status, body = post(server["url"], path, {"name": "encoder", "alias": "champion", "version": decided["broken"]})
    assert status == 403 and body["error_code"] == "PERMISSION_DENIED"
    assert "blocked by weightgate" in body["message"] and "no-nonfinite-layers" in body["message"]
    status, _ = post(server["url"], path, {"name": "encoder", "alias": "candidate", "version": decided["broken"]})
    assert status == 200  # not a protected alias
    status, _ = post(server["url"], path, {"name": "encoder", "alias": "champion", "version": decided["healthy"]})
    assert status == 200


WORKER = {"X-Weightgate-Token": "worker-secret"}
OVERRIDE = {"X-Weightgate-Override": "override-secret"}
MALFORMED = [  # (path, method, body, credential, the field the 400 names)
    ("/api/2.0/weightgate/claim", "POST", {"name": "encoder", "worker": "w"}, WORKER, "version"),
    ("/api/2.0/weightgate/claim", "POST", {"name": "encoder", "version": "two", "worker": "w"}, WORKER, "version"),
    ("/api/2.0/weightgate/claim", "POST", {"name": "encoder", "version": 1, "worker": "w", "lease_seconds": "soon"},
     WORKER, "lease_seconds"),
    ("/api/2.0/weightgate/record", "POST", {"name": "encoder", "version": "x", "worker": "w"}, WORKER, "version"),
    ("/api/2.0/weightgate/record", "POST", {"name": "encoder", "version": 1, "tags": {}}, WORKER, "worker"),
    ("/api/2.0/weightgate/record", "POST", {"name": "encoder", "version": 1, "worker": "w", "decision": ["approved"]},
     WORKER, "decision"),
    ("/api/2.0/weightgate/record", "POST", {"name": "encoder", "version": 1, "worker": "w", "decision": {
        "status": "fine", "summary": "s", "reason": "r", "source": "/x", "decided_at": "t", "attempts": 1}},
     WORKER, "decision.status"),
    ("/api/2.0/weightgate/record", "POST", {"name": "encoder", "version": 1, "worker": "w", "decision": {
        "status": "approved", "summary": "s", "reason": "r", "source": "/x", "decided_at": "t", "attempts": "two"}},
     WORKER, "decision.attempts"),
    ("/api/2.0/weightgate/rescan", "POST", {"version": 1}, OVERRIDE, "name"),
    ("/api/2.0/weightgate/rescan", "POST", {"name": "encoder", "version": "latest"}, OVERRIDE, "version"),
    ("/api/2.0/weightgate/override", "POST", {"name": "encoder", "version": 1, "reason": "   "}, OVERRIDE, "reason"),
    ("/api/2.0/weightgate/override", "POST", {"name": "encoder", "reason": "why"}, OVERRIDE, "version"),
    ("/api/2.0/mlflow/registered-models/alias", "POST", {"alias": "champion", "version": "1"}, None, "name"),
    ("/api/2.0/mlflow/registered-models/alias", "POST", {"name": ["encoder"], "alias": "champion", "version": "1"},
     None, "name"),
    ("/ajax-api/2.0/mlflow/registered-models/alias", "DELETE", {"name": ["encoder"], "alias": "champion"}, None,
     "name"),
    ("/api/2.0/mlflow/model-versions/transition-stage", "POST",
     {"name": {"model": "encoder"}, "version": "1", "stage": "Production"}, None, "name"),
    ("/api/2.0/mlflow/model-versions/set-tag", "POST", {"name": "encoder", "version": "1", "key": ["gate.status"],
                                                        "value": "approved"}, None, "key"),
    ("/api/2.0/mlflow/model-versions/create", "POST", {"name": "encoder", "source": "/tmp/x", "tags": 5}, None, "tags"),
    ("/api/2.0/mlflow/registered-models/create", "POST", {"name": "other", "tags": [{"key": ["gate.x"]}]}, None,
     "tags.0.key"),
]


@pytest.mark.parametrize("path, method, body, credential, field", MALFORMED,
                         ids=[f"{m[1]} {m[0].rsplit('/', 1)[-1]} {m[4]}" for m in MALFORMED])
def test_malformed_requests_are_400_naming_the_field(server, path, method, body, credential, field):
    status, answer = post(server["url"], path, body, credential, method)
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and f"'{field}'" in answer["message"], answer


def test_bodies_that_are_not_objects_and_fields_mlflow_checks_itself(server):
    status, answer = post(server["url"], "/api/2.0/weightgate/claim", ["encoder", 1], WORKER)
    assert status == 400 and "must be a JSON object" in answer["message"]
    # Without an alias the gate has nothing to check: MLflow's own 400 names the field.
    status, answer = post(server["url"], "/api/2.0/mlflow/registered-models/alias", {"name": "encoder", "version": "1"})
    assert status == 400 and "Missing value for required parameter 'alias'" in answer["message"]
    status, answer = post(server["url"], "/api/2.0/weightgate/override",
                          {"name": "encoder", "version": 999, "reason": "no such version"}, OVERRIDE)
    assert status == 404 and answer["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_static_prefix_routes_are_guarded(tmp_path, weights):
    """``mlflow server --static-prefix``: every route moves below the prefix, and the gate's tables
    (built from MLflow's endpoint table) move with it: the new version is pending, and a protected
    alias is refused on each API prefix."""
    from mlflow import MlflowClient

    with mlflow_server(tmp_path, ("--app-name", "weightgate"), env=GATE_ENV, static_prefix="/registry") as url:
        client = MlflowClient(url, url)
        version = register_file(client, "prefixed", weights["healthy"])
        assert client.get_model_version("prefixed", version).tags.get("gate.status") == "pending"
        root = url.removesuffix("/registry")
        for path in ALIAS_PATHS:
            status, body = post(root, "/registry" + path, {"name": "prefixed", "alias": "champion", "version": version})
            assert status == 403 and "waiting for its weightgate scan" in body["message"], (path, body)
        assert "champion" not in client.get_registered_model("prefixed").aliases


def test_client_sees_permission_denied_and_stage_rules(client, decided):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        client.set_registered_model_alias("encoder", "Production", decided["broken"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(MlflowException, match="cannot move to stage Production"):
            client.transition_model_version_stage("encoder", decided["broken"], "Production")
        client.transition_model_version_stage("encoder", decided["broken"], "Archived")  # not a promotion
        moved = client.transition_model_version_stage("encoder", decided["healthy"], "Staging")
    assert moved.current_stage == "Staging"


def test_gate_tags_cannot_be_spoofed(server, client, decided, weights):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="written only by weightgate"):
        client.set_model_version_tag("encoder", decided["broken"], "gate.status", "approved")
    with pytest.raises(MlflowException, match="written only by weightgate"):
        client.delete_model_version_tag("encoder", decided["broken"], "gate.status")
    with pytest.raises(MlflowException, match="written only by weightgate"):
        client.set_registered_model_tag("encoder", "gate.trusted", "yes")
    status, _ = post(server["url"], "/api/2.0/weightgate/record",
                     {"name": "encoder", "version": 2, "worker": "me", "decision": {"status": "approved"}})
    assert status == 403
    assert client.get_model_version("encoder", decided["broken"]).tags["gate.status"] == "blocked"
    client.set_model_version_tag("encoder", decided["broken"], "team.note", "ordinary tags still work")


def ledger_rows(url: str, name: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/weightgate/api/ledger?name={name}", timeout=120) as response:
        return json.loads(response.read())["entries"]


def test_a_copy_drops_its_source_gate_tags_and_is_decided_itself(server, client, decided):
    """MLflow's "copy model version" (the UI's Promote model) sends the source's tags with the new
    version: the gate.* ones are dropped, not refused, the drop is in the ledger, and the copy waits
    for its own decision in its own model."""
    healthy = decided["healthy"]
    copy = client.copy_model_version(f"models:/encoder/{healthy}", "encoder-prod")  # raises on a 403
    tags = client.get_model_version("encoder-prod", copy.version).tags
    assert tags["gate.status"] == "pending" and "gate.decision_run" not in tags
    assert "source's gate.* tags, which were dropped" in tags["gate.summary"]
    rows = ledger_rows(server["url"], "encoder-prod")
    assert [(r["action"], r["outcome"], r["status"]) for r in rows] == [
        ("registered", "recorded", "pending"), ("gate-tags-dropped", "recorded", "pending")]
    assert "gate.status=approved" in rows[1]["detail"] and f"models:/encoder/{healthy}" in rows[1]["detail"]
    with pytest.raises(Exception, match="waiting for its weightgate scan"):
        client.set_registered_model_alias("encoder-prod", "champion", copy.version)
    # The UI's own request, with a client-made gate tag: created (200), the tag left out.
    status, body = post(server["url"], "/ajax-api/2.0/mlflow/model-versions/create",
                        {"name": "encoder-prod", "source": f"models:/encoder/{decided['broken']}",
                         "tags": [{"key": "gate.status", "value": "approved"}, {"key": "team", "value": "search"}]})
    assert status == 200, body
    tags = client.get_model_version("encoder-prod", body["model_version"]["version"]).tags
    assert tags["gate.status"] == "pending" and tags["team"] == "search"
    run_worker(server["url"])
    copied, source = decision_of(server["url"], "encoder-prod", copy.version), decision_of(server["url"], "encoder", healthy)
    assert copied["status"] == "approved" and copied["source"] == f"models:/encoder/{healthy}"
    assert copied["weights_sha256"] == source["weights_sha256"]  # the same weights, judged again in their new model
    assert copied["decision_run"] != source["decision_run"]
    client.set_registered_model_alias("encoder-prod", "champion", copy.version)
    assert decision_of(server["url"], "encoder-prod", body["model_version"]["version"])["status"] == "blocked"


def test_alias_deletions_record_the_version_held_or_that_nothing_was_there(server, client, decided):
    healthy = decided["healthy"]
    client.set_registered_model_alias("encoder", "production", healthy)
    # As MLflow's UI alias editor sends it (name, alias and a version), here a stale version.
    status, _ = post(server["url"], "/ajax-api/2.0/mlflow/registered-models/alias",
                     {"name": "encoder", "alias": "production", "version": "99"}, method="DELETE")
    assert status == 200
    status, _ = post(server["url"], "/api/2.0/mlflow/registered-models/alias",
                     {"name": "encoder", "alias": "production"}, method="DELETE")
    assert status == 200  # MLflow answers a deletion of a missing alias with success
    deletions = [r for r in ledger_rows(server["url"], "encoder") if r["action"] == "alias-delete"
                 and r["target"] == "production"]
    assert [(r["version"], r["outcome"]) for r in deletions[-2:]] == [(str(healthy), "allowed"), ("", "not-found")]
    assert "nothing was deleted" in deletions[-1]["detail"]


def test_override_needs_credential_and_is_audited(server, client, decided):
    url = server["url"]
    refused = subprocess.run([sys.executable, "-m", "gate", "override", "encoder", str(decided["broken"]), "--reason",
                              "no credential", "--tracking-uri", url], capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in os.environ.items() if not k.startswith("WEIGHTGATE_")})
    assert refused.returncode == 2 and "override refused (403)" in refused.stderr
    done = subprocess.run([sys.executable, "-m", "gate", "override", "encoder", str(decided["broken"]), "--reason",
                           "hotfix approved by the platform lead", "--tracking-uri", url], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "WEIGHTGATE_OVERRIDE_TOKEN": "override-secret"})
    assert done.returncode == 0, done.stderr
    tags = client.get_model_version("encoder", decided["broken"]).tags
    assert tags["gate.status"] == "overridden" and len([k for k in tags if k.startswith("gate.")]) == 4
    assert tags["gate.summary"].startswith("overridden: approved by override-credential:")
    row = decision_of(url, "encoder", decided["broken"])
    assert row["override_reason"] == "hotfix approved by the platform lead"
    assert row["override_by"].startswith("override-credential:")
    assert row["override_previous_status"] == "blocked" and row["override_at"].endswith("Z")
    assert "no-nonfinite-layers" in row["reason"]  # the overridden decision stays on record
    note = client.get_run(tags["gate.decision_run"]).data.tags["weightgate.override"]
    assert "hotfix approved by the platform lead" in note and "(was blocked)" in note
    client.set_registered_model_alias("encoder", "prod", decided["broken"])  # now allowed
    assert "weightgate override" in (server["workdir"] / "mlflow-server.log").read_text()


def test_expired_claim_is_taken_over(server, client, weights):
    """A worker that dies after claiming leaves the version pending while its lease runs; once the
    lease has run out another worker finishes it, and the dead worker can no longer record anything.

    No clock is involved: the claim is held with an hour's lease, then the same worker renews it
    with a lease of 0 s, which is exactly "the lease has run out"."""
    version = register_file(client, "takeover", weights["healthy"])
    headers = {"X-Weightgate-Token": "worker-secret"}

    def claim_as_dead_worker(lease_seconds: float) -> tuple[int, dict]:
        return post(server["url"], "/api/2.0/weightgate/claim",
                    {"name": "takeover", "version": int(version), "worker": "dead-worker",
                     "lease_seconds": lease_seconds}, headers)

    assert claim_as_dead_worker(3600) == (200, {"claimed": True})
    assert "processed 0 model version(s)" in run_worker(server["url"]).stdout
    assert client.get_model_version("takeover", version).tags["gate.status"] == "pending"  # claim still held
    assert claim_as_dead_worker(0) == (200, {"claimed": True})  # the lease runs out now
    assert "processed 1 model version(s)" in run_worker(server["url"]).stdout
    assert client.get_model_version("takeover", version).tags["gate.status"] == "approved"
    late = {"status": "blocked", "summary": "blocked: late", "reason": "late", "source": "x", "decided_at": "t",
            "attempts": 1}
    status, _ = post(server["url"], "/api/2.0/weightgate/record",
                     {"name": "takeover", "version": int(version), "worker": "dead-worker", "decision": late}, headers)
    assert status == 409
    assert claim_as_dead_worker(3600) == (200, {"claimed": False})  # a recorded version cannot be claimed
    assert client.get_model_version("takeover", version).tags["gate.status"] == "approved"


def test_registration_storm_each_version_decided_once(server, client, minilm_dir):
    """Versions registered while three workers poll: every one decided exactly once, by one run.

    ``make test`` registers WEIGHTGATE_STORM_VERSIONS (default 12); ``make storm`` the full 50."""
    count = int(os.environ.get("WEIGHTGATE_STORM_VERSIONS", "12"))
    folder = Path(server["workdir"]) / "storm"
    folder.mkdir()
    save_file(two_minilm_matrices(minilm_dir), str(folder / "model.safetensors"))
    workers = [subprocess.Popen([sys.executable, "-m", "gate", "worker", "--tracking-uri", server["url"],
                                 "--poll-seconds", "0.5", "--device", "cpu", "--worker-id", f"storm-{n}",
                                 "--retry-delay", "0.5", "--retries", "8"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, **GATE_ENV}) for n in range(3)]
    try:
        with ThreadPoolExecutor(4) as pool:
            versions = list(pool.map(lambda _: register_file(client, "storm", folder / "model.safetensors"),
                                     range(count)))
        assert len(set(versions)) == count
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            statuses = [v.tags.get("gate.status") for v in client.search_model_versions("name='storm'")]
            if len(statuses) == count and "pending" not in statuses:
                break
            assert all(w.poll() is None for w in workers), "a worker died during the storm"
            time.sleep(1)
    finally:
        for w in workers:
            w.terminate()
            w.wait(timeout=60)
    statuses = [client.get_model_version("storm", v).tags.get("gate.status") for v in versions]
    assert statuses == ["approved"] * count
    experiment = client.get_experiment_by_name("weightgate")
    runs = client.search_runs([experiment.experiment_id], "tags.`weightgate.model` = 'storm'", max_results=1000)
    assert sorted(int(r.data.tags["weightgate.version"]) for r in runs) == sorted(int(v) for v in versions)
    decision_runs = {client.get_model_version("storm", v).tags["gate.decision_run"] for v in versions}
    assert decision_runs == {r.info.run_id for r in runs}


def test_worker_down_then_up_and_server_restart_lose_nothing(tmp_path, weights, server):
    """Registered while no worker runs -> pending; the server restarts; a worker then catches up."""
    from mlflow import MlflowClient

    port = free_port()
    backend = f"sqlite:///{tmp_path / 'restart.db'}" if "sqlite" in server["backend"] else server["backend"]
    server_args = dict(env=GATE_ENV, port=port, backend_uri=backend)
    with mlflow_server(tmp_path, ("--app-name", "weightgate"), **server_args) as url:
        first = MlflowClient(url, url)
        version = register_file(first, "restart", weights["healthy"])
        assert first.get_model_version("restart", version).tags["gate.status"] == "pending"
    with mlflow_server(tmp_path, ("--app-name", "weightgate"), **server_args) as url:
        again = MlflowClient(url, url)
        assert again.get_model_version("restart", version).tags["gate.status"] == "pending"
        run_worker(url)
        assert again.get_model_version("restart", version).tags["gate.status"] == "approved"
    with mlflow_server(tmp_path, ("--app-name", "weightgate"), **server_args) as url:
        after = MlflowClient(url, url)
        assert after.get_model_version("restart", version).tags["gate.status"] == "approved"
        after.set_registered_model_alias("restart", "champion", version)


def test_log_model_registration_pt2_is_scanned_without_unpickling(server, client):
    """``mlflow.pytorch.log_model(registered_model_name=...)``: source ``models:/m-<id>``, pt2 format."""
    import mlflow
    import mlflow.pytorch
    import numpy as np

    mlflow.set_tracking_uri(server["url"])
    mlflow.set_registry_uri(server["url"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run():
            info = mlflow.pytorch.log_model(model, name="model", registered_model_name="logged",
                                            input_example=np.zeros((1, 32), np.float32))
    version = client.search_model_versions("name='logged'")[0]
    assert version.source.startswith("models:/m-") and info.model_id in version.source
    assert client.get_model_version("logged", version.version).tags["gate.status"] == "pending"
    run_worker(server["url"])
    tags = client.get_model_version("logged", version.version).tags
    assert tags["gate.status"] == "blocked"
    assert "no-nonfinite-layers" in decision_of(server["url"], "logged", version.version)["reason"]


def test_queue_command_reports_statuses(server, decided):
    proc = subprocess.run([sys.executable, "-m", "gate", "queue", "--tracking-uri", server["url"], "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["by_status"].get("approved", 0) >= 1 and report["by_status"].get("blocked", 0) + \
        report["by_status"].get("overridden", 0) >= 1
