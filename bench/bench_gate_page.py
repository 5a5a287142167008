"""The gate page at registry scale: 10,000 model versions across 1,000 registered models, built
through MLflow's REST API on a real ``mlflow server --app-name weightgate`` (sqlite), each version
decided through the plugin's record endpoint (statuses mixed: approved, warned, blocked, error,
pending; 1% approved, put in Production, then re-decided blocked: "blocked but in Production").

Then, side by side in one run, each page is timed (median and worst of 5 requests, and its size):
this checkout's paged page, and the page of the code this branch started from (``--reference REV``,
default the merge base with main, exported with ``git archive``) serving a copy of the same
database, which renders every version in one response.

    python bench/bench_gate_page.py [--models 1000] [--versions-per-model 10] [--reference REV] [--postgresql]
                                    [--registry DIR [--build-only]]

With ``--registry DIR`` (sqlite only) the registry is built into DIR and kept (``--build-only``
stops after the build); a later run given the same DIR finds it built and only times the pages, so
the long build can run while the machine is busy and the timing when it is quiet.

Writes bench/out/gate_page.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.local.mlflow_server import mlflow_server

TOKEN = "bench-token"
ENV = {"WEIGHTGATE_WORKER_TOKEN": TOKEN, "MLFLOW_DISABLE_TELEMETRY": "true"}
STATUSES = ("approved", "approved", "approved", "warned", "blocked", "blocked", "error")  # by version number
REPEATS = 5


def call(url: str, path: str, body: dict | None = None, method: str = "POST", worker: bool = False) -> dict:
    headers = {"Content-Type": "application/json", **({"X-Weightgate-Token": TOKEN} if worker else {})}
    request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                     method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read() or b"{}")


@functools.cache
def policy_sha256() -> str:
    from gate.policy.schema import load_policy

    return load_policy().sha256


def decision(status: str, source: str, n: int) -> dict:
    return {"status": status, "summary": f"{status}: bench decision {n}", "source": source, "attempts": 1,
            "reason": f"bench decision {n}: " + ("all rules passed" if status == "approved" else "rule x failed"),
            "decided_at": "2026-12-01T00:00:00Z", "policy": "weightgate-default", "policy_sha256": policy_sha256(),
            "weights_sha256": f"{n:064x}", "baseline": "", "baseline_note": "bench"}


def record(url: str, name: str, version: int, status: str, source: str, n: int) -> None:
    call(url, "/api/2.0/weightgate/claim", {"name": name, "version": version, "worker": "bench"}, worker=True)
    call(url, "/api/2.0/weightgate/record", {"name": name, "version": version, "worker": "bench",
                                             "decision": decision(status, source, n)}, worker=True)


def build_model(url: str, index: int, per_model: int) -> None:
    name = f"model-{index:04d}"
    call(url, "/api/2.0/mlflow/registered-models/create", {"name": name})
    for version in range(1, per_model + 1):
        source = f"s3://bench-bucket/{name}/{version}"
        call(url, "/api/2.0/mlflow/model-versions/create", {"name": name, "source": source})
        n = index * per_model + version
        if version == per_model and index % 10 == 9:
            continue  # the newest version of every tenth model stays pending
        status = STATUSES[n % len(STATUSES)]
        if index % 100 == 0 and version == 1:  # approved, in Production, then re-decided blocked
            record(url, name, version, "approved", source, n)
            call(url, "/api/2.0/mlflow/model-versions/transition-stage",
                 {"name": name, "version": str(version), "stage": "Production", "archive_existing_versions": False})
            call(url, "/api/2.0/weightgate/rescan", {"name": name, "version": version}, worker=True)
            status = "blocked"
        record(url, name, version, status, source, n)
        if status == "approved" and version == 2:
            call(url, "/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": "champion",
                                                                  "version": str(version)})


def timed(url: str, path: str) -> dict:
    times, size = [], 0
    for _ in range(REPEATS):
        started = time.perf_counter()
        with urllib.request.urlopen(url + path, timeout=1800) as response:
            size = len(response.read())
        times.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3), "bytes": size}


def pages(models: int) -> dict[str, str]:
    """The page requests timed; ``model`` is one model in the middle of the registry."""
    model = f"model-{models // 2 + 1:04d}"
    return {
        "first page": "/weightgate/",
        "page 100": "/weightgate/?page=100",
        "search by name": f"/weightgate/?name={model}",
        "blocked but in Production": "/weightgate/?status=blocked&promoted=1",
        "status pending": "/weightgate/?status=pending",
        "model page": f"/weightgate/model?name={model}",
        "ledger JSON, first 1000 rows": "/weightgate/api/ledger",
        "ledger JSON, one model": f"/weightgate/api/ledger?name={model}",
    }


def reference_checkout(revision: str, scratch: Path) -> Path:
    """The gate code at ``revision`` (``git archive``), to serve the same database side by side."""
    folder = scratch / "reference"
    folder.mkdir()
    archive = subprocess.run(["git", "archive", revision, "gate", "mlflow_plugin"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions-per-model", type=int, default=10)
    parser.add_argument("--reference", default=None, help="git revision of the page to compare with "
                                                          "(default: the merge base with main)")
    parser.add_argument("--postgresql", action="store_true", help="PostgreSQL (Debian's packages) instead of sqlite")
    parser.add_argument("--registry", type=Path, default=None,
                        help="sqlite registry folder to build and keep, or to reuse when it holds a finished build")
    parser.add_argument("--build-only", action="store_true", help="with --registry: build it and stop")
    args = parser.parse_args()
    if args.build_only and not args.registry:
        parser.error("--build-only needs --registry (a build that is not kept is lost)")
    if args.registry and args.postgresql:
        parser.error("--registry keeps a sqlite registry; it cannot be combined with --postgresql")
    reference = args.reference or subprocess.run(["git", "merge-base", "HEAD", "main"], check=True,
                                                 capture_output=True, text=True).stdout.strip()
    results: dict = {"versions": args.models * args.versions_per_model, "models": args.models, "reference": reference,
                     "database": "postgresql" if args.postgresql else "sqlite"}
    with tempfile.TemporaryDirectory() as scratch_name, contextlib.ExitStack() as stack:
        scratch = Path(scratch_name)
        workdir, copy = args.registry or scratch / "server", scratch / "reference-server"
        workdir.mkdir(parents=True, exist_ok=True)
        copy.mkdir()
        built = workdir / "built.json"
        expected = {"models": args.models, "versions": results["versions"]}
        previous = json.loads(built.read_text()) if built.exists() else {}
        reuse = previous.get("registry") == expected
        if not reuse and (workdir / "mlflow.db").exists():
            raise SystemExit(f"{workdir} holds an unfinished or different registry; give an empty folder")
        backend = copy_backend = None
        if args.postgresql:
            from deploy.local.mlflow_server import free_port
            from deploy.local.postgres import create_database, postgres_server

            prefix = stack.enter_context(postgres_server(free_port()))
            backend = create_database(prefix, "gate_page_bench")
        with mlflow_server(workdir, ("--app-name", "weightgate"), env=ENV, backend_uri=backend) as url:
            if reuse:
                results["build_s"] = previous["build_s"]
                print(f"reusing the registry in {workdir} ({results['versions']} versions)", flush=True)
            else:
                started = time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda i: build_model(url, i, args.versions_per_model), range(args.models)))
                results["build_s"] = round(time.perf_counter() - started, 1)
                built.write_text(json.dumps({"registry": expected, "build_s": results["build_s"]}))
                print(f"built {results['versions']} versions in {results['build_s']} s", flush=True)
            if args.build_only:
                return
            results["paged"] = {label: timed(url, path) for label, path in pages(args.models).items()}
            for label, figures in results["paged"].items():
                print(f"paged     {label:32s} {figures}", flush=True)
        if args.postgresql:
            copy_backend = _copy_postgresql(backend)
        else:
            shutil.copy(workdir / "mlflow.db", copy / "mlflow.db")
        old_code = reference_checkout(reference, scratch)
        env = {**ENV, "PYTHONPATH": f"{old_code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with mlflow_server(copy, ("--app-name", "weightgate"), env=env, backend_uri=copy_backend) as url:
            results["reference_page"] = {"all versions at once": timed(url, "/weightgate/")}
            print(f"reference all versions at once {results['reference_page']['all versions at once']}", flush=True)
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/gate_page.json").write_text(json.dumps(results, indent=2))


def _copy_postgresql(backend: str) -> str:
    """A copy of the bench database (PostgreSQL's CREATE DATABASE ... TEMPLATE), for the reference server."""
    import sqlalchemy

    prefix, name = backend.rsplit("/", 1)
    engine = sqlalchemy.create_engine(f"{prefix}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}_reference" TEMPLATE "{name}"'))
    engine.dispose()
    return f"{prefix}/{name}_reference"


if __name__ == "__main__":
    sys.exit(main())
