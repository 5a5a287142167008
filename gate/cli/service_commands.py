"""Commands of the gate's services: ``worker``, ``webhook-receiver``, ``rescan``, ``queue``, ``override``
(``backfill`` is in :mod:`gate.cli.backfill_command`).

The long-running ones refuse to start with a device, policy, configuration or server that would
fail every version (WorkerSettings checks the device against gate.options' declaration; the worker
checks in with the server, :func:`mlflow_plugin.service.worker.check_in`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from gate.cli.app import scan_option
from gate.errors import GateInputError


def service_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the long-running processes (worker, webhook receiver): logging and retries."""
    command = click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                           envvar="WEIGHTGATE_LOG_FORMAT",
                           help="json: one object per line with event, model, version, outcome, duration_s")(command)
    command = click.option("--retries", type=click.IntRange(min=1), default=5, show_default=True,
                           help="attempts per step when the network, artifact store or database fails "
                                "transiently")(command)
    return click.option("--retry-delay", type=click.FloatRange(min=0), default=2.0, show_default=True,
                        help="seconds before the first retry; doubled each time (capped at 60)")(command)


def judging_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the processes that decide versions (worker, backfill): the gated server, the
    policy it enforces and the device."""
    command = scan_option("device", envvar="WEIGHTGATE_DEVICE")(command)
    command = click.option("--policy", "policy_file", default=None, envvar="WEIGHTGATE_POLICY",
                           help="policy YAML; must be the one the server enforces (default: the shipped "
                                "policy)")(command)
    return click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI",
                        help="the MLflow server running with --app-name weightgate")(command)


@click.command()
@judging_options
@click.option("--once", is_flag=True, help="process what is pending, then exit")
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option("--lease-seconds", type=click.FloatRange(min=1), default=900.0, show_default=True,
              help="after this long a claimed but unfinished scan may be taken over by another worker")
@click.option("--worker-id", default="", help="this worker's name in claims and logs (default: host:pid:random)")
@click.option("--heartbeat-file", type=click.Path(dir_okay=False), default=None, envvar="WEIGHTGATE_HEARTBEAT_FILE",
              help="rewritten while the worker is healthy (every poll, and every 15 s during a scan): "
                   "a liveness probe checks its age")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              envvar="WEIGHTGATE_EXECUTOR", help="scan in this process, or as tasks on a Ray cluster (weightgate[ray])")
@click.option("--ray-address", default="auto", show_default=True, envvar="RAY_ADDRESS",
              help="the Ray cluster for --executor ray (auto: the cluster started on this machine)")
@service_options
def worker(tracking_uri: str, policy_file: str | None, device: str, once: bool, poll_seconds: float,
           lease_seconds: float, worker_id: str, heartbeat_file: str | None, executor: str, ray_address: str,
           log_format: str, retries: int, retry_delay: float) -> None:
    """Scan newly registered model versions and record the gate's decisions.

    Needs WEIGHTGATE_WORKER_TOKEN, the credential the server accepts for gate.* tags.
    """
    from mlflow_plugin.service import logs

    logs.configure(log_format)  # before MLflow is imported: a warning it raises on import is a log line too
    from gate.policy.schema import load_policy
    from mlflow_plugin.service.retry import RetryPolicy
    from mlflow_plugin.service.worker import Worker, WorkerSettings

    policy = load_policy(policy_file)  # a policy that does not load would fail every version: refuse to start
    settings = WorkerSettings(tracking_uri, policy_file, device, lease_seconds, worker_id,
                              RetryPolicy(retries, retry_delay), heartbeat_file,
                              ray_address=ray_address if executor == "ray" else None)
    if executor == "ray":  # fail at start, not on every version, when Ray or the cluster is missing
        from gate.distributed.executor import connect

        connect(ray_address)
    gate_worker = Worker(settings, policy.sha256)
    count = gate_worker.run(once=once, poll_seconds=poll_seconds)
    _finished(log_format, f"processed {count} model version(s)", event="worker_done", processed=count)


def _finished(log_format: str, line: str, **fields) -> None:
    """A service's closing line: printed for people, an event in JSON logs."""
    if log_format == "json":
        from mlflow_plugin.service import logs

        logs.event(line, **fields)
    else:
        click.echo(line)


@click.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI")
def rescan(name: str, version: int, tracking_uri: str) -> None:
    """Queue NAME VERSION again: its status becomes pending and a worker scans it afresh.

    For a version that ended in error after the cause was fixed, or after a policy change.
    Authorised by WEIGHTGATE_OVERRIDE_TOKEN or WEIGHTGATE_WORKER_TOKEN, or a basic-auth admin.
    """
    response = _post_gate_endpoint(tracking_uri, "rescan", {"name": name, "version": version})
    if response.status_code == 404 and "weightgate/rescan" in response.text:  # no plugin: webhook mode
        from mlflow.tracking import MlflowClient

        from gate.vocabulary import STATUS, VersionStatus

        MlflowClient(tracking_uri, tracking_uri).set_model_version_tag(name, str(version), STATUS, VersionStatus.PENDING)
        click.echo(f"{name} version {version} set to {VersionStatus.PENDING}; the webhook receiver scans it on the tag event")
        return
    record = _answer(response, "rescan refused")
    click.echo(f"{name} version {version} queued again by {record['by']} at {record['at']}")


