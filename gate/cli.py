"""The ``weightgate`` command line: a thin layer over :mod:`gate`'s Python API.

Exit codes: 0 success, 2 bad input (missing/corrupt/unknown file, bad option), with the message
on stderr and nothing on stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from gate.errors import GateInputError

EXIT_INPUT_ERROR = 2


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


@click.group()
@click.version_option(package_name="weightgate")
def main() -> None:
    """Judge models by their weights alone: spectra, norms, ranks and more, with no data."""


@main.command()
@click.argument("source")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="table for people, json/csv for machines")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--precision", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="Gram-matrix eigensolver precision (float32 loses small eigenvalues)")
@click.option("--mp-fit", is_flag=True, help="also fit the Marchenko-Pastur bulk (num_spikes, mp_softrank, sigma_mp)")
@click.option("--randomize", is_flag=True, help="also compare with the ESD of shuffled weights (correlation traps)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the --randomize shuffle")
@click.option("--min-evals", type=click.IntRange(min=1), default=8, show_default=True,
              help="skip layers with fewer eigenvalues (M*rf)")
@click.option("--max-evals", type=click.IntRange(min=1), default=None, help="skip layers with more eigenvalues")
@click.option("--conv2d-method", type=click.Choice(["pooled", "per_slice"]), default="pooled", show_default=True,
              help="pool the kh*kw kernel slices into one ESD, or one row per slice")
@click.option("--allow-pickle", is_flag=True,
              help="load whole pickled models (can run code from the file: only for trusted authors)")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI for models:/ and runs:/ sources")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_input_errors_exit_2
def scan(source: str, output_format: str, device: str, precision: str, mp_fit: bool, randomize: bool, seed: int,
         min_evals: int, max_evals: int | None, conv2d_method: str, allow_pickle: bool, tracking_uri: str | None,
         quiet: bool) -> None:
    """Compute weight-only quality metrics of every layer of SOURCE.

    SOURCE: a .safetensors/.pt/.pth/.bin/.pt2/.onnx file, a sharded index, a model directory, or
    an MLflow URI (models:/name/1, models:/name@alias, models:/m-<id>, runs:/<id>/path).
    """
    from gate.scanner import scan as run_scan

    result = run_scan(
        source, device=device, precision=precision, mp_fit=mp_fit, randomize=randomize, seed=seed,
        min_evals=min_evals, max_evals=max_evals, conv2d_method=conv2d_method, allow_pickle=allow_pickle,
        tracking_uri=tracking_uri, progress=not quiet,
    )
    if output_format == "json":
        click.echo(result.to_json())
    elif output_format == "csv":
        click.echo(result.to_csv(), nl=False)
    else:
        from gate.table import render_scan_table

        click.echo(render_scan_table(result))
