"""Start a real ``mlflow server`` process on loopback: the embedded default (sqlite + local
artifacts) for ``make demo`` and the integration tests, or any backend store URI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.local.lane import allow_processes

_SERVER_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 backend_uri: str | None = None, port: int | None = None,
                 static_prefix: str | None = None, python: str = sys.executable) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` in its own process group (sqlite in ``workdir`` unless ``backend_uri``,
    artifacts proxied to ``workdir/artifacts``); return the process and its URL once healthy.

    With ``static_prefix`` (``--static-prefix``) every route, ``/health`` included, is served below
    it, and the URL returned ends with it (what a client's tracking URI must be).

    MLflow's job runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``, on by default) starts several huey
    worker processes per server; the gate uses no server jobs, so it is off unless the caller's
    ``env`` or this process's environment sets it.

    ``python`` is the interpreter whose MLflow serves (another virtualenv's: an older MLflow).
    """
    allow_processes("an MLflow server")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}{static_prefix or ''}"
    command = [
        python, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri or f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", str(workdir / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        *(("--static-prefix", static_prefix) if static_prefix else ()), *extra_args,
    ]
    with (workdir / "mlflow-server.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
                                   env={**_SERVER_DEFAULTS, **os.environ, **(env or {})})
    try:
        _wait_until_healthy(url, process, workdir)
    except BaseException:
        stop_server(process)
        raise
    return process, url


def stop_server(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # the whole group has exited already (start_server reports why)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def mlflow_server(workdir: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                  backend_uri: str | None = None, port: int | None = None,
                  static_prefix: str | None = None, python: str = sys.executable) -> Iterator[str]:
    """:func:`start_server` for the duration of a ``with`` block; yields the URL."""
    process, url = start_server(workdir, extra_args, env, backend_uri, port, static_prefix, python)
    try:
        yield url
    finally:
        stop_server(process)


def _wait_until_healthy(url: str, process: subprocess.Popen, workdir: Path, timeout: float = 900) -> None:
    """Poll /health until it answers; the deadline only bounds a hang (a loaded 2-core machine
    has taken over a minute to start a server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(workdir / 'mlflow-server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not become healthy in {timeout} s")
