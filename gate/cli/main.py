"""The ``weightgate`` command line: a thin layer over :mod:`gate`'s Python API.

Exit codes: 0 success, 2 bad input (missing/corrupt/unknown file, bad option), with the message
on stderr and nothing on stdout.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from gate.errors import GateInputError
from gate.rank import RANK_METRICS
from gate.report.html import ESD_CAP

EXIT_BLOCKED = 1
EXIT_INPUT_ERROR = 2


class DeviceType(click.ParamType):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked when the command line is parsed (exit 2)."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
            return text
        self.fail(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N", param, ctx)


DEVICE = DeviceType()


def _input_errors_exit_2(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`GateInputError` into a one-line message and exit status 2."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except GateInputError as err:
            click.echo(f"weightgate: error: {err}", err=True)
            sys.exit(EXIT_INPUT_ERROR)

    return wrapper


def _source_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that reads models shares."""
    command = click.option("--tracking-uri", default=None,
                           help="MLflow tracking URI for models:/ and runs:/ sources")(command)
    return click.option("--allow-pickle", is_flag=True,
                        help="load whole pickled models (can run code from the file: only for trusted authors)")(command)


def _ray_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--ray [ADDRESS]``: run the scans as tasks on a Ray cluster (gate.distributed)."""
    return click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
                        help="scan as tasks on the Ray cluster at ADDRESS (alone: RAY_ADDRESS or the cluster "
                             "started on this machine); SOURCE must be a path every node sees or an MLflow URI; "
                             "needs pip install 'weightgate[ray]'")(command)


@click.group()
@click.version_option(package_name="weightgate")
def main() -> None:
    """Judge models by their weights alone: spectra, norms, ranks and more, with no data."""


@main.command()
@click.argument("source")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="table for people, json/csv for machines")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--precision", type=click.Choice(["auto", "float64", "float32"]), default="auto", show_default=True,
              help="eigensolver precision; auto: float32 for float16/bfloat16 weights unless the fitted tail "
                   "needs float64, float64 otherwise (float32 loses small eigenvalues)")
@click.option("--mp-fit", is_flag=True, help="also fit the Marchenko-Pastur bulk (num_spikes, mp_softrank, sigma_mp)")
@click.option("--randomize", is_flag=True, help="also compare with the ESD of shuffled weights (correlation traps)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the --randomize shuffle")
@click.option("--benford/--no-benford", default=True, show_default=True,
              help="first-digit counts and MLH per layer and for the model")
@click.option("--fingerprint/--no-fingerprint", default=True, show_default=True,
              help="the weights' sha256 (weights_sha256), what decisions are recorded against; "
                   "--no-fingerprint saves hashing every byte when none is recorded")
@click.option("--min-evals", type=click.IntRange(min=1), default=8, show_default=True,
              help="skip layers with fewer eigenvalues (M*rf)")
@click.option("--max-evals", type=click.IntRange(min=1), default=None, help="skip layers with more eigenvalues")
@click.option("--conv2d-method", type=click.Choice(["pooled", "per_slice"]), default="pooled", show_default=True,
              help="pool the kh*kw kernel slices into one ESD, or one row per slice")
@_source_options
@click.option("--train-accuracy", type=click.FloatRange(0, 1), default=None,
              help="training accuracy (fraction) of the model: adds the EIC criteria to the summary")
@click.option("--tail-estimators", is_flag=True,
              help="also alpha_hill (Hill, xmin at the median) and alpha_farms (FARMS): optional metrics")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--base", default=None, help="SOURCE is a LoRA adapter: analyse the base model BASE with it merged (W + dW)")
@_ray_option
@_input_errors_exit_2
def scan(source: str, output_format: str, device: str, precision: str, mp_fit: bool, randomize: bool, seed: int,
         benford: bool, fingerprint: bool, min_evals: int, max_evals: int | None, conv2d_method: str, allow_pickle: bool, tracking_uri: str | None,
         train_accuracy: float | None, tail_estimators: bool, quiet: bool, base: str | None,
         ray_address: str | None) -> None:
    """Compute weight-only quality metrics of every layer of SOURCE.

    SOURCE: a .safetensors/.pt/.pth/.bin/.pt2/.onnx file, a sharded index, a model directory, or
    an MLflow URI (models:/name/1, models:/name@alias, models:/m-<id>, runs:/<id>/path).
    """
    options = dict(device=device, precision=precision, mp_fit=mp_fit, randomize=randomize, seed=seed, benford=benford,
                   fingerprint=fingerprint, min_evals=min_evals, max_evals=max_evals, conv2d_method=conv2d_method, allow_pickle=allow_pickle,
                   tracking_uri=tracking_uri, train_accuracy=train_accuracy, tail_estimators=tail_estimators)
    if ray_address is not None:
        from gate.distributed.executor import scan_on_ray

        if base is not None:
            raise GateInputError("--base and --ray cannot be combined: merge the adapter into the base model first, "
                                 "or scan without --ray")
        result = scan_on_ray(source, address=ray_address, **options)
    else:
        from gate.scanning.pipeline import scan as run_scan

        if base is not None:
            from gate.sources import open_merged

            source = open_merged(source, base, allow_pickle, tracking_uri)
        result = run_scan(source, progress=not quiet, **options)
        if base is not None:
            source.close()
    from gate.cli.table import SCAN_COLUMNS, render_table

    _emit(result, output_format, lambda: render_table([f"source: {result.source}"], result.layers, SCAN_COLUMNS,
                                                      result.summary))


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--init", "init", default=None, help="initialisation checkpoint of A: adds each layer's distance from it")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="list layers whose relative distance ||A-B||/||B|| exceeds this as changed")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@_source_options
@_input_errors_exit_2
def compare(a: str, b: str, init: str | None, threshold: float, output_format: str, device: str, allow_pickle: bool,
            tracking_uri: str | None) -> None:
    """Distance between the weights of model A and reference B, layer by layer.

    Layers are matched by name and shape; deltas (alpha, log spectral norm, stable rank, MLH) are
    A - B. The summary flags identical weights (no training happened), changed and re-initialised
    layers, and layers present on one side only.
    """
    from gate.cli.table import COMPARE_COLUMNS, render_table
    from gate.compare import compare as run_compare

    result = run_compare(a, b, init=init, changed_threshold=threshold, device=device, allow_pickle=allow_pickle,
                         tracking_uri=tracking_uri)
    heading = [f"A: {result.a}", f"B: {result.b}"] + ([f"init: {result.init}"] if result.init else [])
    _emit(result, output_format, lambda: render_table(heading, result.layers, COMPARE_COLUMNS, result.summary))


@main.command()
@click.argument("source")
@click.option("--policy", "policy_file", default=None, help="policy YAML (default: the shipped policy)")
@click.option("--baseline", default=None, help="the version to compare against (any source, e.g. models:/name@champion)")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "junit"]), default="table",
              show_default=True, help="junit: one test case per rule, for CI servers' test reports")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="write decision.json and the layer table(s) as CSV into this folder")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--train-accuracy", type=click.FloatRange(0, 1), default=None,
              help="training accuracy (fraction), for policies with EIC rules")
@click.option("--base", default=None, help="SOURCE is a LoRA adapter: check the base model BASE with it merged (W + dW)")
@_source_options
@_ray_option
@_input_errors_exit_2
def check(source: str, policy_file: str | None, baseline: str | None, output_format: str, out_dir: str | None,
          device: str, train_accuracy: float | None, allow_pickle: bool, tracking_uri: str | None,
          base: str | None, ray_address: str | None) -> None:
    """Check SOURCE against a policy before deployment.

    Exit status: 0 approve or warn (warnings printed), 1 block, 2 error (bad input or policy).
    """
    from gate.check import check as run_check
    from gate.policy.report import render_decision, write_outputs
    from gate.vocabulary import Verdict

    if base is not None:
        if ray_address is not None:
            raise GateInputError("--base and --ray cannot be combined: merge the adapter into the base model first, "
                                 "or check without --ray")
        from gate.sources import open_merged

        source = open_merged(source, base, allow_pickle, tracking_uri)  # check() closes it
    started = time.perf_counter()
    result = run_check(source, policy=policy_file, baseline=baseline, device=device, train_accuracy=train_accuracy,
                       allow_pickle=allow_pickle, tracking_uri=tracking_uri, ray_address=ray_address)
    if out_dir is not None:
        write_outputs(result, out_dir)
    if output_format == "junit":
        from gate.report.junit import to_junit

        click.echo(to_junit(result.decision, time.perf_counter() - started), nl=False)
    else:
        click.echo(result.decision.to_json() if output_format == "json" else render_decision(result.decision))
    sys.exit(EXIT_BLOCKED if result.decision.decision == Verdict.BLOCK else 0)


@main.command()
@click.argument("source")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="folder for report.html and charts")
@click.option("--baseline", default=None, help="the version to compare against")
@click.option("--policy", "policy_file", default=None, help="policy YAML (default: the shipped policy)")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--esd-charts", type=click.IntRange(min=0), default=ESD_CAP, show_default=True,
              help="ESD charts to draw: offending layers first, then the lowest and highest alpha")
@_source_options
@_input_errors_exit_2
def report(source: str, out_dir: str, baseline: str | None, policy_file: str | None, device: str, esd_charts: int,
           allow_pickle: bool, tracking_uri: str | None) -> None:
    """Write a self-contained HTML report with ESD plots, alpha/MLH by depth and Benford digits.

    Also writes decision.json and the layer table(s); exit status as for `check`.
    """
    from gate.check import check as run_check
    from gate.policy.report import write_outputs
    from gate.report.html import write_report
    from gate.vocabulary import Verdict

    result = run_check(source, policy=policy_file, baseline=baseline, device=device, allow_pickle=allow_pickle,
                       tracking_uri=tracking_uri, keep_spectra=True)
    write_outputs(result, out_dir)
    files = write_report(out_dir, result.scan, result.decision, result.baseline_scan, esd_charts=esd_charts)
    click.echo(f"decision {result.decision.decision}; wrote {len(files) + 2} files, open {out_dir}/report.html")
    sys.exit(EXIT_BLOCKED if result.decision.decision == Verdict.BLOCK else 0)


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--by", type=click.Choice(list(RANK_METRICS)),
              default="alpha_weighted", show_default=True,
              help="order by this metric: alpha_weighted (alpha-hat), alpha, log_alpha_norm lower is better; "
                   "mlh higher is better")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="table for people, json/csv for machines")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@_source_options
@_input_errors_exit_2
def rank(sources: tuple[str, ...], by: str, output_format: str, device: str, allow_pickle: bool,
         tracking_uri: str | None) -> None:
    """Order models of one architecture by the quality their weights predict, best first.

    SOURCES: any sources `scan` reads; models:/NAME (no version) means every version of NAME.
    Each row also gives the source's place under every metric (rank_<metric>).
    """
    from gate.cli.table import render_table
    from gate.rank import COLUMNS
    from gate.rank import rank as run_rank

    result = run_rank(list(sources), by, device=device, allow_pickle=allow_pickle, tracking_uri=tracking_uri)
    heading = [f"ranked by {by} ({RANK_METRICS[by]} is better), best first"]
    _emit(result, output_format, lambda: render_table(heading, result.table, COLUMNS, {}).rstrip("\n"))


@main.group()
def policy() -> None:
    """Read, check and print policy files."""


@policy.command("validate")
@click.argument("policy_file", type=click.Path(dir_okay=False))
@_input_errors_exit_2
def policy_validate(policy_file: str) -> None:
    """Check a policy file; errors name the line and field."""
    from gate.policy.schema import load_policy

    loaded = load_policy(policy_file)
    click.echo(f"{policy_file}: valid policy {loaded.name!r}, {len(loaded.rules)} rules, sha256 {loaded.sha256}")


@policy.command("show")
@click.argument("policy_file", type=click.Path(dir_okay=False), required=False)
@_input_errors_exit_2
def policy_show(policy_file: str | None) -> None:
    """Print a policy (default: the shipped one) with each rule explained."""
    from gate.policy.report import render_policy
    from gate.policy.schema import load_policy

    click.echo(render_policy(load_policy(policy_file)))


def _service_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the long-running processes (worker, webhook receiver): logging and retries."""
    command = click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                           envvar="WEIGHTGATE_LOG_FORMAT",
                           help="json: one object per line with event, model, version, outcome, duration_s")(command)
    command = click.option("--retries", type=click.IntRange(min=1), default=5, show_default=True,
                           help="attempts per step when the network, artifact store or database fails "
                                "transiently")(command)
    return click.option("--retry-delay", type=click.FloatRange(min=0), default=2.0, show_default=True,
                        help="seconds before the first retry; doubled each time (capped at 60)")(command)


