"""``weightgate backfill``: queue and decide every version that has no decision, and report the
ones already in Staging/Production or holding a protected alias that the policy would not approve
(:mod:`mlflow_plugin.service.backfill`)."""

from __future__ import annotations

import time

import click

from gate.cli.service_commands import judging_options, service_options


@click.command()
@judging_options
@click.option("--wait-seconds", type=click.FloatRange(min=0), default=900.0, show_default=True,
              help="after this process's own pass, how long to wait for versions other workers hold")
@service_options
def backfill(tracking_uri: str, policy_file: str | None, device: str, wait_seconds: float, log_format: str,
             retries: int, retry_delay: float) -> None:
    """Take a registry in: decide every version without a weightgate decision.

    Stages and aliases are left as they are; the versions that hold Staging/Production or a
    protected alias but would be blocked are printed and logged. Needs WEIGHTGATE_WORKER_TOKEN.
    """
    from mlflow_plugin.service import logs

    logs.configure(log_format)  # before MLflow is imported: a warning it raises on import is a log line too
    from gate.policy.schema import load_policy
    from gate.vocabulary import VersionStatus
    from mlflow_plugin.service.backfill import flag_line, queue_all, report
    from mlflow_plugin.service.retry import RetryPolicy
    from mlflow_plugin.service.worker import Worker, WorkerSettings, check_in

    policy = load_policy(policy_file)
    settings = WorkerSettings(tracking_uri, policy_file, device, retry=RetryPolicy(retries, retry_delay))
    server = check_in(settings, policy.sha256)
    queued = queue_all(tracking_uri)
    click.echo(f"queued {len(queued)} version(s) without a weightgate decision")
    if queued:
        Worker(settings, policy.sha256).run(once=True)
    protected = {alias.lower() for alias in server["protected_aliases"]}
    approving = set(server["approving_statuses"])
    result = report(tracking_uri, queued, protected, approving)
    deadline = time.monotonic() + wait_seconds
    while any(item.status == VersionStatus.PENDING for item in queued) and time.monotonic() < deadline:
        time.sleep(5)  # held by another worker: wait for its record
        result = report(tracking_uri, queued, protected, approving)
    for item in result.flagged:
        click.echo(flag_line(item, item.held(protected)))
    counts = ", ".join(f"{status} {count}" for status, count in sorted(result.counts().items())) or "nothing to do"
    click.echo(f"backfill: {len(queued)} queued ({counts}); {len(result.flagged)} hold Staging/Production or a "
               "protected alias without approval" + (" (listed above)" if result.flagged else ""))