@click.command("webhook-receiver")
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI", help="the MLflow server (no plugin needed)")
@click.option("--secret", required=True, envvar="WEIGHTGATE_WEBHOOK_SECRET", help="the webhook's signing secret")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--policy", "policy_file", default=None, envvar="WEIGHTGATE_POLICY")
@scan_option("device", envvar="WEIGHTGATE_DEVICE")
@click.option("--reconcile-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="look this often for versions whose delivery never came (0: never)")
@service_options
def webhook_receiver(tracking_uri: str, secret: str, host: str, port: int, policy_file: str | None,
                     device: str, reconcile_seconds: float, log_format: str, retries: int, retry_delay: float) -> None:
    """Gate an MLflow server that cannot load the plugin, through its webhooks.

    Register a webhook for model_version.created, model_version_alias.created and
    model_version_tag.set pointing here. Enforcement is after the fact: a protected alias on an
    unapproved version is removed again.
    """
    from mlflow_plugin.service import logs

    logs.configure(log_format)  # before MLflow is imported: a warning it raises on import is a log line too
    from gate.policy.schema import load_policy
    from mlflow_plugin.service.retry import RetryPolicy
    from mlflow_plugin.service.webhook import WebhookGate, create_receiver, pending_on_start
    from mlflow_plugin.service.worker import WorkerSettings

    load_policy(policy_file)  # a policy that does not load would fail every version: refuse to start
    gate_receiver = WebhookGate(WorkerSettings(tracking_uri, policy_file, device,
                                               retry=RetryPolicy(retries, retry_delay)))
    scanned = pending_on_start(gate_receiver)
    _finished(log_format, f"scanned {scanned} version(s) registered while the receiver was down",
              event="caught_up", scanned=scanned)
    _finished(log_format, f"weightgate webhook receiver on http://{host}:{port}", event="listening", host=host,
              port=port)
    from werkzeug.serving import run_simple

    run_simple(host, port, create_receiver(gate_receiver, secret, reconcile_seconds=reconcile_seconds or None),
               threaded=True)


@click.command()
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
def queue(tracking_uri: str, output_format: str) -> None:
    """Model versions by gate status, and how long the oldest pending one has waited (for monitoring):
    since its registration, or since a rescan was requested for it."""
    import json
    import time
    from collections import Counter

    from mlflow.tracking import MlflowClient

    from gate.vocabulary import NO_STATUS, STATUS, VersionStatus
    from mlflow_plugin.service.worker import all_model_versions

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    counts: Counter[str] = Counter()
    oldest_pending = None
    for version in all_model_versions(client):
        status = (version.tags or {}).get(STATUS, NO_STATUS)
        counts[status] += 1
        if status in (VersionStatus.PENDING, NO_STATUS):
            waiting_since = _waiting_since(tracking_uri, version)
            oldest_pending = waiting_since if oldest_pending is None else min(oldest_pending, waiting_since)
    age = None if oldest_pending is None else round(time.time() - oldest_pending, 1)
    if output_format == "json":
        click.echo(json.dumps({"by_status": dict(counts), "oldest_pending_age_seconds": age}))
    else:
        for status, count in sorted(counts.items()):
            click.echo(f"{status:12s} {count}")
        click.echo("nothing pending" if age is None else f"oldest pending: waiting {age:g} s")


def _waiting_since(tracking_uri: str, version) -> float:
    """Epoch seconds since a pending version waits: when its decision row became pending
    (registration, a rescan or a backfill), or its registration where the server has no row."""
    from mlflow_plugin.service.audit_client import decision_row

    registered = version.creation_timestamp / 1000
    if not tracking_uri.startswith(("http://", "https://")):
        return registered
    row = decision_row(tracking_uri, version.name, version.version)
    return registered if row is None else max(registered, float(row["updated_at"]))


@click.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--reason", required=True, help="why the gate's decision is overridden (recorded)")
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI")
def override(name: str, version: int, reason: str, tracking_uri: str) -> None:
    """Approve NAME VERSION despite the gate's decision, recording who, when and why.

    Authorised by WEIGHTGATE_OVERRIDE_TOKEN (the server's override credential) or, on a server
    with basic-auth, by an admin's MLFLOW_TRACKING_USERNAME/PASSWORD.
    """
    record = _gate_endpoint(tracking_uri, "override", {"name": name, "version": version, "reason": reason},
                            "override refused")
    click.echo(f"{name} version {version} overridden by {record['by']} at {record['at']}")


def _gate_endpoint(tracking_uri: str, endpoint: str, body: dict, refused: str) -> dict:
    """POST to the server plugin's /api/2.0/weightgate/ENDPOINT; a refusal exits 2 with the answer."""
    return _answer(_post_gate_endpoint(tracking_uri, endpoint, body), refused)


def _post_gate_endpoint(tracking_uri: str, endpoint: str, body: dict):
    """The response of /api/2.0/weightgate/ENDPOINT, sent with the credentials in the environment."""
    import getpass
    import os

    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    from gate.vocabulary import ACTOR_HEADER, OVERRIDE_TOKEN_HEADER

    headers = {ACTOR_HEADER: getpass.getuser()}
    if os.environ.get("WEIGHTGATE_OVERRIDE_TOKEN"):
        headers[OVERRIDE_TOKEN_HEADER] = os.environ["WEIGHTGATE_OVERRIDE_TOKEN"]
    return http_request(get_default_host_creds(tracking_uri), f"/api/2.0/weightgate/{endpoint}", "POST",
                        json=body, extra_headers=headers)


def _answer(response, refused: str) -> dict:
    """The endpoint's JSON answer; a refusal is an input error quoting the server."""
    if response.status_code != 200:
        raise GateInputError(f"{refused} ({response.status_code}): {response.text[:500]}")
    return response.json()