@main.command()
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI",
              help="the MLflow server running with --app-name weightgate")
@click.option("--policy", "policy_file", default=None, envvar="WEIGHTGATE_POLICY",
              help="policy YAML; must be the one the server enforces (default: the shipped policy)")
@click.option("--device", type=DEVICE, default="auto", show_default=True, envvar="WEIGHTGATE_DEVICE",
              help="auto, cpu or cuda[:N]")
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
@_service_options
def worker(tracking_uri: str, policy_file: str | None, device: str, once: bool, poll_seconds: float,
           lease_seconds: float, worker_id: str, heartbeat_file: str | None, executor: str, ray_address: str,
           log_format: str, retries: int, retry_delay: float) -> None:
    """Scan newly registered model versions and record the gate's decisions.

    Needs WEIGHTGATE_WORKER_TOKEN, the credential the server accepts for gate.* tags.
    """
    from mlflow_plugin.config import GateConfigError
    from mlflow_plugin.service import logs
    from mlflow_plugin.service.retry import RetryPolicy
    from mlflow_plugin.service.worker import Worker, WorkerSettings

    logs.configure(log_format)
    _check_service_inputs(device, policy_file)
    if executor == "ray":  # fail at start, not on every version, when Ray or the cluster is missing
        from gate.distributed.executor import connect

        try:
            connect(ray_address)
        except GateInputError as err:
            click.echo(f"weightgate: error: {err}", err=True)
            sys.exit(EXIT_INPUT_ERROR)
    settings = WorkerSettings(tracking_uri, policy_file, device, lease_seconds, worker_id,
                              RetryPolicy(retries, retry_delay), heartbeat_file,
                              ray_address=ray_address if executor == "ray" else None)
    try:
        gate_worker = Worker(settings)
    except GateConfigError as err:
        click.echo(f"weightgate: error: {err}", err=True)
        sys.exit(EXIT_INPUT_ERROR)
    count = gate_worker.run(once=once, poll_seconds=poll_seconds)
    click.echo(f"processed {count} model version(s)")


