"""``weightgate policy``: read, check and print policy files."""

from __future__ import annotations

import click


@click.group()
def policy() -> None:
    """Read, check and print policy files."""


@policy.command("validate")
@click.argument("policy_file", type=click.Path(dir_okay=False))
def policy_validate(policy_file: str) -> None:
    """Check a policy file; every problem is listed with its line and field."""
    from gate.policy.schema import load_policy

    loaded = load_policy(policy_file)
    click.echo(f"{policy_file}: valid policy {loaded.name!r}, {len(loaded.rules)} rules, sha256 {loaded.sha256}")


@policy.command("show")
@click.argument("policy_file", type=click.Path(dir_okay=False), required=False)
def policy_show(policy_file: str | None) -> None:
    """Print a policy (default: the shipped one) with each rule explained."""
    from gate.policy.report import render_policy
    from gate.policy.schema import load_policy

    click.echo(render_policy(load_policy(policy_file)))
