"""A PostgreSQL server on loopback from Debian's packages: throwaway for the integration tests, or
kept in a state folder by the container-free deployment (deploy/local/topology.py).

``deploy/local/install-test-deps.sh`` installs the packages on a fresh machine (``make test`` runs
it). PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from deploy.local.lane import allow_processes


def postgres_bin() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(candidates[-1]) if candidates else None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_postgres(root: str, port: int) -> str:
    """Start PostgreSQL with its data in ``root``/data (created on first use) on 127.0.0.1:``port``;
    returns the URI prefix ``postgresql://postgres@127.0.0.1:port``."""
    allow_processes("PostgreSQL")
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run deploy/local/install-test-deps.sh (make test does)")
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o777)
    data = os.path.join(root, "data")
    if not os.path.exists(os.path.join(data, "PG_VERSION")):
        os.makedirs(data, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(_as_server_user([f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E",
                                        "UTF8"]), check=True, capture_output=True)
    log = os.path.join(root, "postgres.log")
    subprocess.run(_as_server_user([f"{bin_dir}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "600", "-o",
                                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    deadline = time.monotonic() + 600  # bounds a hang only; pg_ctl -w has usually waited already
    while subprocess.run([f"{bin_dir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL on port {port} did not accept connections: see {log}")
        time.sleep(0.2)
    return f"postgresql://postgres@127.0.0.1:{port}"


def stop_postgres(root: str) -> None:
    bin_dir = postgres_bin()
    if bin_dir:
        subprocess.run(_as_server_user([f"{bin_dir}/pg_ctl", "-D", os.path.join(root, "data"), "-m", "fast", "-t", "600",
                                        "stop"]),
                       capture_output=True)


@contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1:``port``; yields the URI prefix, removes everything after."""
    root = tempfile.mkdtemp(prefix="weightgate-pg-")
    try:
        yield start_postgres(root, port)
    finally:
        stop_postgres(root)
        shutil.rmtree(root, ignore_errors=True)


def create_database(uri_prefix: str, name: str) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{uri_prefix}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{uri_prefix}/{name}"