@main.command()
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


@main.command("webhook-receiver")
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI", help="the MLflow server (no plugin needed)")
@click.option("--secret", required=True, envvar="WEIGHTGATE_WEBHOOK_SECRET", help="the webhook's signing secret")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--policy", "policy_file", default=None, envvar="WEIGHTGATE_POLICY")
@click.option("--device", type=DEVICE, default="auto", show_default=True, envvar="WEIGHTGATE_DEVICE")
@_service_options
def webhook_receiver(tracking_uri: str, secret: str, host: str, port: int, policy_file: str | None,
                     device: str, log_format: str, retries: int, retry_delay: float) -> None:
    """Gate an MLflow server that cannot load the plugin, through its webhooks.

    Register a webhook for model_version.created, model_version_alias.created and
    model_version_tag.set pointing here. Enforcement is after the fact: a protected alias on an
    unapproved version is removed again.
    """
    from mlflow_plugin.service import logs
    from mlflow_plugin.service.retry import RetryPolicy
    from mlflow_plugin.service.webhook import WebhookGate, create_receiver, pending_on_start
    from mlflow_plugin.service.worker import WorkerSettings

    logs.configure(log_format)
    _check_service_inputs(device, policy_file)
    gate_receiver = WebhookGate(WorkerSettings(tracking_uri, policy_file, device,
                                               retry=RetryPolicy(retries, retry_delay)))
    click.echo(f"scanned {pending_on_start(gate_receiver)} version(s) registered while the receiver was down")
    click.echo(f"weightgate webhook receiver on http://{host}:{port}")
    from werkzeug.serving import run_simple

    run_simple(host, port, create_receiver(gate_receiver, secret), threaded=True)


