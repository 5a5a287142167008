"""The deployment topology without a container engine: Debian's PostgreSQL, the MLflow server with
the gate (artifacts proxied to a local folder standing in for the object store), and a worker, all
on loopback, with their state in one folder.

    python deploy/local/topology.py up --state .weightgate-local --port 5005
    python deploy/local/topology.py restart-server --state .weightgate-local
    python deploy/local/topology.py down --state .weightgate-local

As root, PostgreSQL runs as the ``postgres`` user, which must be able to reach STATE (use a
folder such as /srv/weightgate, not one under /root). Credentials come from the environment (WEIGHTGATE_WORKER_TOKEN, WEIGHTGATE_OVERRIDE_TOKEN) or are
generated once into STATE/credentials.env; the same variables as in deploy/compose.yaml apply.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy.local.mlflow_server import free_port, start_server
from deploy.local.postgres import create_database, start_postgres, stop_postgres


def credentials(state: Path) -> dict[str, str]:
    path = state / "credentials.env"
    if path.exists():
        stored = dict(line.split("=", 1) for line in path.read_text().split())
    else:
        stored = {key: os.environ.get(key) or secrets.token_hex(16)
                  for key in ("WEIGHTGATE_WORKER_TOKEN", "WEIGHTGATE_OVERRIDE_TOKEN")}
        path.write_text("".join(f"{k}={v}\n" for k, v in stored.items()))
        path.chmod(0o600)
    return {**stored, "MLFLOW_DISABLE_TELEMETRY": "true"}


def up(state: Path, port: int) -> dict:
    state.mkdir(parents=True, exist_ok=True)
    topology_file = state / "topology.json"
    topology = json.loads(topology_file.read_text()) if topology_file.exists() else {}
    pg_port = topology.get("postgres_port") or free_port()
    prefix = start_postgres(str(state / "postgres"), pg_port)
    backend = topology.get("backend") or create_database(prefix, "mlflow")
    topology.update(postgres_port=pg_port, backend=backend, port=port)
    topology_file.write_text(json.dumps(topology))
    start_mlflow(state, topology)
    start_worker(state, topology)
    return json.loads(topology_file.read_text())


def start_mlflow(state: Path, topology: dict) -> None:
    process, url = start_server(state, ("--app-name", "weightgate", "--artifacts-destination",
                                        str(state / "artifacts")), env=credentials(state),
                                backend_uri=topology["backend"], port=topology["port"])
    topology.update(server_pid=process.pid, url=url)
    (state / "topology.json").write_text(json.dumps(topology))


def start_worker(state: Path, topology: dict) -> None:
    log = (state / "worker.log").open("a")
    worker = subprocess.Popen([sys.executable, "-m", "gate", "worker", "--tracking-uri", topology["url"],
                               "--poll-seconds", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, **credentials(state)})
    topology["worker_pid"] = worker.pid
    (state / "topology.json").write_text(json.dumps(topology))


def _stop(pid: int | None) -> None:
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _wait_gone(pid: int, seconds: float) -> bool:
    """Whether process group ``pid`` has exited within ``seconds`` (polled: a loaded machine may take long)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def restart_server(state: Path) -> dict:
    """Stop the server and start it again on the same port, once the old one has let the port go:
    started while the old server was still shutting down, the new one found the port taken and
    exited, and the old one answered the first requests before it went."""
    topology = json.loads((state / "topology.json").read_text())
    old = topology.get("server_pid")
    _stop(old)
    if old and not _wait_gone(old, 120):
        os.killpg(old, signal.SIGKILL)
        _wait_gone(old, 60)
    start_mlflow(state, topology)
    return topology


def down(state: Path) -> None:
    topology_file = state / "topology.json"
    if not topology_file.exists():
        return
    topology = json.loads(topology_file.read_text())
    _stop(topology.get("worker_pid"))
    _stop(topology.get("server_pid"))
    stop_postgres(str(state / "postgres"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "restart-server"])
    parser.add_argument("--state", type=Path, default=Path(".weightgate-local"))
    parser.add_argument("--port", type=int, default=5005)
    args = parser.parse_args()
    if args.action == "up":
        print(json.dumps(up(args.state.resolve(), args.port)))
    elif args.action == "restart-server":
        print(json.dumps(restart_server(args.state.resolve())))
    else:
        down(args.state.resolve())


if __name__ == "__main__":
    main()
