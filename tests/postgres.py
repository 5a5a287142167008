"""A throwaway PostgreSQL server on loopback, from Debian's packages, for integration tests.

``deploy/local/install-postgres.sh`` installs the packages on a fresh machine (``make test`` runs
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


def postgres_bin() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(candidates[-1]) if candidates else None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """Start PostgreSQL on 127.0.0.1:``port``; yield a URI prefix ``postgresql://postgres@host:port``."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run deploy/local/install-postgres.sh (make test does)")
    root = tempfile.mkdtemp(prefix="weightgate-pg-")
    os.chmod(root, 0o777)
    data = os.path.join(root, "data")
    if os.geteuid() == 0:
        os.makedirs(data)
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(_as_server_user([f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    log = os.path.join(root, "server.log")
    subprocess.run(_as_server_user([f"{bin_dir}/pg_ctl", "-D", data, "-l", log, "-w", "-o",
                                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        for _ in range(50):
            ready = subprocess.run([f"{bin_dir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
            if ready.returncode == 0:
                break
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_server_user([f"{bin_dir}/pg_ctl", "-D", data, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(uri_prefix: str, name: str) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{uri_prefix}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{uri_prefix}/{name}"
