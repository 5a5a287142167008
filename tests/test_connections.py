"""Connections fail fast and say where; the worker checks its server at start; JSON logs are JSON.

Against real processes: a ``models:/`` or ``runs:/`` source with no tracking URI is refused without
creating a local database; an address where nothing listens, and a server that accepts the
connection but never answers, are reported within 30 seconds, naming the URI (MLflow's own retry
and timeout settings, set by the ``weightgate`` commands); a worker with a wrong credential, a
server without the plugin, an unreachable server or another policy ends at start with exit 2 and
the cause; ``--log-format json`` writes nothing but JSON objects, with typed numbers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from deploy.local.mlflow_server import free_port, mlflow_server
from gate.mlflow_connection import HTTP_DEFAULTS

from registry_helpers import register_file, two_minilm_matrices

pytestmark = [pytest.mark.slow, pytest.mark.server]  # a module-scoped gate server
GATE_ENV = {"WEIGHTGATE_WORKER_TOKEN": "connections-secret", "MLFLOW_DISABLE_TELEMETRY": "true"}
DEADLINE_SECONDS = 30.0  # what the user was promised; MLflow's own defaults take about four minutes


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MLflow server or HTTP setting, plus ``extra``."""
    drop = {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", *HTTP_DEFAULTS}
    return {**{k: v for k, v in os.environ.items() if k not in drop and not k.startswith("WEIGHTGATE_")}, **extra}


def _weightgate(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gate", *args], capture_output=True, text=True, timeout=900,
                          cwd=cwd, env=_clean_env(**env))


@pytest.fixture(scope="module")
def gate_server(tmp_path_factory, minilm_dir):
    workdir = tmp_path_factory.mktemp("connections-server")
    save_file(two_minilm_matrices(minilm_dir), str(workdir / "model.safetensors"))
    with mlflow_server(workdir, ("--app-name", "weightgate"), env=GATE_ENV) as url:
        yield {"url": url, "weights": workdir / "model.safetensors"}


@pytest.fixture
def cli_env(monkeypatch):
    """An in-process CliRunner whose MLflow settings are the commands' own (restored afterwards)."""
    for key in (*HTTP_DEFAULTS, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    from gate.cli.app import main

    return lambda *args: CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("source", ["models:/fraud/1", "runs:/0123456789abcdef/model"])
def test_a_registry_source_without_a_tracking_uri_is_refused_and_creates_nothing(tmp_path, source):
    proc = _weightgate("scan", source, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"weightgate: error: {source} is read from an MLflow server, and none was named" in proc.stderr
    assert "--tracking-uri" in proc.stderr and "MLFLOW_TRACKING_URI" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no ./mlflow.db, no ./mlruns


def test_nothing_listening_is_reported_at_once_naming_the_server(cli_env):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["scan", "models:/fraud/1"], ["check", "runs:/0123456789abcdef/model"], ["rank", "models:/fraud"]):
        started = time.monotonic()
        result = cli_env(*args, "--tracking-uri", url)
        elapsed = time.monotonic() - started
        assert result.exit_code == 2, (args, result.output)
        assert f"cannot reach the MLflow tracking server at {url} (connection refused)" in result.output, result.output
        assert len(result.output) < 400 and "HTTPConnectionPool" not in result.output
        assert elapsed < DEADLINE_SECONDS, (args, elapsed)


def test_a_server_that_never_answers_is_reported_within_30_seconds(cli_env):
    """A listening socket nobody serves: the kernel completes the handshake, no answer ever comes
    (a hung server, a firewall that black-holes): MLflow's timeout and one retry bound the wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = cli_env("scan", "models:/fraud/1", "--tracking-uri", url)
        elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert f"cannot reach the MLflow tracking server at {url} (timed out)" in result.output, result.output
    assert elapsed < DEADLINE_SECONDS


def test_settings_the_user_gave_are_kept(cli_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    result = cli_env("scan", "models:/fraud/1", "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 2
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def _worker(url: str, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return _weightgate("worker", "--tracking-uri", url, "--once", "--device", "cpu", *extra, **env)


def test_worker_with_a_wrong_token_stops_at_start(gate_server):
    proc = _worker(gate_server["url"], WEIGHTGATE_WORKER_TOKEN="not-the-servers")
    assert proc.returncode == 2, proc.stderr
    assert f"the MLflow server at {gate_server['url']} refused this worker's credential" in proc.stderr
    assert "Traceback" not in proc.stderr and "processed" not in proc.stdout


def test_worker_against_a_server_without_the_plugin_stops_at_start(mlflow_tracking_uri):
    proc = _worker(mlflow_tracking_uri, **GATE_ENV)
    assert proc.returncode == 2, proc.stderr
    assert f"the MLflow server at {mlflow_tracking_uri} does not run the weightgate plugin" in proc.stderr
    assert "--app-name weightgate" in proc.stderr


def test_worker_against_nothing_stops_at_start():
    url = f"http://127.0.0.1:{free_port()}"
    proc = _worker(url, **GATE_ENV)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot reach the MLflow server at {url} (connection refused)" in proc.stderr


def test_worker_with_another_policy_than_the_servers_stops_at_start(gate_server, tmp_path):
    from gate.policy.schema import default_policy_path

    edited = tmp_path / "policy.yaml"
    edited.write_text(Path(default_policy_path()).read_text() + "\n# edited by the team\n")
    proc = _worker(gate_server["url"], "--policy", str(edited), **GATE_ENV)
    assert proc.returncode == 2, proc.stderr
    assert "is not the one the server" in proc.stderr and "WEIGHTGATE_POLICY" in proc.stderr


def test_json_logs_are_json_lines_only_with_typed_numbers(gate_server):
    """MLflow's download progress bars and "View run" links, library warnings: all JSON or gone."""
    from mlflow import MlflowClient

    client = MlflowClient(gate_server["url"], gate_server["url"])
    version = register_file(client, "json-logs", gate_server["weights"])
    proc = _worker(gate_server["url"], "--log-format", "json", **GATE_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = []
    for stream in (proc.stdout, proc.stderr):
        for line in stream.splitlines():
            if line.strip():
                entry = json.loads(line)  # raises on anything that is not JSON
                assert isinstance(entry, dict) and {"time", "level", "message"} <= set(entry)
                entries.append(entry)
    done = [e for e in entries if e.get("event") == "version_done" and e["model"] == "json-logs"]
    assert len(done) == 1 and done[0]["version"] == int(version) and done[0]["outcome"] == "approved"
    assert isinstance(done[0]["attempts"], int) and isinstance(done[0]["duration_s"], float)
    assert [e["processed"] for e in entries if e.get("event") == "worker_done"] == [1]
    assert not any("View run" in e["message"] for e in entries)


# MLflow warning while it is first imported (as mlflow 3.18.0 does over a mismatched mlflow-tracing), then
# weightgate's own entry point: the warning must already be a JSON line.
WARN_ON_MLFLOW_IMPORT = """
import sys, warnings
class WarnOnMlflow:
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow":
            sys.meta_path.remove(self)
            warnings.warn("mlflow warns while it is imported", UserWarning)
        return None
sys.meta_path.insert(0, WarnOnMlflow())
from gate.cli.app import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", ["worker", "backfill"])
def test_a_warning_raised_while_mlflow_is_imported_is_a_json_line(command):
    args = [command, "--tracking-uri", f"http://127.0.0.1:{free_port()}", "--device", "cpu", "--log-format", "json"]
    proc = subprocess.run([sys.executable, "-c", WARN_ON_MLFLOW_IMPORT, *args, *(["--once"] * (command == "worker"))],
                          capture_output=True, text=True, timeout=900,
                          env=_clean_env(WEIGHTGATE_WORKER_TOKEN="any", PYTHONWARNINGS="always"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    entries = [json.loads(line) for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    warned = [e for e in entries if e["logger"] == "py.warnings"]
    assert any("mlflow warns while it is imported" in e["message"] for e in warned), entries
    assert any("cannot reach the MLflow" in e["message"] for e in entries), entries
