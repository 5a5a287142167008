"""``weightgate audit``: read a model's promotion ledger, and check the ledger's hash chain."""

from __future__ import annotations

import sys

import click

from gate.cli.app import EXIT_BLOCKED


class _AuditGroup(click.Group):
    """``audit NAME`` reads a model's ledger, ``audit verify`` checks the chain: a word that is not a
    subcommand is a model name (a model called "verify" is read with ``audit show verify``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_AuditGroup)
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