@main.command()
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True)
def queue(tracking_uri: str, output_format: str) -> None:
    """Model versions by gate status, and the age of the oldest pending one (for monitoring)."""
    import json
    import time
    from collections import Counter

    from mlflow.tracking import MlflowClient

    from gate.vocabulary import NO_STATUS, STATUS, VersionStatus
    from mlflow_plugin.service.worker import all_model_versions

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    counts: Counter[str] = Counter()
    oldest_pending_ms = None
    for version in all_model_versions(client):
        status = (version.tags or {}).get(STATUS, NO_STATUS)
        counts[status] += 1
        if status in (VersionStatus.PENDING, NO_STATUS):
            created = version.creation_timestamp
            oldest_pending_ms = created if oldest_pending_ms is None else min(oldest_pending_ms, created)
    age = None if oldest_pending_ms is None else round(time.time() - oldest_pending_ms / 1000, 1)
    if output_format == "json":
        click.echo(json.dumps({"by_status": dict(counts), "oldest_pending_age_seconds": age}))
    else:
        for status, count in sorted(counts.items()):
            click.echo(f"{status:12s} {count}")
        click.echo(f"oldest pending: {age if age is not None else '-'} s")


@main.command()
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


@_input_errors_exit_2
def _check_service_inputs(device: str, policy_file: str | None) -> None:
    """A worker or receiver with an unusable device or policy would fail every version: refuse to start."""
    from gate.policy.schema import load_policy
    from gate.options import resolve_device

    resolve_device(device)
    load_policy(policy_file)


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
    if response.status_code != 200:
        click.echo(f"weightgate: error: {refused} ({response.status_code}): {response.text[:500]}", err=True)
        sys.exit(EXIT_INPUT_ERROR)
    return response.json()


