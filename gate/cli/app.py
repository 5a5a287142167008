"""The ``weightgate`` command group: exit codes, the one path to exit status 2, shared options.

Exit codes: 0 success, 1 blocked (check, report) or a tampered ledger (audit verify), 2 bad input
(missing/corrupt/unknown file, bad option, refused request) with ``weightgate: error: <message>``
on stderr and nothing on stdout. Every :class:`gate.errors.GateInputError` a command raises becomes
an :class:`InputError` in :meth:`WeightgateGroup.invoke`, a click exception that carries exit
status 2; click's own usage errors (an option's value refused while the command line is parsed)
exit 2 as well.

Commands live in modules by group (model_commands, policy_commands, service_commands,
audit_commands) and are imported when first used, after click's lazy-loading pattern: a scan
loads no server code, and ``weightgate --help`` no engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

from gate.errors import GateInputError
from gate.options import SCAN_OPTIONS, Boolean, Choices, Constraint, Interval, OrNone

EXIT_BLOCKED = 1
EXIT_INPUT_ERROR = 2

Command = TypeVar("Command", bound=Callable[..., Any])


class InputError(click.ClickException):
    """Input weightgate cannot use: exit status 2, the message alone on stderr."""

    exit_code = EXIT_INPUT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"weightgate: error: {self.format_message()}", file=file, err=file is None)


class WeightgateGroup(click.Group):
    """The top-level group: subcommands named in ``lazy_subcommands`` (name -> "module.attribute")
    are imported on first use, and a :class:`GateInputError` from any command, nested groups'
    included, becomes an :class:`InputError` here and nowhere else."""

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_subcommands:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = self.lazy_subcommands[cmd_name].rsplit(".", 1)
        return getattr(importlib.import_module(module_name), attribute)

    def invoke(self, ctx: click.Context) -> Any:
        from gate.mlflow_connection import apply_http_defaults

        apply_http_defaults()  # MLflow's client fails fast, naming the server, unless the user said otherwise
        try:
            return super().invoke(ctx)
        except GateInputError as err:
            raise InputError(str(err)) from err


@click.group(cls=WeightgateGroup, lazy_subcommands={
    **{name: f"gate.cli.model_commands.{name}" for name in ("scan", "compare", "check", "report", "rank")},
    "policy": "gate.cli.policy_commands.policy",
    **{name: f"gate.cli.service_commands.{name.replace('-', '_')}"
       for name in ("worker", "webhook-receiver", "rescan", "queue", "override")},
    "audit": "gate.cli.audit_commands.audit",
    "backfill": "gate.cli.backfill_command.backfill",
})
@click.version_option(package_name="weightgate")
def main() -> None:
    """Judge models by their weights alone: spectra, norms, ranks and more, with no data."""


class ConstraintType(click.ParamType):
    """A click type that asks a :mod:`gate.options` constraint (for those click has no type of its own)."""

    def __init__(self, constraint: Constraint) -> None:
        self.constraint = constraint
        self.name = type(constraint).__name__.lower()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if self.constraint.is_satisfied_by(value):
            return value
        self.fail(f"must be {self.constraint}; got {value!r}", param, ctx)


def click_type(constraint: Constraint) -> click.ParamType:
    """The click type that allows what ``constraint`` allows."""
    if isinstance(constraint, OrNone):  # None is the default: nothing given
        return click_type(constraint.constraint)
    if isinstance(constraint, Choices):
        return click.Choice(constraint.values)
    if isinstance(constraint, Interval):
        bounds = {"min": constraint.low, "max": constraint.high, "min_open": constraint.low_open}
        return click.IntRange(**bounds) if constraint.kind is int else click.FloatRange(**bounds)
    return ConstraintType(constraint)


def scan_option(name: str, **settings: Any) -> Callable[[Command], Command]:
    """The click option of scan option ``name``, derived from its row in gate.options' table: flag
    from the name, type from the constraint, default and help text; ``settings`` add e.g. envvar."""
    spec = SCAN_OPTIONS[name]
    flag = "--" + name.replace("_", "-")
    if isinstance(spec.allowed, Boolean):  # on by default: --NAME/--no-NAME; off: a plain flag
        declaration = f"{flag}/--no-{flag[2:]}" if spec.default else flag
        return click.option(declaration, is_flag=True, default=spec.default, show_default=spec.default,
                            help=spec.help, **settings)
    return click.option(flag, type=click_type(spec.allowed), default=spec.default,
                        show_default=spec.default is not None, help=spec.help, **settings)


def scan_options(*names: str) -> Callable[[Command], Command]:
    """:func:`scan_option` for each name, in this order in ``--help``."""

    def decorate(command: Command) -> Command:
        for name in reversed(names):
            command = scan_option(name)(command)
        return command

    return decorate


def source_options(command: Command) -> Command:
    """Options every command that reads models shares."""
    command = click.option("--tracking-uri", default=None,
                           help="MLflow tracking URI for models:/ and runs:/ sources (default: MLFLOW_TRACKING_URI; "
                                "without either such a source is refused)")(command)
    return click.option("--allow-pickle", is_flag=True,
                        help="fully load a pickle in which the safe reader finds no weights (runs code from the "
                             "file: only for trusted authors)")(command)


def ray_option(command: Command) -> Command:
    """``--ray [ADDRESS]``: run the scans as tasks on a Ray cluster (gate.distributed)."""
    return click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
                        help="scan as tasks on the Ray cluster at ADDRESS (alone: RAY_ADDRESS or the cluster "
                             "started on this machine); SOURCE must be a path every node sees or an MLflow URI; "
                             "needs pip install 'weightgate[ray]'")(command)
