"""Adopting a registry that MLflow 2.x built: a real MLflow 2.x (its own virtualenv, with torch,
scikit-learn and transformers) serves a registry on sqlite or PostgreSQL and logs models with its
flavors' defaults (tests/mlflow2_registry.py: whole-model pytorch pickles, a cloudpickled sklearn
MLP, a transformers model), moves versions to Staging/Production and sets aliases; MLflow 3's
``mlflow db upgrade`` upgrades the database; MLflow 3 serves it with the gate; ``weightgate
backfill`` queues and decides every version, leaves stages and aliases as they were, and reports
the promoted versions the policy would block. The report is printed (``pytest -s``) and written to
test-output/adoption-report-{sqlite,postgresql}.txt.

The 2.x virtualenv is built once (about 6 minutes, 2 GB) in pytest's cache folder
(.pytest_cache/d/mlflow2-venv) and reused by later sessions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from deploy.local.mlflow_server import mlflow_server

from registry_helpers import decision_of

pytestmark = [pytest.mark.slow, pytest.mark.server]

# The last MLflow 2 release (installs on Python 3.11); torch pinned to the wheel the project uses;
# SQLAlchemy 2.0, as MLflow 2.22 needs (2.1 removed a pool class it imports), whose default PostgreSQL
# driver is psycopg2 (MLflow 2.22's queries fail under psycopg 3's server-side parameter types).
MLFLOW2_PACKAGES = ["mlflow==2.22.5", "torch==2.13.0", "scikit-learn", "transformers<5", "psycopg[binary]",
                    "sqlalchemy<2.1", "psycopg2-binary"]
GATE_ENV = {"WEIGHTGATE_WORKER_TOKEN": "adoption-worker", "MLFLOW_DISABLE_TELEMETRY": "true"}
OUTPUT = Path(__file__).resolve().parents[1] / "test-output"
DECIDED = {"approved", "warned", "blocked"}
# Pickled pytorch models (MLflow 2's default) are read by gate/sources/pickled without running them;
# a weightgate that cannot read them records `error` naming the refusal. Set to False only there.
PICKLES_ARE_READ = True


@pytest.fixture(scope="session")
def mlflow2_python(request) -> str:
    """The Python of a virtualenv holding MLflow 2.x, torch, scikit-learn and transformers."""
    folder = Path(request.config.cache.mkdir("mlflow2-venv"))
    venv, marker = folder / "venv", folder / "venv" / "weightgate-packages.json"
    python = venv / "bin" / "python"
    if not (marker.exists() and json.loads(marker.read_text()) == MLFLOW2_PACKAGES):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
        # --no-compile: byte-compiling torch, transformers and their kin is minutes on 2 cores; the few
        # modules the test imports compile on first import instead.
        installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-compile", *MLFLOW2_PACKAGES],
                                   capture_output=True, text=True, timeout=3600)
        assert installed.returncode == 0, installed.stderr[-3000:]
        marker.write_text(json.dumps(MLFLOW2_PACKAGES))
    return str(python)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=300) as response:
        return response.read().decode()


def test_a_registry_built_by_mlflow2_is_adopted(backend_store, mlflow2_python, minilm_dir, tmp_path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    listing = tmp_path / "mlflow2-versions.json"
    two_env = {"MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    with mlflow_server(tmp_path, env=two_env, backend_uri=backend_store, python=mlflow2_python) as url:
        built = subprocess.run([mlflow2_python, str(Path(__file__).with_name("mlflow2_registry.py")), url,
                                str(minilm_dir), str(listing)], capture_output=True, text=True, timeout=1800,
                               env={**os.environ, **two_env})
        assert built.returncode == 0, built.stderr[-4000:]
    before = json.loads(listing.read_text())
    assert before["mlflow"].startswith("2.")
    held = {(v["name"], v["version"]): (v["stage"], v["aliases"]) for v in before["versions"]}
    assert held[("ranker", 2)] == ("Production", []) and held[("encoder", 1)] == ("Production", ["prod"])

    upgrade = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", backend_store], capture_output=True,
                             text=True, timeout=1800)
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]

    with mlflow_server(tmp_path, ("--app-name", "weightgate"), env=GATE_ENV, backend_uri=backend_store) as url:
        client = MlflowClient(url, url)
        with pytest.raises(MlflowException, match="has no weightgate decision"):
            client.set_registered_model_alias("encoder", "champion", "1")  # nothing is approved before the backfill
        adopted = subprocess.run([sys.executable, "-m", "gate", "backfill", "--tracking-uri", url, "--device", "cpu",
                                  "--retry-delay", "0.5"], capture_output=True, text=True, timeout=3600,
                                 env={**os.environ, **GATE_ENV})
        assert adopted.returncode == 0, adopted.stderr[-4000:]
        database = backend_store.split(":")[0].split("+")[0]
        OUTPUT.mkdir(exist_ok=True)
        (OUTPUT / f"adoption-report-{database}.txt").write_text(
            f"$ weightgate backfill   # {database}, a registry MLflow {before['mlflow']} built, upgraded\n{adopted.stdout}")
        print(f"\n--- weightgate backfill report ({database}) ---\n{adopted.stdout}")

        rows = {key: decision_of(url, *key) for key in held}
        statuses = {key: row["status"] for key, row in rows.items()}
        assert "pending" not in statuses.values(), statuses
        for key, row in rows.items():
            readable = PICKLES_ARE_READ or key[0] != "ranker"
            if readable:
                assert row["status"] in DECIDED, (key, row["reason"])
            else:
                assert row["status"] in DECIDED | {"error"}, (key, row["reason"])
        assert statuses[("ranker", 2)] in {"blocked", "error"}  # a NaN weight
        if PICKLES_ARE_READ:
            assert statuses[("ranker", 1)] == "approved" and statuses[("ranker", 2)] == "blocked"
        assert statuses[("encoder", 1)] == "approved"

        # Stages and aliases are as MLflow 2 left them.
        for found in client.search_model_versions():
            version = client.get_model_version(found.name, found.version)  # with its aliases
            assert (version.current_stage, sorted(version.aliases)) == held[(version.name, int(version.version))]
        # Every promoted version the policy would not approve is reported, and nothing else.
        flagged = {key for key, (stage, aliases) in held.items()
                   if (stage in ("Staging", "Production") or {"champion", "prod", "production"} & set(aliases))
                   and statuses[key] != "approved"}
        lines = [line for line in adopted.stdout.splitlines() if line.startswith("models:/")]
        assert sorted(line.split(" ", 1)[0] for line in lines) == sorted(f"models:/{n}/{v}" for n, v in flagged)
        assert f"models:/ranker/2 in Production, {statuses[('ranker', 2)]}" in adopted.stdout
        assert "promoted_unapproved" in adopted.stderr  # ... and logged
        assert f"backfill: {len(held)} queued" in adopted.stdout

        page = _get(f"{url}/weightgate/?promoted=1&status={statuses[('ranker', 2)]}")
        assert 'data-model="ranker" data-version="2" class="attention"' in page and "in Production" in page
        ledger = json.loads(_get(f"{url}/weightgate/api/ledger?name=ranker"))["entries"]
        assert any(e["action"] == "backfill" and e["version"] == "2" and "holds Production" in e["detail"]
                   for e in ledger)
        again = subprocess.run([sys.executable, "-m", "gate", "backfill", "--tracking-uri", url, "--device", "cpu"],
                               capture_output=True, text=True, timeout=600, env={**os.environ, **GATE_ENV})
        assert again.returncode == 0 and "queued 0 version(s)" in again.stdout, again.stderr[-2000:]
