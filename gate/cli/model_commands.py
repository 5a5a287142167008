"""Commands that read models: ``scan``, ``compare``, ``check``, ``report``, ``rank``.

A thin layer over gate's Python API: the scan options arrive checked by their click types (derived
from gate.options) and travel on as one :class:`gate.options.ScanOptions`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import click

from gate.cli.app import EXIT_BLOCKED, click_type, ray_option, scan_option, scan_options, source_options
from gate.errors import GateInputError
from gate.rank import RANK_BY, RANK_METRICS
from gate.report.html import ESD_CAP

OUTPUT_FORMATS = ("table", "json", "csv")
# Progress bars (tensors read, layers solved, MLflow's downloads) go to stderr when it is a terminal;
# --quiet and machine formats turn them off, MLflow's included (gate.progress).
quiet_option = click.option("--quiet", is_flag=True, help="no progress bars (machine formats never show them)")


@click.command()
@click.argument("source")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default="table",
              show_default=True, help="table for people, json/csv for machines")
@scan_options("device", "precision", "mp_fit", "randomize", "seed", "benford", "fingerprint", "min_evals",
              "max_evals", "conv2d_method")
@source_options
@scan_options("train_accuracy", "tail_estimators")
@quiet_option
@click.option("--base", default=None, help="SOURCE is a LoRA adapter: analyse the base model BASE with it merged (W + dW)")
@ray_option
def scan(source: str, output_format: str, allow_pickle: bool, tracking_uri: str | None, quiet: bool,
         base: str | None, ray_address: str | None, **changes: Any) -> None:
    """Compute weight-only quality metrics of every layer of SOURCE.

    SOURCE: a .safetensors/.pt/.pth/.bin/.pt2/.onnx file, a sharded index, a model directory, or
    an MLflow URI (models:/name/1, models:/name@alias, models:/m-<id>, runs:/<id>/path).
    """
    from gate.options import ScanOptions
    from gate.progress import shown

    options = ScanOptions.of(**changes)
    opened = {"allow_pickle": allow_pickle, "tracking_uri": tracking_uri}
    if ray_address is not None:
        from gate.distributed.executor import scan_on_ray

        if base is not None:
            raise GateInputError("--base and --ray cannot be combined: merge the adapter into the base model first, "
                                 "or scan without --ray")
        result = scan_on_ray(source, options, address=ray_address, **opened)
    elif base is not None:
        from gate.options import resolve_device
        from gate.scanning.pipeline import scan as run_scan
        from gate.sources import open_merged

        resolve_device(options.device)  # before either model is opened
        with shown(not quiet and output_format == "table"), open_merged(source, base, allow_pickle,
                                                                        tracking_uri) as merged:
            result = run_scan(merged, options)
    else:
        from gate.scanning.pipeline import scan as run_scan

        with shown(not quiet and output_format == "table"):
            result = run_scan(source, options, **opened)
    from gate.cli.table import SCAN_COLUMNS, render_table

    _emit(result, output_format, lambda: render_table([f"source: {result.source}"], result.layers, SCAN_COLUMNS,
                                                      result.summary))


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--init", "init", default=None, help="initialisation checkpoint of A: adds each layer's distance from it")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="list layers whose relative distance ||A-B||/||B|| exceeds this as changed")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default="table", show_default=True)
@scan_option("device")
@source_options
@quiet_option
def compare(a: str, b: str, init: str | None, threshold: float, output_format: str, device: str, allow_pickle: bool,
            tracking_uri: str | None, quiet: bool) -> None:
    """Distance between the weights of model A and reference B, layer by layer.

    Layers are matched by name and shape; deltas (alpha, log spectral norm, stable rank, MLH) are
    A - B. The summary flags identical weights (no training happened), changed and re-initialised
    layers, and layers present on one side only.
    """
    from gate.cli.table import COMPARE_COLUMNS, render_table
    from gate.compare import compare as run_compare
    from gate.progress import shown

    with shown(not quiet and output_format == "table"):
        result = run_compare(a, b, init=init, changed_threshold=threshold, device=device, allow_pickle=allow_pickle,
                             tracking_uri=tracking_uri)
    heading = [f"A: {result.a}", f"B: {result.b}"] + ([f"init: {result.init}"] if result.init else [])
    _emit(result, output_format, lambda: render_table(heading, result.layers, COMPARE_COLUMNS, result.summary))


@click.command()
@click.argument("source")
@click.option("--policy", "policy_file", default=None, help="policy YAML (default: the shipped policy)")
@click.option("--baseline", default=None, help="the version to compare against (any source, e.g. models:/name@champion)")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "junit"]), default="table",
              show_default=True, help="junit: one test case per rule, for CI servers' test reports")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="write decision.json and the layer table(s) as CSV into this folder")
@scan_options("device", "train_accuracy")
@click.option("--base", default=None, help="SOURCE is a LoRA adapter: check the base model BASE with it merged (W + dW)")
@source_options
@ray_option
@quiet_option
def check(source: str, policy_file: str | None, baseline: str | None, output_format: str, out_dir: str | None,
          device: str, train_accuracy: float | None, allow_pickle: bool, tracking_uri: str | None,
          base: str | None, ray_address: str | None, quiet: bool) -> None:
    """Check SOURCE against a policy before deployment.

    Exit status: 0 approve or warn (warnings printed), 1 block, 2 error (bad input or policy).
    """
    from gate.check import check as run_check
    from gate.policy.report import write_outputs
    from gate.progress import shown
    from gate.report.text import render_decision
    from gate.vocabulary import Verdict

    if base is not None:
        if ray_address is not None:
            raise GateInputError("--base and --ray cannot be combined: merge the adapter into the base model first, "
                                 "or check without --ray")
        from gate.options import resolve_device
        from gate.sources import open_merged

        resolve_device(device)  # before either model is opened
        source = open_merged(source, base, allow_pickle, tracking_uri)  # this command owns it: closed below
    started = time.perf_counter()
    with source if base is not None else nullcontext(), shown(not quiet and output_format == "table"):
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


@click.command()
@click.argument("source")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="folder for report.html and charts")
@click.option("--baseline", default=None, help="the version to compare against")
@click.option("--policy", "policy_file", default=None, help="policy YAML (default: the shipped policy)")
@scan_option("device")
@click.option("--esd-charts", type=click.IntRange(min=0), default=ESD_CAP, show_default=True,
              help="ESD charts to draw: offending layers first, then the lowest and highest alpha")
@source_options
@quiet_option
def report(source: str, out_dir: str, baseline: str | None, policy_file: str | None, device: str, esd_charts: int,
           allow_pickle: bool, tracking_uri: str | None, quiet: bool) -> None:
    """Write a self-contained HTML report with ESD plots, alpha/MLH by depth and Benford digits.

    Also writes decision.json and the layer table(s); exit status as for `check`.
    """
    from gate.check import check as run_check
    from gate.policy.report import write_outputs
    from gate.progress import shown
    from gate.report.html import write_report
    from gate.vocabulary import Verdict

    with shown(not quiet):
        result = run_check(source, policy=policy_file, baseline=baseline, device=device, allow_pickle=allow_pickle,
                           tracking_uri=tracking_uri, keep_spectra=True)
    files = write_outputs(result, out_dir)
    files += write_report(out_dir, result.scan, result.decision, result.baseline_scan, esd_charts=esd_charts,
                          pairs=result.pairs)
    click.echo(f"decision {result.decision.decision}; wrote {len(files)} files, open {out_dir}/report.html")
    sys.exit(EXIT_BLOCKED if result.decision.decision == Verdict.BLOCK else 0)


@click.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--by", type=click_type(RANK_BY), default="alpha_weighted", show_default=True,
              help="order by this metric: alpha_weighted (alpha-hat), alpha, log_alpha_norm lower is better; "
                   "mlh higher is better")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default="table",
              show_default=True, help="table for people, json/csv for machines")
@scan_option("device")
@source_options
@quiet_option
def rank(sources: tuple[str, ...], by: str, output_format: str, device: str, allow_pickle: bool,
         tracking_uri: str | None, quiet: bool) -> None:
    """Order models of one architecture by the quality their weights predict, best first.

    SOURCES: any sources `scan` reads; models:/NAME (no version) means every version of NAME.
    Each row also gives the source's place under every metric (rank_<metric>).
    """
    from gate.cli.table import render_table
    from gate.progress import shown
    from gate.rank import COLUMNS
    from gate.rank import rank as run_rank

    with shown(not quiet and output_format == "table"):
        result = run_rank(list(sources), by, device=device, allow_pickle=allow_pickle, tracking_uri=tracking_uri)
    heading = [f"ranked by {by} ({RANK_METRICS[by]} is better), best first"]
    _emit(result, output_format, lambda: render_table(heading, result.table, COLUMNS, {}).rstrip("\n"))


def _emit(result: Any, output_format: str, render: Callable[[], str]) -> None:
    """``result`` as JSON, CSV, or the terminal table ``render`` draws."""
    if output_format == "json":
        click.echo(result.to_json())
    elif output_format == "csv":
        click.echo(result.to_csv(), nl=False)
    else:
        click.echo(render())