def _emit(result: Any, output_format: str, render: Callable[[], str]) -> None:
    if output_format == "json":
        click.echo(result.to_json())
    elif output_format == "csv":
        click.echo(result.to_csv(), nl=False)
    else:
        click.echo(render())


class _AuditGroup(click.Group):
    """``audit NAME`` reads a model's ledger, ``audit verify`` checks the chain: a word that is not a
    subcommand is a model name (a model called "verify" is read with ``audit show verify``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_AuditGroup)
def audit() -> None:
    """The promotion ledger: who set or deleted protected aliases, moved stages, recorded decisions
    and overrides, allowed or refused (``audit NAME``), and its tamper check (``audit verify``).

    --tracking-uri is the MLflow server (its /weightgate/api/ledger routes, with the usual
    MLFLOW_TRACKING_USERNAME/PASSWORD) or the server's database URI (sqlite:///..., postgresql://...)
    read directly.
    """


_LEDGER_COLUMNS = ("id", "at", "user", "version", "action", "target", "outcome", "status", "policy_sha256", "detail")


@audit.command("show")
@click.argument("name")
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@_input_errors_exit_2
def audit_show(name: str, tracking_uri: str, output_format: str) -> None:
    """The ledger rows of model NAME, oldest first."""
    import csv
    import io
    import json

    from mlflow_plugin.service.audit_client import ledger_entries

    entries = ledger_entries(tracking_uri, name)
    if output_format == "json":
        click.echo(json.dumps(entries, indent=2))
    elif output_format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["model", *_LEDGER_COLUMNS, "prev_hash", "hash"],
                                extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(entries)
        click.echo(buffer.getvalue(), nl=False)
    else:
        if not entries:
            click.echo(f"no ledger entries for model {name!r}")
            return
        rows = [[str(e["id"]), e["at"][:19].replace("T", " "), e["user"], f"v{e['version']}", e["action"], e["target"],
                 e["outcome"], e["status"], e["policy_sha256"][:12], e["detail"][:80]] for e in entries]
        header = ["#", "time (UTC)", "user", "version", "action", "target", "outcome", "status", "policy", "detail"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@audit.command("verify")
@click.option("--tracking-uri", required=True, envvar="MLFLOW_TRACKING_URI")
@_input_errors_exit_2
def audit_verify(tracking_uri: str) -> None:
    """Recompute the ledger's hash chain; exit 1 naming each edited or deleted row."""
    from mlflow_plugin.service.audit_client import verify_ledger

    result = verify_ledger(tracking_uri)
    if result["ok"]:
        click.echo(f"ledger ok: {result['rows']} rows, head {result['head']}")
        return
    click.echo(f"ledger TAMPERED ({result['rows']} rows, head {result['head']}):")
    for problem in result["problems"]:
        click.echo(f"  {problem}")
    sys.exit(EXIT_BLOCKED)
